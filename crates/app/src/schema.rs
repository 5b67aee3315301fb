//! The shop's schema and seed data, as versioned migrations. One list serves MariaDB and the
//! embedded SQLite database: statements are SQL both understand, with the few words they spell
//! differently written as `{placeholders}` that [`Dialect::render`] fills in.

use crate::backend::Dialect;

/// Every migration in version order, each a version and its statements (not yet rendered).
pub fn migrations() -> Vec<(i32, Vec<String>)> {
    let generated = [(3, seed_catalog()), (7, seed_customers())];
    let mut all: Vec<(i32, Vec<String>)> =
        MIGRATIONS.iter().map(|(v, s)| (*v, s.iter().map(|s| s.to_string()).collect())).chain(generated).collect();
    // In version order: the stock of migration 6 is given to the seeded catalog of 3.
    all.sort_by_key(|(version, _)| *version);
    all
}

/// The table that records which versions ran.
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, \
     applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP){table}";

/// Renders every statement of a migration for `dialect`.
pub fn render(dialect: Dialect, statements: &[String]) -> Vec<String> {
    statements.iter().map(|s| dialect.render(s)).collect()
}

/// The deterministic catalog loaded once by migration 3: a thousand products, every name
/// distinct (10 adjectives × 10 materials × 10 items).
pub fn seed_catalog() -> Vec<String> {
    const ADJECTIVES: [&str; 10] =
        ["Classic", "Compact", "Deluxe", "Everyday", "Field", "Heritage", "Modern", "Nordic", "Pocket", "Studio"];
    const MATERIALS: [&str; 10] =
        ["Ceramic", "Copper", "Glass", "Oak", "Steel", "Walnut", "Bamboo", "Enamel", "Stoneware", "Titanium"];
    const ITEMS: [&str; 10] =
        ["Mug", "Kettle", "Grinder", "Dripper", "Scale", "Tamper", "Carafe", "Canister", "Jug", "Tray"];
    let rows: Vec<String> = (0..1000usize)
        .map(|i| {
            let (a, m, it) = (ADJECTIVES[i / 100], MATERIALS[i / 10 % 10], ITEMS[i % 10]);
            let price = 500 + (i * 7919) % 9500;
            format!(
                "('{a} {m} {it}', 'A {} {} for the {} kitchen.', {price})",
                m.to_lowercase(),
                it.to_lowercase(),
                a.to_lowercase()
            )
        })
        .collect();
    rows.chunks(250)
        .map(|chunk| format!("INSERT INTO products (name, description, price_cents) VALUES {}", chunk.join(", ")))
        .collect()
}

/// Seeded customers and their order history (migration 7): 200 accounts (at the reserved
/// `example.invalid`, so no real address collides) that cannot log in
/// (their password hash matches no password), and 1,000 past orders of one to three catalog
/// products each, the same on every run. Past orders do not change today's stock.
pub fn seed_customers() -> Vec<String> {
    const CUSTOMERS: usize = 200;
    const ORDERS: usize = 1000;
    const BATCH: usize = 250;
    let mut statements = vec![format!(
        "{{insert_ignore}} INTO users (email, password_hash) VALUES {}",
        (1..=CUSTOMERS)
            .map(|i| format!("('customer{i:03}@example.invalid', '!seeded: no password')"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    // A small linear congruential generator: the same history on every run.
    let mut state: u64 = 0x5eed;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % n as u64) as usize
    };
    for batch in 0..ORDERS / BATCH {
        let mut orders = Vec::with_capacity(BATCH);
        let mut lines = Vec::new();
        for k in 0..BATCH {
            let n = batch * BATCH + k;
            let customer = next(CUSTOMERS) + 1;
            let placed = seeded_time(1 + n * 300 / ORDERS, next(600));
            orders.push(format!(
                "((SELECT id FROM users WHERE email = 'customer{customer:03}@example.invalid'), 0, '{placed}')"
            ));
            let mut products: Vec<usize> = (0..1 + next(3)).map(|_| 9 + next(1000)).collect();
            products.sort_unstable();
            products.dedup();
            for product in products {
                // Ids 9 to 1008: the seeded catalog, after the 8 starters of migration 2.
                let quantity = 1 + next(3);
                // One multi-row insert takes consecutive ids (InnoDB's autoinc_lock_mode 1,
                // the default; SQLite always): the batch's last id and an offset name each order.
                lines.push(format!(
                    "((SELECT MAX(id) FROM orders) - {}, {product}, {quantity}, \
                     (SELECT price_cents FROM products WHERE id = {product}))",
                    BATCH - 1 - k
                ));
            }
        }
        statements.push(format!("INSERT INTO orders (user_id, total_cents, created_at) VALUES {}", orders.join(", ")));
        statements.push(format!(
            "INSERT INTO order_items (order_id, product_id, quantity, price_cents) VALUES {}",
            lines.join(", ")
        ));
    }
    // Every order placed in the shop has a total; the seeded ones get theirs from their lines.
    statements.push(
        "UPDATE orders SET total_cents = \
         (SELECT SUM(i.quantity * i.price_cents) FROM order_items i WHERE i.order_id = orders.id) \
         WHERE total_cents = 0"
            .into(),
    );
    statements
}

/// `YYYY-MM-DD HH:MM:00`: 09:00 on the `day`th day after 1 January 2026, plus `minutes`.
fn seeded_time(day: usize, minutes: usize) -> String {
    const MONTHS: [usize; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let (mut month, mut left) = (0, day.min(364));
    while left >= MONTHS[month] {
        left -= MONTHS[month];
        month += 1;
    }
    let minutes = 9 * 60 + minutes.min(14 * 60);
    format!("2026-{:02}-{:02} {:02}:{:02}:00", month + 1, left + 1, minutes / 60, minutes % 60)
}

/// Each migration: a version and its statements, applied in order, each version once.
const MIGRATIONS: &[(i32, &[&str])] = &[
    (
        1,
        &["CREATE TABLE IF NOT EXISTS products (
            id {serial},
            name VARCHAR(200) NOT NULL,
            description TEXT NOT NULL,
            price_cents INT NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ){table}"],
    ),
    (
        2,
        &["INSERT INTO products (name, description, price_cents) VALUES
            ('Espresso cup', 'Thick porcelain, 80 ml, keeps the crema warm.', 900),
            ('Pour-over kettle', 'Gooseneck spout for a slow, even pour. 1 litre.', 4500),
            ('Hand grinder', 'Ceramic burrs, 40 clicks from espresso to French press.', 6200),
            ('Coffee beans, Ethiopia', 'Washed Yirgacheffe, light roast, 250 g. Jasmine and lemon.', 1400),
            ('Coffee beans, Brazil', 'Natural process, medium roast, 250 g. Chocolate and nuts.', 1100),
            ('Milk jug', 'Stainless steel, 350 ml, for latte art.', 1800),
            ('Scale', '0.1 g resolution with a timer, for repeatable brews.', 3200),
            ('Paper filters', 'Pack of 100, fits size 02 drippers.', 600)"],
    ),
    (
        4,
        &["CREATE TABLE IF NOT EXISTS heartbeat (
            server VARCHAR(64) NOT NULL PRIMARY KEY,
            ts TIMESTAMP(6) NOT NULL
        ){table}"],
    ),
    (
        5,
        &[
            "CREATE TABLE IF NOT EXISTS users (
            id {serial},
            email VARCHAR(254) NOT NULL UNIQUE,
            password_hash VARCHAR(255) NOT NULL,
            is_admin BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ){table}",
            // The token's SHA-256, never the token itself.
            "CREATE TABLE IF NOT EXISTS sessions (
            token_sha256 CHAR(64) NOT NULL PRIMARY KEY,
            user_id BIGINT NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ){table}",
            "CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id)",
        ],
    ),
    (
        6,
        &[
            "ALTER TABLE products {add_column} stock INT NOT NULL DEFAULT 0",
            // A deterministic stock for the starter and seeded products: 5 to 64 each.
            "UPDATE products SET stock = 5 + (id * 37) % 60",
            "CREATE TABLE IF NOT EXISTS cart_items (
            user_id BIGINT NOT NULL,
            product_id BIGINT NOT NULL,
            quantity INT NOT NULL,
            PRIMARY KEY (user_id, product_id),
            FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
            FOREIGN KEY (product_id) REFERENCES products (id)
        ){table}",
            "CREATE TABLE IF NOT EXISTS orders (
            id {serial},
            user_id BIGINT NOT NULL,
            total_cents BIGINT NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            FOREIGN KEY (user_id) REFERENCES users (id)
        ){table}",
            "CREATE INDEX IF NOT EXISTS orders_user_id ON orders (user_id)",
            "CREATE TABLE IF NOT EXISTS order_items (
            order_id BIGINT NOT NULL,
            product_id BIGINT NOT NULL,
            quantity INT NOT NULL,
            price_cents INT NOT NULL,
            PRIMARY KEY (order_id, product_id),
            FOREIGN KEY (order_id) REFERENCES orders (id),
            FOREIGN KEY (product_id) REFERENCES products (id)
        ){table}",
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeded_history_is_the_same_on_every_run() {
        let (a, b) = (seed_customers(), seed_customers());
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|s| s.starts_with("INSERT INTO orders")).count(), 4, "1,000 orders in 4 inserts");
        assert!(a[0].contains("customer200@example.invalid") && !a[0].contains("customer201"));
    }

    #[test]
    fn seeded_orders_fall_on_real_days_of_2026() {
        assert_eq!(seeded_time(1, 0), "2026-01-02 09:00:00");
        assert_eq!(seeded_time(31, 61), "2026-02-01 10:01:00");
        assert_eq!(seeded_time(300, 599), "2026-10-28 18:59:00");
    }

    #[test]
    fn the_seed_catalog_has_a_thousand_distinct_products() {
        let statements = seed_catalog();
        assert_eq!(statements.len(), 4);
        let rows: usize = statements.iter().map(|s| s.matches("('").count()).sum();
        assert_eq!(rows, 1000);
        assert!(statements[0].contains("('Classic Ceramic Mug', 'A ceramic mug for the classic kitchen.', 500)"));
        assert_eq!(seed_catalog(), statements, "deterministic");
    }

    #[test]
    fn migrations_come_in_version_order_and_leave_no_placeholder_behind() {
        let all = migrations();
        let versions: Vec<i32> = all.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
        for dialect in [Dialect::Mysql, Dialect::Sqlite] {
            for (version, statements) in &all {
                for sql in render(dialect, statements) {
                    assert!(!sql.contains("{serial}") && !sql.contains("{table}"), "{version}: {sql}");
                    assert!(!sql.contains("{insert_ignore}") && !sql.contains("{add_column}"), "{version}: {sql}");
                }
            }
        }
    }
}
