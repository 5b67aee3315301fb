//! Data access: one connection pool per database node, reads from the local node, writes to
//! the one node that is not `read_only`, and read-your-writes through the session's last GTID.
//! The same code serves the embedded SQLite database: one node, always the writer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::Connection as _;

use crate::accounts::User;
use crate::backend::{self, per_backend, Columns, Conn, Inserted, Pool};
use crate::config::{AppConfig, DatabaseSetting};
use crate::schema;

/// How long a found writer is trusted before the nodes are asked again.
const WRITER_TTL: Duration = Duration::from_secs(1);
/// How long a query waits for a connection to its node.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the writer search waits for each node's answer.
const WRITER_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a write waits for a connection to the writer before it looks for another writer
/// (a dead writer's pool would otherwise hold it for the pool's whole acquire timeout).
const WRITE_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a write waits for a new writer while the writer changes, and on the embedded
/// database, for its turn to write.
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
    #[error("the schema migrations have not finished yet")]
    Migrating,
}

struct Node {
    name: String,
    /// Where reads go.
    pool: Pool,
    /// Where writes go: the same pool on MariaDB; on SQLite, the one connection that writes.
    writes: Pool,
}

pub struct Database {
    nodes: Vec<Node>,
    local: usize,
    writer: Mutex<Option<(usize, Instant)>>,
    /// How far behind the writer a node may be and still serve reads.
    max_lag: Duration,
    /// Each node's last measured lag (heartbeat age); `None` until measured or when unreachable.
    lags: Mutex<Vec<Option<Duration>>>,
    name: String,
    /// Set once this app found every migration applied: until then it is not ready.
    schema_current: AtomicBool,
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

/// A write's closure: runs on the writer's connection, whichever backend it is.
type WriteFuture<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

impl Database {
    pub fn new(config: &AppConfig) -> Database {
        let (nodes, local, max_lag_ms) = match &config.database {
            DatabaseSetting::Cluster(db) => {
                let nodes = db
                    .nodes
                    .iter()
                    .map(|n| {
                        let pool = Pool::mariadb(n.address, &db.name, &db.user, &db.password, POOL_ACQUIRE_TIMEOUT);
                        Node { name: n.name.clone(), pool: pool.clone(), writes: pool }
                    })
                    .collect();
                (nodes, db.local_index(), db.max_lag_ms)
            }
            DatabaseSetting::Embedded(file) => {
                let (pool, writes) = Pool::sqlite(file, POOL_ACQUIRE_TIMEOUT, WRITER_CHANGE_WAIT);
                (vec![Node { name: "sqlite".into(), pool, writes }], 0, 0)
            }
        };
        let count = nodes.len();
        Database {
            nodes,
            local,
            writer: Mutex::new(None),
            max_lag: Duration::from_millis(max_lag_ms),
            lags: Mutex::new(vec![None; count]),
            name: config.name.clone(),
            schema_current: AtomicBool::new(false),
        }
    }

    /// One SQLite file: the only node, always the writer, never behind.
    fn embedded(&self) -> bool {
        matches!(self.nodes.first().map(|n| &n.pool), Some(Pool::Sqlite(_)))
    }

    fn unavailable(&self, index: usize, source: sqlx::Error) -> DataError {
        DataError::Unavailable { node: self.nodes[index].name.clone(), source }
    }

    fn node_name(&self, index: usize) -> String {
        self.nodes[index].name.clone()
    }

    /// The writable node: asks every node for `read_only`, at most once per [`WRITER_TTL`].
    pub async fn writer(&self) -> Result<usize, DataError> {
        if self.embedded() {
            return Ok(0);
        }
        if let Some((index, at)) = *self.writer.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < WRITER_TTL {
                return Ok(index);
            }
        }
        // A dead node must not hold the search up (a pool waits for a connection for up to its
        // acquire timeout): each node gets a short while to answer.
        let mut writable = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Pool::Mysql(pool) = &node.pool else { continue };
            let ask = sqlx::query_scalar::<_, i64>("SELECT @@global.read_only").fetch_one(pool);
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
    /// node's lag as the age of the newest heartbeat it holds. The embedded database has no
    /// replicas to measure.
    pub async fn watch_lag(&self) {
        if self.embedded() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Ok(w) = self.writer().await {
                if let Pool::Mysql(pool) = &self.nodes[w].writes {
                    let beat = sqlx::query("REPLACE INTO heartbeat (server, ts) VALUES (?, NOW(6))").bind(&self.name);
                    let _ = beat.execute(pool).await;
                }
            }
            let mut measured = Vec::with_capacity(self.nodes.len());
            for node in &self.nodes {
                let Pool::Mysql(pool) = &node.pool else { continue };
                let age = sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT TIMESTAMPDIFF(MICROSECOND, MAX(ts), NOW(6)) FROM heartbeat",
                )
                .fetch_one(pool);
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
                let Pool::Mysql(local) = &self.nodes[self.local].pool else { return w };
                let waited = sqlx::query_scalar::<_, i64>("SELECT MASTER_GTID_WAIT(?, ?)")
                    .bind(gtid)
                    .bind(GTID_WAIT_SECONDS)
                    .fetch_one(local)
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
        let searching = !page.search.is_empty();
        let limit = i64::from(page.per_page);
        let offset = (i64::from(page.number) - 1).max(0) * limit;
        let found = per_backend!(&self.nodes[node].pool, Pool, |p, d| {
            let mut rows_query = sqlx::query(rows_sql);
            let mut count_query = sqlx::query_scalar::<_, i64>(count_sql);
            if searching {
                rows_query = rows_query.bind(&pattern);
                count_query = count_query.bind(&pattern);
            }
            async {
                let rows = rows_query.bind(limit).bind(offset).fetch_all(p).await?;
                let total = count_query.fetch_one(p).await?;
                let products = rows.iter().map(product_from_row).collect::<Result<Vec<_>, _>>()?;
                Ok::<_, sqlx::Error>((products, total))
            }
            .await
        });
        let value = found.map_err(|e| self.classify(node, e))?;
        Ok(Read { value, node: self.node_name(node) })
    }

    pub async fn product(&self, id: i64, after_gtid: Option<&str>) -> Result<Read<Option<Product>>, DataError> {
        let node = self.read_node(after_gtid).await;
        let sql = "SELECT id, name, description, price_cents, stock FROM products WHERE id = ?";
        let found = per_backend!(&self.nodes[node].pool, Pool, |p, d| {
            sqlx::query(sql)
                .bind(id)
                .fetch_optional(p)
                .await
                .and_then(|row| row.as_ref().map(product_from_row).transpose())
        });
        let value = found.map_err(|e| self.classify(node, e))?;
        Ok(Read { value, node: self.node_name(node) })
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
                    let sql = "INSERT INTO products (name, description, price_cents, stock) VALUES (?, ?, ?, ?)";
                    per_backend!(conn, Conn, |c, d| {
                        let done = sqlx::query(sql)
                            .bind(&name_owned)
                            .bind(&description_owned)
                            .bind(price_cents)
                            .bind(stock)
                            .execute(&mut *c)
                            .await?;
                        Ok(done.inserted_id())
                    })
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
                    per_backend!(conn, Conn, |c, d| {
                        if quantity == 0 {
                            sqlx::query("DELETE FROM cart_items WHERE user_id = ? AND product_id = ?")
                                .bind(user_id)
                                .bind(product_id)
                                .execute(&mut *c)
                                .await?;
                        } else {
                            let upsert = d.pick(
                                "INSERT INTO cart_items (user_id, product_id, quantity) \
                                 SELECT ?, id, ? FROM products WHERE id = ? \
                                 ON DUPLICATE KEY UPDATE quantity = VALUES(quantity)",
                                "INSERT INTO cart_items (user_id, product_id, quantity) \
                                 SELECT ?, id, ? FROM products WHERE id = ? \
                                 ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = excluded.quantity",
                            );
                            sqlx::query(upsert).bind(user_id).bind(quantity).bind(product_id).execute(&mut *c).await?;
                        }
                        Ok(())
                    })
                })
            })
            .await?;
        Ok(gtid)
    }

    /// A user's cart, with each product as it is now.
    pub async fn cart(&self, user_id: i64, after_gtid: Option<&str>) -> Result<Read<Vec<CartLine>>, DataError> {
        let node = self.read_node(after_gtid).await;
        let sql = "SELECT p.id, p.name, p.description, p.price_cents, p.stock, c.quantity \
                   FROM cart_items c JOIN products p ON p.id = c.product_id WHERE c.user_id = ? ORDER BY p.id";
        let found = per_backend!(&self.nodes[node].pool, Pool, |p, d| {
            sqlx::query(sql).bind(user_id).fetch_all(p).await.and_then(|rows| {
                rows.iter()
                    .map(|r| Ok(CartLine { product: product_from_row(r)?, quantity: r.int("quantity")? }))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })
        });
        let value = found.map_err(|e| self.classify(node, e))?;
        Ok(Read { value, node: self.node_name(node) })
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
                Err(DataError::Unavailable { source, .. }) if backend::is_deadlock(&source) && attempt < 3 => {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A user's orders, newest first, with their lines.
    pub async fn orders(&self, user_id: i64, after_gtid: Option<&str>) -> Result<Read<Vec<Order>>, DataError> {
        let node = self.read_node(after_gtid).await;
        let found = per_backend!(&self.nodes[node].pool, Pool, |p, d| {
            let sql = d.pick(
                "SELECT o.id, o.total_cents, DATE_FORMAT(o.created_at, '%Y-%m-%d %H:%i') AS placed, \
                        i.product_id, p.name, i.quantity, i.price_cents \
                 FROM orders o JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id \
                 WHERE o.user_id = ? ORDER BY o.id DESC, i.product_id",
                "SELECT o.id, o.total_cents, strftime('%Y-%m-%d %H:%M', o.created_at) AS placed, \
                        i.product_id, p.name, i.quantity, i.price_cents \
                 FROM orders o JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id \
                 WHERE o.user_id = ? ORDER BY o.id DESC, i.product_id",
            );
            sqlx::query(sql).bind(user_id).fetch_all(p).await.and_then(|rows| orders_from_rows(&rows))
        });
        let value = found.map_err(|e| self.classify(node, e))?;
        Ok(Read { value, node: self.node_name(node) })
    }

    /// Runs `write` on the writer's connection and returns its result with the writer's name
    /// and the GTID of the write, for read-your-writes (empty on the embedded database, which
    /// has nothing to wait for). While the writer changes (a switchover or a failover: the old
    /// one refuses with read-only, or no node is writable yet) the write waits for the new
    /// writer and runs there, for up to [`WRITER_CHANGE_WAIT`]; a refused statement wrote
    /// nothing, so running it again is safe.
    async fn on_writer<T, F>(&self, write: F) -> Result<(T, String, String), DataError>
    where
        F: for<'c> Fn(Conn<'c>) -> WriteFuture<'c, T>,
    {
        let deadline = Instant::now() + WRITER_CHANGE_WAIT;
        // The embedded database's one writing connection is never elsewhere: wait for it.
        let acquire_wait = if self.embedded() { WRITER_CHANGE_WAIT } else { WRITE_ACQUIRE_TIMEOUT };
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
            let mut conn = match tokio::time::timeout(acquire_wait, self.nodes[writer].writes.acquire()).await {
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
                let value = write(conn.conn()).await?;
                let gtid = match conn.conn() {
                    Conn::Mysql(c) => sqlx::query_scalar("SELECT @@last_gtid").fetch_one(c).await?,
                    Conn::Sqlite(_) => String::new(),
                };
                Ok::<_, sqlx::Error>((value, gtid))
            }
            .await;
            match result {
                Ok((value, gtid)) => return Ok((value, self.node_name(writer), gtid)),
                Err(e) if backend::is_read_only(&e) && Instant::now() < deadline => {
                    self.forget_writer();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    if !backend::is_duplicate(&e) {
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
                    let sql = "INSERT INTO users (email, password_hash) VALUES (?, ?)";
                    let inserted = per_backend!(conn, Conn, |c, d| {
                        sqlx::query(sql).bind(&email_owned).bind(&hash).execute(&mut *c).await.map(|r| r.inserted_id())
                    });
                    match inserted {
                        Ok(id) => Ok(Some(id)),
                        Err(e) if backend::is_duplicate(&e) => Ok(None),
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
        let sql = "SELECT id, email, is_admin, password_hash FROM users WHERE email = ?";
        let found = per_backend!(&self.nodes[node].pool, Pool, |p, d| {
            sqlx::query(sql)
                .bind(email)
                .fetch_optional(p)
                .await
                .and_then(|row| row.map(|r| Ok((user_from_row(&r)?, r.text("password_hash")?))).transpose())
        });
        found.map_err(|e| self.classify(node, e))
    }

    /// Makes sure the admin account exists with this password hash and the admin role.
    pub async fn ensure_admin(&self, email: &str, password_hash: &str) -> Result<(), DataError> {
        let (email, hash) = (email.to_string(), password_hash.to_string());
        self.on_writer(move |conn| {
            let hash = hash.clone();
            let email = email.clone();
            Box::pin(async move {
                per_backend!(conn, Conn, |c, d| {
                    let upsert = d.pick(
                        "INSERT INTO users (email, password_hash, is_admin) VALUES (?, ?, TRUE) \
                         ON DUPLICATE KEY UPDATE password_hash = VALUES(password_hash), is_admin = TRUE",
                        "INSERT INTO users (email, password_hash, is_admin) VALUES (?, ?, TRUE) \
                         ON CONFLICT (email) DO UPDATE SET password_hash = excluded.password_hash, is_admin = TRUE",
                    );
                    sqlx::query(upsert).bind(&email).bind(&hash).execute(&mut *c).await.map(|_| ())
                })
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
                    per_backend!(conn, Conn, |c, d| {
                        let done = sqlx::query(
                            "UPDATE products SET name = ?, description = ?, price_cents = ?, stock = ? WHERE id = ?",
                        )
                        .bind(&p.name)
                        .bind(&p.description)
                        .bind(p.price_cents)
                        .bind(p.stock)
                        .bind(p.id)
                        .execute(&mut *c)
                        .await?;
                        // MariaDB counts changed rows, not matched ones: an edit that changes
                        // nothing still found its product.
                        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM products WHERE id = ?")
                            .bind(p.id)
                            .fetch_optional(&mut *c)
                            .await?;
                        Ok(done.rows_affected() > 0 || exists.is_some())
                    })
                })
            })
            .await?;
        Ok(changed.then_some((writer, gtid)))
    }

    /// Opens a session for `user_id`; returns the GTID of the write.
    pub async fn create_session(&self, token_sha256: &str, user_id: i64) -> Result<String, DataError> {
        let token = token_sha256.to_string();
        let days = i64::from(crate::accounts::SESSION_DAYS);
        let (_, _, gtid) = self
            .on_writer(move |conn| {
                let token = token.clone();
                Box::pin(async move {
                    per_backend!(conn, Conn, |c, d| {
                        let insert = d.pick(
                            "INSERT INTO sessions (token_sha256, user_id, expires_at) \
                             VALUES (?, ?, NOW() + INTERVAL ? DAY)",
                            "INSERT INTO sessions (token_sha256, user_id, expires_at) \
                             VALUES (?, ?, datetime('now', '+' || ? || ' days'))",
                        );
                        sqlx::query(insert).bind(&token).bind(user_id).bind(days).execute(&mut *c).await.map(|_| ())
                    })
                })
            })
            .await?;
        Ok(gtid)
    }

    /// The user of a live session.
    pub async fn session_user(&self, token_sha256: &str, after_gtid: Option<&str>) -> Result<Option<User>, DataError> {
        let node = self.read_node(after_gtid).await;
        let found = per_backend!(&self.nodes[node].pool, Pool, |p, d| {
            let sql = d.pick(
                "SELECT u.id, u.email, u.is_admin FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_sha256 = ? AND s.expires_at > NOW()",
                "SELECT u.id, u.email, u.is_admin FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_sha256 = ? AND s.expires_at > datetime('now')",
            );
            sqlx::query(sql)
                .bind(token_sha256)
                .fetch_optional(p)
                .await
                .and_then(|row| row.as_ref().map(user_from_row).transpose())
        });
        found.map_err(|e| self.classify(node, e))
    }

    /// Ends a session; returns the GTID of the write.
    pub async fn end_session(&self, token_sha256: &str) -> Result<String, DataError> {
        let token = token_sha256.to_string();
        let (_, _, gtid) = self
            .on_writer(move |conn| {
                let token = token.clone();
                Box::pin(async move {
                    per_backend!(conn, Conn, |c, d| {
                        let delete = d.pick(
                            "DELETE FROM sessions WHERE token_sha256 = ? OR expires_at < NOW()",
                            "DELETE FROM sessions WHERE token_sha256 = ? OR expires_at < datetime('now')",
                        );
                        sqlx::query(delete).bind(&token).execute(&mut *c).await.map(|_| ())
                    })
                })
            })
            .await?;
        Ok(gtid)
    }

    /// Healthy when the schema is up to date (the seed loaded) and the local node answers.
    pub async fn check_local(&self) -> Result<String, DataError> {
        if !self.schema_current.load(Ordering::Relaxed) {
            return Err(DataError::Migrating);
        }
        let checked = per_backend!(&self.nodes[self.local].pool, Pool, |p, d| {
            sqlx::query("SELECT 1 FROM products LIMIT 1").fetch_optional(p).await.map(|_| ())
        });
        checked.map_err(|e| self.classify(self.local, e))?;
        Ok(self.node_name(self.local))
    }

    fn classify(&self, node: usize, e: sqlx::Error) -> DataError {
        match backend::is_missing_table(&e) {
            true => DataError::NotReady,
            false => self.unavailable(node, e),
        }
    }

    /// Runs the schema migrations on the writer, once across all app servers (a named lock),
    /// retrying until a writer is reachable.
    pub async fn migrate_when_ready(&self) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.migrate().await {
                Ok(applied) => {
                    tracing::info!(applied, "schema is up to date");
                    self.schema_current.store(true, Ordering::Relaxed);
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
        let run = async {
            let mut conn = self.nodes[writer].writes.acquire().await?;
            // Every app server starts at once; one migrates, the others wait and find it done.
            // (The embedded database has one app and one writing connection.)
            if let Conn::Mysql(c) = conn.conn() {
                sqlx::query("SELECT GET_LOCK('foobar_migrations', 30)").execute(c).await?;
            }
            let outcome = apply_migrations(conn.conn()).await;
            if let Conn::Mysql(c) = conn.conn() {
                sqlx::query("SELECT RELEASE_LOCK('foobar_migrations')").execute(c).await?;
            }
            outcome
        };
        run.await.map_err(|e| self.unavailable(writer, e))
    }
}

/// Applies each migration not applied yet, each in one transaction (on SQLite a migration is
/// all or nothing; MariaDB commits its DDL at once, and the versions make a rerun safe).
async fn apply_migrations(conn: Conn<'_>) -> Result<usize, sqlx::Error> {
    per_backend!(conn, Conn, |c, d| {
        sqlx::query(&d.render(schema::MIGRATIONS_TABLE)).execute(&mut *c).await?;
        let mut applied = 0;
        for (version, statements) in schema::migrations() {
            let done: Option<i32> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&mut *c)
                .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = c.begin().await?;
            for statement in schema::render(d, &statements) {
                sqlx::query(&statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version) VALUES (?)").bind(version).execute(&mut *tx).await?;
            tx.commit().await?;
            applied += 1;
        }
        Ok(applied)
    })
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

/// The order transaction on the writer's connection. `items` empty: the user's cart.
async fn order_transaction(
    conn: Conn<'_>,
    user_id: i64,
    items: Vec<(i64, i64)>,
) -> Result<Result<Order, OrderRefused>, sqlx::Error> {
    per_backend!(conn, Conn, |c, d| {
        // MariaDB locks the rows it reads FOR UPDATE; SQLite has one writer at a time, and the
        // embedded database's one writing connection runs one order after the other.
        let (cart_sql, product_sql) = (
            d.pick(
                "SELECT product_id, quantity FROM cart_items WHERE user_id = ? FOR UPDATE",
                "SELECT product_id, quantity FROM cart_items WHERE user_id = ?",
            ),
            d.pick(
                "SELECT name, price_cents, stock FROM products WHERE id = ? FOR UPDATE",
                "SELECT name, price_cents, stock FROM products WHERE id = ?",
            ),
        );
        let mut tx = c.begin().await?;
        let from_cart = items.is_empty();
        let mut wanted: Vec<(i64, i64)> = if from_cart {
            sqlx::query(cart_sql)
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.int("product_id")?, r.int("quantity")?)))
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
            let row = sqlx::query(product_sql).bind(product_id).fetch_optional(&mut *tx).await?;
            let Some(row) = row else { return Ok(Err(OrderRefused::NoSuchProduct(*product_id))) };
            let (name, price_cents, stock) = (row.text("name")?, row.int("price_cents")?, row.int("stock")?);
            if stock < *quantity {
                return Ok(Err(OrderRefused::OutOfStock { name, left: stock }));
            }
            lines.push(OrderLine { product_id: *product_id, name, quantity: *quantity, price_cents });
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
            .inserted_id();
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
    })
}

/// Orders with their lines, from rows of one line each, newest order first.
fn orders_from_rows(rows: &[impl Columns]) -> Result<Vec<Order>, sqlx::Error> {
    let mut orders: Vec<Order> = Vec::new();
    for row in rows {
        let id = row.int("id")?;
        let line = OrderLine {
            product_id: row.int("product_id")?,
            name: row.text("name")?,
            quantity: row.int("quantity")?,
            price_cents: row.int("price_cents")?,
        };
        match orders.last_mut() {
            Some(order) if order.id == id => order.lines.push(line),
            _ => orders.push(Order {
                id,
                total_cents: row.int("total_cents")?,
                placed: row.text("placed")?,
                lines: vec![line],
            }),
        }
    }
    Ok(orders)
}

fn user_from_row(row: &impl Columns) -> Result<User, sqlx::Error> {
    Ok(User { id: row.int("id")?, email: row.text("email")?, is_admin: row.flag("is_admin")? })
}

fn product_from_row(row: &impl Columns) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.int("id")?,
        name: row.text("name")?,
        description: row.text("description")?,
        price_cents: row.int("price_cents")?,
        stock: row.int("stock")?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(like_pattern(""), "%%");
        assert_eq!(like_pattern("kettle"), "%kettle%");
        assert_eq!(like_pattern("50%_off!"), "%50!%!_off!!%");
    }
}
