//! Data access: one connection pool per database node, reads from the local node, writes to
//! the one node that is not `read_only`, and read-your-writes through the session's last GTID.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::Row;

use crate::accounts::User;
use crate::config::AppConfig;

/// How long a found writer is trusted before the nodes are asked again.
const WRITER_TTL: Duration = Duration::from_secs(1);
/// How long a query waits for a connection to its node.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the writer search waits for each node's answer.
const WRITER_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a write waits for a connection to the writer before it looks for another writer
/// (a dead writer's pool would otherwise hold it for the pool's whole acquire timeout).
const WRITE_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a write waits for a new writer while the writer changes.
const WRITER_CHANGE_WAIT: Duration = Duration::from_secs(3);
/// How long a read waits for the local replica to apply the session's last write.
const GTID_WAIT_SECONDS: f64 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("database {node} is unavailable: {source}")]
    Unavailable { node: String, source: sqlx::Error },
    #[error("no database node is writable; writes are refused until one is")]
    NoWriter,
    #[error("more than one database node is writable ({0}); writes are refused until one is left")]
    SplitBrain(String),
    #[error("the database is not ready yet (schema missing)")]
    NotReady,
}

pub struct Node {
    pub name: String,
    pub pool: MySqlPool,
}

pub struct Database {
    pub nodes: Vec<Node>,
    local: usize,
    writer: Mutex<Option<(usize, Instant)>>,
    /// How far behind the writer a node may be and still serve reads.
    max_lag: Duration,
    /// Each node's last measured lag (heartbeat age); `None` until measured or when unreachable.
    lags: Mutex<Vec<Option<Duration>>>,
    name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    /// Units left to sell.
    pub stock: i64,
}

impl Product {
    pub fn price(&self) -> String {
        dollars(self.price_cents)
    }
}

/// What a read used, so pages can say where their data came from.
pub struct Read<T> {
    pub value: T,
    pub node: String,
}

impl Database {
    pub fn new(config: &AppConfig) -> Database {
        let db = &config.database;
        let nodes: Vec<Node> = db
            .nodes
            .iter()
            .map(|n| {
                let options = MySqlConnectOptions::new()
                    .host(&n.address.ip().to_string())
                    .port(n.address.port())
                    .username(&db.user)
                    .password(&db.password)
                    .database(&db.name)
                    .ssl_mode(MySqlSslMode::Disabled);
                let pool = MySqlPoolOptions::new()
                    .max_connections(16)
                    .min_connections(0)
                    // Short: a dead node must fail a query fast (and the request with a clear
                    // 503, or the write over to the new primary), not hold it for seconds.
                    .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
                    .idle_timeout(Duration::from_secs(60))
                    .connect_lazy_with(options);
                Node { name: n.name.clone(), pool }
            })
            .collect();
        let count = nodes.len();
        Database {
            nodes,
            local: config.local_index(),
            writer: Mutex::new(None),
            max_lag: Duration::from_millis(config.database.max_lag_ms),
            lags: Mutex::new(vec![None; count]),
            name: config.name.clone(),
        }
    }

    fn unavailable(&self, index: usize, source: sqlx::Error) -> DataError {
        DataError::Unavailable { node: self.nodes[index].name.clone(), source }
    }

    /// The writable node: asks every node for `read_only`, at most once per [`WRITER_TTL`].
    pub async fn writer(&self) -> Result<usize, DataError> {
        if let Some((index, at)) = *self.writer.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < WRITER_TTL {
                return Ok(index);
            }
        }
        // A dead node must not hold the search up (a pool waits for a connection for up to its
        // acquire timeout): each node gets a short while to answer.
        let mut writable = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let ask = sqlx::query_scalar::<_, i64>("SELECT @@global.read_only").fetch_one(&node.pool);
            if let Ok(Ok(0)) = tokio::time::timeout(WRITER_PROBE_TIMEOUT, ask).await {
                writable.push(i);
            }
        }
        let found = match writable.as_slice() {
            [one] => Ok(*one),
            [] => Err(DataError::NoWriter),
            many => Err(DataError::SplitBrain(
                many.iter().map(|i| self.nodes[*i].name.as_str()).collect::<Vec<_>>().join(", "),
            )),
        };
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = found.as_ref().ok().map(|i| (*i, Instant::now()));
        found
    }

    fn forget_writer(&self) {
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Where plain reads go: the local node while its lag is within the bound, else the
    /// replica least behind within it, else the writer (pt-heartbeat's way of measuring lag:
    /// the age of the newest heartbeat row a node has applied).
    fn fresh_node(&self) -> usize {
        let lags = self.lags.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |i: usize| lags.get(i).copied().flatten().is_some_and(|lag| lag <= self.max_lag);
        // Not measured yet (start-up): trust the local node rather than send everyone away.
        if fresh(self.local) || lags.iter().all(Option::is_none) {
            return self.local;
        }
        let best = (0..lags.len()).filter(|&i| fresh(i)).min_by_key(|&i| lags[i]);
        match best {
            Some(i) => i,
            None => self.writer.lock().unwrap_or_else(|p| p.into_inner()).map(|(w, _)| w).unwrap_or(self.local),
        }
    }

    /// Whether the local node answered its last lag check (or none was made yet).
    fn local_answers(&self) -> bool {
        let lags = self.lags.lock().unwrap_or_else(|p| p.into_inner());
        lags.get(self.local).copied().flatten().is_some() || lags.iter().all(Option::is_none)
    }

    /// Every half second: write this server's heartbeat on the writer, and measure each
    /// node's lag as the age of the newest heartbeat it holds.
    pub async fn watch_lag(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Ok(w) = self.writer().await {
                let beat = sqlx::query("REPLACE INTO heartbeat (server, ts) VALUES (?, NOW(6))").bind(&self.name);
                let _ = beat.execute(&self.nodes[w].pool).await;
            }
            let mut measured = Vec::with_capacity(self.nodes.len());
            for node in &self.nodes {
                let age = sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT TIMESTAMPDIFF(MICROSECOND, MAX(ts), NOW(6)) FROM heartbeat",
                )
                .fetch_one(&node.pool);
                // A dead node is unmeasured (None) within a short while, not after the pool's
                // whole acquire timeout.
                measured.push(match tokio::time::timeout(WRITER_PROBE_TIMEOUT, age).await {
                    Ok(Ok(Some(us))) => Some(Duration::from_micros(us.max(0) as u64)),
                    _ => None,
                });
            }
            *self.lags.lock().unwrap_or_else(|p| p.into_inner()) = measured;
        }
    }

    /// The node a read goes to: see [`Self::fresh_node`]; after a write in this session, the
    /// local node once it has applied that write (`after_gtid`), else the writer.
    async fn read_node(&self, after_gtid: Option<&str>) -> usize {
        let Some(gtid) = after_gtid else { return self.fresh_node() };
        match self.writer().await {
            Ok(w) if w == self.local => self.local,
            // The local node did not answer its last lag check: the writer has the session's
            // write for sure, and waiting on a dead node would hold the page up.
            Ok(w) if !self.local_answers() => w,
            Ok(w) => {
                let waited = sqlx::query_scalar::<_, i64>("SELECT MASTER_GTID_WAIT(?, ?)")
                    .bind(gtid)
                    .bind(GTID_WAIT_SECONDS)
                    .fetch_one(&self.nodes[self.local].pool)
                    .await;
                if matches!(waited, Ok(0)) {
                    self.local
                } else {
                    w
                }
            }
            // No writer right now (a failover): the freshest node that answers.
            Err(_) => self.fresh_node(),
        }
    }

    /// One page of the catalog, newest first, optionally only names containing `search`;
    /// with the number of matching products.
    pub async fn catalog(&self, after_gtid: Option<&str>, page: &Page) -> Result<Read<(Vec<Product>, i64)>, DataError> {
        let node = self.read_node(after_gtid).await;
        let pool = &self.nodes[node].pool;
        // Without a search, no LIKE: MariaDB then reads the newest rows backwards by key and
        // counts without testing each name (the home page is the most asked-for page).
        let (rows_sql, count_sql) = match page.search.is_empty() {
            true => (
                "SELECT id, name, description, price_cents, stock FROM products ORDER BY id DESC LIMIT ? OFFSET ?",
                "SELECT COUNT(*) FROM products",
            ),
            false => (
                "SELECT id, name, description, price_cents, stock FROM products WHERE name LIKE ? ESCAPE '!' \
                 ORDER BY id DESC LIMIT ? OFFSET ?",
                "SELECT COUNT(*) FROM products WHERE name LIKE ? ESCAPE '!'",
            ),
        };
        let pattern = like_pattern(&page.search);
        let mut rows_query = sqlx::query(rows_sql);
        let mut count_query = sqlx::query_scalar(count_sql);
        if !page.search.is_empty() {
            rows_query = rows_query.bind(&pattern);
            count_query = count_query.bind(&pattern);
        }
        let rows = rows_query
            .bind(page.per_page)
            .bind((page.number as u64 - 1) * page.per_page as u64)
            .fetch_all(pool)
            .await
            .map_err(|e| self.classify(node, e))?;
        let total: i64 = count_query.fetch_one(pool).await.map_err(|e| self.classify(node, e))?;
        let value = rows.iter().map(product_from_row).collect::<Result<_, _>>().map_err(|e| self.classify(node, e))?;
        Ok(Read { value: (value, total), node: self.nodes[node].name.clone() })
    }

    pub async fn product(&self, id: i64, after_gtid: Option<&str>) -> Result<Read<Option<Product>>, DataError> {
        let node = self.read_node(after_gtid).await;
        let row = sqlx::query("SELECT id, name, description, price_cents, stock FROM products WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.nodes[node].pool)
            .await
            .map_err(|e| self.classify(node, e))?;
        let value = row.as_ref().map(product_from_row).transpose().map_err(|e| self.classify(node, e))?;
        Ok(Read { value, node: self.nodes[node].name.clone() })
    }

    /// Inserts a product on the writer; returns it, the writer's name and the write's GTID.
    pub async fn create_product(
        &self,
        name: &str,
        description: &str,
        price_cents: i64,
        stock: i64,
    ) -> Result<(Product, String, String), DataError> {
        let (name_owned, description_owned) = (name.to_string(), description.to_string());
        let (id, writer, gtid) = self
            .on_writer(move |conn| {
                let name_owned = name_owned.clone();
                let description_owned = description_owned.clone();
                Box::pin(async move {
                    let done =
                        sqlx::query("INSERT INTO products (name, description, price_cents, stock) VALUES (?, ?, ?, ?)")
                            .bind(&name_owned)
                            .bind(&description_owned)
                            .bind(price_cents)
                            .bind(stock)
                            .execute(&mut *conn)
                            .await?;
                    Ok(done.last_insert_id() as i64)
                })
            })
            .await?;
        let product = Product { id, name: name.into(), description: description.into(), price_cents, stock };
        Ok((product, writer, gtid))
    }

    /// Adds `quantity` of a product to a user's cart (0 removes it).
    pub async fn set_cart_line(&self, user_id: i64, product_id: i64, quantity: i64) -> Result<String, DataError> {
        let (_, _, gtid) = self
            .on_writer(move |conn| {
                Box::pin(async move {
                    if quantity == 0 {
                        sqlx::query("DELETE FROM cart_items WHERE user_id = ? AND product_id = ?")
                            .bind(user_id)
                            .bind(product_id)
                            .execute(&mut *conn)
                            .await?;
                    } else {
                        sqlx::query(
                            "INSERT INTO cart_items (user_id, product_id, quantity) \
                             SELECT ?, id, ? FROM products WHERE id = ? \
                             ON DUPLICATE KEY UPDATE quantity = VALUES(quantity)",
                        )
                        .bind(user_id)
                        .bind(quantity)
                        .bind(product_id)
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .await?;
        Ok(gtid)
    }

    /// A user's cart, with each product as it is now.
    pub async fn cart(&self, user_id: i64, after_gtid: Option<&str>) -> Result<Read<Vec<CartLine>>, DataError> {
        let node = self.read_node(after_gtid).await;
        let rows = sqlx::query(
            "SELECT p.id, p.name, p.description, p.price_cents, p.stock, c.quantity \
             FROM cart_items c JOIN products p ON p.id = c.product_id WHERE c.user_id = ? ORDER BY p.id",
        )
        .bind(user_id)
        .fetch_all(&self.nodes[node].pool)
        .await
        .map_err(|e| self.classify(node, e))?;
        let lines = rows
            .iter()
            .map(|r| Ok(CartLine { product: product_from_row(r)?, quantity: r.try_get::<i32, _>("quantity")? as i64 }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.classify(node, e))?;
        Ok(Read { value: lines, node: self.nodes[node].name.clone() })
    }

    /// Places an order for `items` (product, quantity), or for the user's cart when `items` is
    /// empty, in one transaction: the products' rows are locked in id order, every quantity
    /// is checked against the stock, the stock goes down and the order is written, or nothing
    /// is. Concurrent orders thus never sell more than there is. A deadlock (which the lock
    /// order should prevent) is retried.
    pub async fn place_order(
        &self,
        user_id: i64,
        items: &[(i64, i64)],
    ) -> Result<Result<(Order, String), OrderRefused>, DataError> {
        let mut attempt = 0;
        loop {
            let items = items.to_vec();
            let placed = self.on_writer(move |conn| Box::pin(order_transaction(conn, user_id, items.clone()))).await;
            match placed {
                Ok((Ok(order), _, gtid)) => return Ok(Ok((order, gtid))),
                Ok((Err(refused), _, _)) => return Ok(Err(refused)),
                Err(DataError::Unavailable { source, .. }) if is_deadlock(&source) && attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A user's orders, newest first, with their lines.
    pub async fn orders(&self, user_id: i64, after_gtid: Option<&str>) -> Result<Read<Vec<Order>>, DataError> {
        let node = self.read_node(after_gtid).await;
        let pool = &self.nodes[node].pool;
        let rows = sqlx::query(
            "SELECT o.id, o.total_cents, DATE_FORMAT(o.created_at, '%Y-%m-%d %H:%i') AS placed, \
                    i.product_id, p.name, i.quantity, i.price_cents \
             FROM orders o JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id \
             WHERE o.user_id = ? ORDER BY o.id DESC, i.product_id",
        )
        .bind(user_id)
        .fetch_all(pool)
        .await
        .map_err(|e| self.classify(node, e))?;
        let mut orders: Vec<Order> = Vec::new();
        for row in &rows {
            let read = || -> Result<(i64, i64, String, OrderLine), sqlx::Error> {
                Ok((
                    row.try_get("id")?,
                    row.try_get::<i64, _>("total_cents")?,
                    row.try_get("placed")?,
                    OrderLine {
                        product_id: row.try_get("product_id")?,
                        name: row.try_get("name")?,
                        quantity: row.try_get::<i32, _>("quantity")? as i64,
                        price_cents: row.try_get::<i32, _>("price_cents")? as i64,
                    },
                ))
            };
            let (id, total_cents, placed, line) = read().map_err(|e| self.classify(node, e))?;
            match orders.last_mut() {
                Some(order) if order.id == id => order.lines.push(line),
                _ => orders.push(Order { id, total_cents, placed, lines: vec![line] }),
            }
        }
        Ok(Read { value: orders, node: self.nodes[node].name.clone() })
    }

    /// Runs `write` on the writer's connection and returns its result with the writer's name
    /// and the GTID of the write, for read-your-writes. While the writer changes (a switchover
    /// or a failover: the old one refuses with read-only, or no node is writable yet) the write
    /// waits for the new writer and runs there, for up to [`WRITER_CHANGE_WAIT`]; a refused
    /// statement wrote nothing, so running it again is safe.
    async fn on_writer<T, F>(&self, write: F) -> Result<(T, String, String), DataError>
    where
        F: for<'c> Fn(
            &'c mut sqlx::MySqlConnection,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'c>>,
    {
        let deadline = Instant::now() + WRITER_CHANGE_WAIT;
        loop {
            let writer = match self.writer().await {
                Ok(writer) => writer,
                Err(DataError::NoWriter) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Not even connected: nothing was written, so the write may look for a new writer.
            let mut conn = match tokio::time::timeout(WRITE_ACQUIRE_TIMEOUT, self.nodes[writer].pool.acquire()).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(_)) | Err(_) if Instant::now() < deadline => {
                    self.forget_writer();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(Err(e)) => return Err(self.classify(writer, e)),
                Err(_) => return Err(self.classify(writer, sqlx::Error::PoolTimedOut)),
            };
            let result = async {
                let value = write(&mut conn).await?;
                let gtid: String = sqlx::query_scalar("SELECT @@last_gtid").fetch_one(&mut *conn).await?;
                Ok::<_, sqlx::Error>((value, gtid))
            }
            .await;
            match result {
                Ok((value, gtid)) => return Ok((value, self.nodes[writer].name.clone(), gtid)),
                Err(e) if is_read_only(&e) && Instant::now() < deadline => {
                    self.forget_writer();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    if !is_duplicate(&e) {
                        // A failed write may mean the writer changed: ask the nodes again next time.
                        self.forget_writer();
                    }
                    return Err(self.classify(writer, e));
                }
            }
        }
    }

    /// A new account; `Ok(None)` when the e-mail address already has one.
    pub async fn create_user(&self, email: &str, password_hash: &str) -> Result<Option<(User, String)>, DataError> {
        let (email_owned, hash) = (email.to_string(), password_hash.to_string());
        let created = self
            .on_writer(move |conn| {
                let email_owned = email_owned.clone();
                let hash = hash.clone();
                Box::pin(async move {
                    let inserted = sqlx::query("INSERT INTO users (email, password_hash) VALUES (?, ?)")
                        .bind(&email_owned)
                        .bind(&hash)
                        .execute(&mut *conn)
                        .await;
                    match inserted {
                        Ok(done) => Ok(Some(done.last_insert_id() as i64)),
                        Err(e) if is_duplicate(&e) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
            })
            .await?;
        Ok(match created {
            (Some(id), _, gtid) => Some((User { id, email: email.to_string(), is_admin: false }, gtid)),
            (None, _, _) => None,
        })
    }

    /// The account of an e-mail address with its password hash, for a log-in.
    pub async fn user_for_login(
        &self,
        email: &str,
        after_gtid: Option<&str>,
    ) -> Result<Option<(User, String)>, DataError> {
        let node = self.read_node(after_gtid).await;
        let row = sqlx::query("SELECT id, email, is_admin, password_hash FROM users WHERE email = ?")
            .bind(email)
            .fetch_optional(&self.nodes[node].pool)
            .await
            .map_err(|e| self.classify(node, e))?;
        row.map(|r| Ok((user_from_row(&r)?, r.try_get::<String, _>("password_hash")?)))
            .transpose()
            .map_err(|e| self.classify(node, e))
    }

    /// Makes sure the admin account exists with this password hash and the admin role.
    pub async fn ensure_admin(&self, email: &str, password_hash: &str) -> Result<(), DataError> {
        let (email, hash) = (email.to_string(), password_hash.to_string());
        self.on_writer(move |conn| {
            let hash = hash.clone();
            let email = email.clone();
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO users (email, password_hash, is_admin) VALUES (?, ?, TRUE) \
                     ON DUPLICATE KEY UPDATE password_hash = VALUES(password_hash), is_admin = TRUE",
                )
                .bind(&email)
                .bind(&hash)
                .execute(&mut *conn)
                .await
                .map(|_| ())
            })
        })
        .await
        .map(|_| ())
    }

    /// Changes a product; `Ok(None)` when there is no such product.
    pub async fn update_product(&self, product: &Product) -> Result<Option<(String, String)>, DataError> {
        let p = product.clone();
        let (changed, writer, gtid) = self
            .on_writer(move |conn| {
                let p = p.clone();
                Box::pin(async move {
                    let done = sqlx::query(
                        "UPDATE products SET name = ?, description = ?, price_cents = ?, stock = ? WHERE id = ?",
                    )
                    .bind(&p.name)
                    .bind(&p.description)
                    .bind(p.price_cents)
                    .bind(p.stock)
                    .bind(p.id)
                    .execute(&mut *conn)
                    .await?;
                    // Rows matched, not only changed: the connection asks for found rows.
                    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM products WHERE id = ?")
                        .bind(p.id)
                        .fetch_optional(&mut *conn)
                        .await?;
                    Ok(done.rows_affected() > 0 || exists.is_some())
                })
            })
            .await?;
        Ok(changed.then_some((writer, gtid)))
    }

    /// Opens a session for `user_id`; returns the GTID of the write.
    pub async fn create_session(&self, token_sha256: &str, user_id: i64) -> Result<String, DataError> {
        let token = token_sha256.to_string();
        let (_, _, gtid) = self
            .on_writer(move |conn| {
                let token = token.clone();
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO sessions (token_sha256, user_id, expires_at)                          VALUES (?, ?, NOW() + INTERVAL ? DAY)",
                    )
                    .bind(&token)
                    .bind(user_id)
                    .bind(crate::accounts::SESSION_DAYS)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
                })
            })
            .await?;
        Ok(gtid)
    }

    /// The user of a live session.
    pub async fn session_user(&self, token_sha256: &str, after_gtid: Option<&str>) -> Result<Option<User>, DataError> {
        let node = self.read_node(after_gtid).await;
        let row = sqlx::query(
            "SELECT u.id, u.email, u.is_admin FROM sessions s JOIN users u ON u.id = s.user_id              WHERE s.token_sha256 = ? AND s.expires_at > NOW()",
        )
        .bind(token_sha256)
        .fetch_optional(&self.nodes[node].pool)
        .await
        .map_err(|e| self.classify(node, e))?;
        row.as_ref().map(user_from_row).transpose().map_err(|e| self.classify(node, e))
    }

    /// Ends a session; returns the GTID of the write.
    pub async fn end_session(&self, token_sha256: &str) -> Result<String, DataError> {
        let token = token_sha256.to_string();
        let (_, _, gtid) = self
            .on_writer(move |conn| {
                let token = token.clone();
                Box::pin(async move {
                    sqlx::query("DELETE FROM sessions WHERE token_sha256 = ? OR expires_at < NOW()")
                        .bind(&token)
                        .execute(&mut *conn)
                        .await
                        .map(|_| ())
                })
            })
            .await?;
        Ok(gtid)
    }

    /// Healthy when the local node answers and holds the schema.
    pub async fn check_local(&self) -> Result<String, DataError> {
        sqlx::query("SELECT 1 FROM products LIMIT 1")
            .fetch_optional(&self.nodes[self.local].pool)
            .await
            .map_err(|e| self.classify(self.local, e))?;
        Ok(self.nodes[self.local].name.clone())
    }

    fn classify(&self, node: usize, e: sqlx::Error) -> DataError {
        // 1146: table doesn't exist — the schema has not reached this node yet.
        if let sqlx::Error::Database(db) = &e {
            if db.code().as_deref() == Some("42S02") {
                return DataError::NotReady;
            }
        }
        self.unavailable(node, e)
    }

    /// Runs the schema migrations on the writer, once across all app servers (a named lock),
    /// retrying until a writer is reachable.
    pub async fn migrate_when_ready(&self) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.migrate().await {
                Ok(applied) => {
                    tracing::info!(applied, "schema is up to date");
                    return;
                }
                Err(e) => tracing::info!(error = %e, "migrations waiting for the database"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn migrate(&self) -> Result<usize, DataError> {
        let writer = self.writer().await?;
        let pool = &self.nodes[writer].pool;
        let run = async {
            let mut conn = pool.acquire().await?;
            sqlx::query("SELECT GET_LOCK('foobar_migrations', 30)").execute(&mut *conn).await?;
            let mut applied = 0;
            let outcome = async {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, \
                     applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB",
                )
                .execute(&mut *conn)
                .await?;
                let (catalog, customers) = (seed_catalog(), seed_customers());
                let generated: [(i32, Vec<&str>); 2] = [
                    (3, catalog.iter().map(String::as_str).collect()),
                    (7, customers.iter().map(String::as_str).collect()),
                ];
                let mut all: Vec<(i32, Vec<&str>)> =
                    MIGRATIONS.iter().map(|(v, s)| (*v, s.to_vec())).chain(generated).collect();
                // In version order: the stock of migration 6 is given to the seeded catalog of 3.
                all.sort_by_key(|(version, _)| *version);
                for (version, statements) in all {
                    let done: Option<i32> =
                        sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                            .bind(version)
                            .fetch_optional(&mut *conn)
                            .await?;
                    if done.is_some() {
                        continue;
                    }
                    for statement in statements {
                        sqlx::query(statement).execute(&mut *conn).await?;
                    }
                    sqlx::query("INSERT INTO schema_migrations (version) VALUES (?)")
                        .bind(version)
                        .execute(&mut *conn)
                        .await?;
                    applied += 1;
                }
                Ok::<_, sqlx::Error>(())
            }
            .await;
            sqlx::query("SELECT RELEASE_LOCK('foobar_migrations')").execute(&mut *conn).await?;
            outcome.map(|_| applied)
        };
        run.await.map_err(|e| self.unavailable(writer, e))
    }
}

/// A page of the catalog, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub number: u32,
    pub per_page: u32,
    pub search: String,
}

/// `search` as a LIKE pattern matching it anywhere, its own `%` and `_` taken literally.
pub fn like_pattern(search: &str) -> String {
    let mut pattern = String::with_capacity(search.len() + 2);
    pattern.push('%');
    for c in search.chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
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

/// The order transaction on the writer's connection. `items` empty: the user's cart.
async fn order_transaction(
    conn: &mut sqlx::MySqlConnection,
    user_id: i64,
    items: Vec<(i64, i64)>,
) -> Result<Result<Order, OrderRefused>, sqlx::Error> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    let from_cart = items.is_empty();
    let mut wanted: Vec<(i64, i64)> = if from_cart {
        sqlx::query("SELECT product_id, quantity FROM cart_items WHERE user_id = ? FOR UPDATE")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("product_id")?, r.try_get::<i32, _>("quantity")? as i64)))
            .collect::<Result<_, sqlx::Error>>()?
    } else {
        items
    };
    if wanted.is_empty() {
        return Ok(Err(OrderRefused::Empty));
    }
    // One lock order for every transaction: no two orders wait on each other in a cycle.
    wanted.sort_unstable();
    let mut lines = Vec::with_capacity(wanted.len());
    for (product_id, quantity) in &wanted {
        let row = sqlx::query("SELECT name, price_cents, stock FROM products WHERE id = ? FOR UPDATE")
            .bind(product_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(Err(OrderRefused::NoSuchProduct(*product_id))) };
        let (name, price_cents, stock): (String, i32, i32) =
            (row.try_get("name")?, row.try_get("price_cents")?, row.try_get("stock")?);
        if (stock as i64) < *quantity {
            return Ok(Err(OrderRefused::OutOfStock { name, left: stock as i64 }));
        }
        lines.push(OrderLine { product_id: *product_id, name, quantity: *quantity, price_cents: price_cents as i64 });
    }
    let total_cents: i64 = lines.iter().map(|l| l.price_cents * l.quantity).sum();
    for line in &lines {
        sqlx::query("UPDATE products SET stock = stock - ? WHERE id = ?")
            .bind(line.quantity)
            .bind(line.product_id)
            .execute(&mut *tx)
            .await?;
    }
    let id = sqlx::query("INSERT INTO orders (user_id, total_cents) VALUES (?, ?)")
        .bind(user_id)
        .bind(total_cents)
        .execute(&mut *tx)
        .await?
        .last_insert_id() as i64;
    for line in &lines {
        sqlx::query("INSERT INTO order_items (order_id, product_id, quantity, price_cents) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(line.product_id)
            .bind(line.quantity)
            .bind(line.price_cents)
            .execute(&mut *tx)
            .await?;
    }
    if from_cart {
        sqlx::query("DELETE FROM cart_items WHERE user_id = ?").bind(user_id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Ok(Order { id, total_cents, placed: String::new(), lines }))
}

/// Why an order was not placed (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRefused {
    Empty,
    NoSuchProduct(i64),
    OutOfStock { name: String, left: i64 },
}

impl std::fmt::Display for OrderRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderRefused::Empty => f.write_str("The cart is empty."),
            OrderRefused::NoSuchProduct(id) => write!(f, "There is no product {id}."),
            OrderRefused::OutOfStock { name, left: 0 } => write!(f, "{name} is sold out."),
            OrderRefused::OutOfStock { name, left } => write!(f, "Only {left} of {name} left."),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CartLine {
    pub product: Product,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Order {
    pub id: i64,
    pub total_cents: i64,
    /// When it was placed, `YYYY-MM-DD HH:MM` (empty right after placing).
    pub placed: String,
    pub lines: Vec<OrderLine>,
}

impl Order {
    pub fn total(&self) -> String {
        dollars(self.total_cents)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderLine {
    pub product_id: i64,
    pub name: String,
    pub quantity: i64,
    pub price_cents: i64,
}

impl OrderLine {
    pub fn price(&self) -> String {
        dollars(self.price_cents)
    }
}

/// Cents as `$12.50`.
pub fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// InnoDB chose this transaction as a deadlock victim (1213) or gave up waiting for a lock
/// (1205): the transaction may simply run again.
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|m| matches!(m.number(), 1213 | 1205)))
}

/// Seeded customers and their order history (migration 7): 200 accounts (at the reserved
/// `example.invalid`, so no real address collides) that cannot log in
/// (their password hash matches no password), and 1,000 past orders of one to three catalog
/// products each, the same on every run. Past orders do not change today's stock.
pub fn seed_customers() -> Vec<String> {
    const CUSTOMERS: usize = 200;
    const ORDERS: usize = 1000;
    let mut statements = vec![format!(
        "INSERT IGNORE INTO users (email, password_hash) VALUES {}",
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
    for batch in 0..ORDERS / 250 {
        let mut orders = Vec::with_capacity(250);
        let mut lines = Vec::new();
        for k in 0..250 {
            let n = batch * 250 + k;
            let customer = next(CUSTOMERS) + 1;
            let day = 1 + n * 300 / ORDERS;
            orders.push(format!(
                "((SELECT id FROM users WHERE email = 'customer{customer:03}@example.invalid'), 0, \
                 '2026-01-01 09:00:00' + INTERVAL {day} DAY + INTERVAL {} MINUTE)",
                next(600)
            ));
            let mut products: Vec<usize> = (0..1 + next(3)).map(|_| 9 + next(1000)).collect();
            products.sort_unstable();
            products.dedup();
            for product in products {
                // Ids 9 to 1008: the seeded catalog, after the 8 starters of migration 2.
                let quantity = 1 + next(3);
                lines.push(format!(
                    "(@first + {k}, {product}, {quantity}, (SELECT price_cents FROM products WHERE id = {product}))"
                ));
            }
        }
        statements.push(format!("INSERT INTO orders (user_id, total_cents, created_at) VALUES {}", orders.join(", ")));
        // One multi-row insert takes consecutive ids (innodb_autoinc_lock_mode 1, the default):
        // the first one and an offset name each order.
        statements.push("SET @first = LAST_INSERT_ID()".into());
        if batch == 0 {
            statements.push("SET @seed_start = @first".into());
        }
        statements.push(format!(
            "INSERT INTO order_items (order_id, product_id, quantity, price_cents) VALUES {}",
            lines.join(", ")
        ));
    }
    statements.push(
        "UPDATE orders o SET total_cents = \
         (SELECT SUM(i.quantity * i.price_cents) FROM order_items i WHERE i.order_id = o.id) \
         WHERE o.id >= @seed_start AND o.total_cents = 0"
            .into(),
    );
    statements
}

/// The node is read-only (1290, "--read-only option"): it refused the statement, wrote nothing.
fn is_read_only(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|m| m.number() == 1290))
}

/// MariaDB's "duplicate entry" (1062): a unique key says no.
fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|m| m.number() == 1062))
}

fn user_from_row(row: &sqlx::mysql::MySqlRow) -> Result<User, sqlx::Error> {
    Ok(User { id: row.try_get("id")?, email: row.try_get("email")?, is_admin: row.try_get::<bool, _>("is_admin")? })
}

fn product_from_row(row: &sqlx::mysql::MySqlRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price_cents: row.try_get::<i32, _>("price_cents")? as i64,
        stock: row.try_get::<i32, _>("stock")? as i64,
    })
}

/// Each migration: a version and its statements, applied in order, each version once.
const MIGRATIONS: &[(i32, &[&str])] = &[
    (
        1,
        &["CREATE TABLE IF NOT EXISTS products (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(200) NOT NULL,
            description TEXT NOT NULL,
            price_cents INT NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"],
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
        ) ENGINE=InnoDB"],
    ),
    (
        5,
        &[
            "CREATE TABLE IF NOT EXISTS users (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            email VARCHAR(254) NOT NULL UNIQUE,
            password_hash VARCHAR(255) NOT NULL,
            is_admin BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            // The token's SHA-256, never the token itself.
            "CREATE TABLE IF NOT EXISTS sessions (
            token_sha256 CHAR(64) NOT NULL PRIMARY KEY,
            user_id BIGINT NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            INDEX (user_id),
            FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB",
        ],
    ),
    (
        6,
        &[
            "ALTER TABLE products ADD COLUMN IF NOT EXISTS stock INT NOT NULL DEFAULT 0",
            // A deterministic stock for the starter and seeded products: 5 to 64 each.
            "UPDATE products SET stock = 5 + (id * 37) % 60",
            "CREATE TABLE IF NOT EXISTS cart_items (
            user_id BIGINT NOT NULL,
            product_id BIGINT NOT NULL,
            quantity INT NOT NULL,
            PRIMARY KEY (user_id, product_id),
            FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
            FOREIGN KEY (product_id) REFERENCES products (id)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS orders (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            user_id BIGINT NOT NULL,
            total_cents BIGINT NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            INDEX (user_id),
            FOREIGN KEY (user_id) REFERENCES users (id)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS order_items (
            order_id BIGINT NOT NULL,
            product_id BIGINT NOT NULL,
            quantity INT NOT NULL,
            price_cents INT NOT NULL,
            PRIMARY KEY (order_id, product_id),
            FOREIGN KEY (order_id) REFERENCES orders (id),
            FOREIGN KEY (product_id) REFERENCES products (id)
        ) ENGINE=InnoDB",
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(like_pattern(""), "%%");
        assert_eq!(like_pattern("kettle"), "%kettle%");
        assert_eq!(like_pattern("50%_off!"), "%50!%!_off!!%");
    }

    #[test]
    fn the_seeded_history_is_the_same_on_every_run() {
        let (a, b) = (seed_customers(), seed_customers());
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|s| s.starts_with("INSERT INTO orders")).count(), 4, "1,000 orders in 4 inserts");
        assert!(a[0].contains("customer200@example.invalid") && !a[0].contains("customer201"));
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
}
