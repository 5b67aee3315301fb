//! Routes of foobar.com: pages, the JSON API under `/api/v1`, and `/healthz`.

use std::future::Future;
use std::sync::Arc;

use askama::Template;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use serde::Deserialize;

use crate::accounts::{self, User, CSRF_COOKIE, SESSION_COOKIE};
use crate::config::AppConfig;
use crate::data::{DataError, Database, Page, Product, Read};
use crate::pages;

const GTID_COOKIE: &str = "foobar_gtid";
const BODY_LIMIT: usize = 64 * 1024;
static X_DB_READ: HeaderName = HeaderName::from_static("x-db-read");
static X_DB_WRITE: HeaderName = HeaderName::from_static("x-db-write");

pub struct AppState {
    pub name: String,
    pub db: Database,
}

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/products/new", get(new_product_form))
        .route("/products", axum::routing::post(create_product_form))
        .route("/products/{id}", get(product_page).post(update_product_form))
        .route("/products/{id}/edit", get(edit_product_form))
        .route("/cart", get(cart_page).post(set_cart_line))
        .route("/orders", get(orders_page).post(place_order))
        .route("/signup", get(signup_form).post(signup))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/api/v1/products", get(api_products).post(api_create_product))
        .route("/api/v1/products/{id}", get(api_product).put(api_update_product))
        .route("/api/v1/users", axum::routing::post(api_signup))
        .route("/api/v1/session", axum::routing::post(api_login).delete(api_logout))
        .route("/api/v1/me", get(api_me))
        .route("/api/v1/cart", get(api_cart).post(api_set_cart_line))
        .route("/api/v1/orders", get(api_orders).post(api_place_order))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves the app until `shutdown` completes; migrations run in the background meanwhile.
pub async fn run(config: AppConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen)))?;
    let state = Arc::new(AppState { name: config.name.clone(), db: Database::new(&config) });
    let migrating = state.clone();
    let admin = config.admin.clone();
    let migrations = tokio::spawn(async move {
        migrating.db.migrate_when_ready().await;
        if let Some(admin) = admin {
            ensure_admin(&migrating.db, &admin).await;
        }
    });
    let watching = state.clone();
    let lag = tokio::spawn(async move { watching.db.watch_lag().await });
    tracing::info!(listen = %config.listen, "foobar.com app is serving");
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    migrations.abort();
    lag.abort();
    served
}

/// Makes sure the configured admin account exists, retrying while the database is away.
async fn ensure_admin(db: &Database, admin: &crate::config::AdminConfig) {
    let Ok(email) = accounts::valid_email(&admin.email) else { return };
    let password = admin.password.clone();
    let hash = match tokio::task::spawn_blocking(move || accounts::hash_password(&password)).await {
        Ok(Ok(hash)) => hash,
        Ok(Err(e)) => return tracing::error!(error = %e, "cannot hash the admin password"),
        Err(e) => return tracing::error!(error = %e, "cannot hash the admin password"),
    };
    let mut delay = std::time::Duration::from_millis(200);
    for _ in 0..30 {
        match db.ensure_admin(&email, &hash).await {
            Ok(()) => return tracing::info!(email, "the shop's admin account is ready"),
            Err(e) => tracing::info!(error = %e, "admin account waiting for the database"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(2));
    }
    tracing::error!(email, "the admin account could not be made; products cannot be added until a restart");
}

/// The session's last write, if the cookie holds a well-formed GTID list.
fn session_gtid(headers: &HeaderMap) -> Option<String> {
    let value = accounts::cookie(headers, GTID_COOKIE)?;
    let well_formed = !value.is_empty()
        && value.len() <= 200
        && value.split(',').all(|g| {
            let parts: Vec<_> = g.split('-').collect();
            parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
    well_formed.then(|| value.to_string())
}

fn with_header(mut response: Response, name: &HeaderName, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name.clone(), v);
    }
    response
}

/// A page for `viewer`; a visitor without a CSRF cookie gets one with it.
fn render(viewer: &Viewer, template: impl Template) -> Response {
    let mut response = match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
    };
    if viewer.new_csrf {
        let cookie = accounts::secret_cookie(CSRF_COOKIE, Some(&viewer.csrf), 86_400 * 365, viewer.secure);
        append_cookie(&mut response, &cookie);
    }
    response
}

fn append_cookie(response: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn error_page(state: &AppState, viewer: &Viewer, status: StatusCode, title: &str, message: &str) -> Response {
    let page = pages::ErrorPage { server: &state.name, db_node: "", viewer, title, message };
    let mut response = render(viewer, page);
    *response.status_mut() = status;
    response
}

fn data_error_page(state: &AppState, viewer: &Viewer, e: &DataError) -> Response {
    tracing::warn!(error = %e, "database error");
    error_page(state, viewer, StatusCode::SERVICE_UNAVAILABLE, "Service unavailable", &e.to_string())
}

/// Who is looking at a page: the signed-in user, if any, and the CSRF token their forms
/// carry (double-submit: a cookie, and the same value in each form, which another site can
/// neither read nor set).
pub struct Viewer {
    pub user: Option<User>,
    pub csrf: String,
    /// The visitor had no CSRF cookie: the page sets one, and no form can pass yet.
    new_csrf: bool,
    session_token: Option<String>,
    /// The session cookie could not be checked (the database did not answer).
    session_unknown: bool,
    /// The page came over HTTPS (the web role says so): cookies get `Secure`.
    secure: bool,
    gtid: Option<String>,
}

impl Viewer {
    pub fn email(&self) -> &str {
        self.user.as_ref().map(|u| u.email.as_str()).unwrap_or("")
    }

    /// A form's CSRF field matches the cookie this visitor had.
    fn form_is_genuine(&self, submitted: &str) -> bool {
        !self.new_csrf && accounts::same_secret(&self.csrf, submitted)
    }
}

impl axum::extract::FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let secure = headers.get("x-forwarded-proto").is_some_and(|v| v == "https");
        let gtid = session_gtid(headers);
        let (csrf, new_csrf) = match accounts::cookie(headers, CSRF_COOKIE).filter(|t| accounts::well_formed_token(t)) {
            Some(token) => (token.to_string(), false),
            None => (accounts::new_token().unwrap_or_default(), true),
        };
        let session_token =
            accounts::cookie(headers, SESSION_COOKIE).filter(|t| accounts::well_formed_token(t)).map(str::to_string);
        let (user, session_unknown) = match &session_token {
            Some(token) => match state.db.session_user(&accounts::token_digest(token), gtid.as_deref()).await {
                Ok(user) => (user, false),
                Err(e) => {
                    // Pages still render (signed out); what needs the account answers 503.
                    tracing::warn!(error = %e, "session lookup failed");
                    (None, true)
                }
            },
            None => (None, false),
        };
        Ok(Viewer { user, csrf, new_csrf, session_token, session_unknown, secure, gtid })
    }
}

fn forged_form(state: &AppState, viewer: &Viewer) -> Response {
    error_page(
        state,
        viewer,
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form has expired or did not come from this site. Go back, reload the page and try again.",
    )
}

/// What `?page=&per_page=&q=` ask for, as given.
#[derive(Debug, Default, Deserialize)]
pub struct CatalogQuery {
    page: Option<String>,
    per_page: Option<String>,
    q: Option<String>,
}

const MAX_PER_PAGE: u32 = 100;

impl CatalogQuery {
    /// The page asked for, or what is wrong with the parameters.
    pub fn page(&self, default_per_page: u32) -> Result<Page, String> {
        let number = match self.page.as_deref().map(str::trim) {
            None | Some("") => 1,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=100_000).contains(p))
                .ok_or_else(|| format!("page `{p}` is not a number from 1 to 100000"))?,
        };
        let per_page = match self.per_page.as_deref().map(str::trim) {
            None | Some("") => default_per_page,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=MAX_PER_PAGE).contains(p))
                .ok_or_else(|| format!("per_page `{p}` is not a number from 1 to {MAX_PER_PAGE}"))?,
        };
        let search = self.q.as_deref().unwrap_or("").trim().to_string();
        if search.chars().count() > 100 {
            return Err("the search is longer than 100 characters".into());
        }
        Ok(Page { number, per_page, search })
    }
}

async fn home(State(state): Shared, viewer: Viewer, Query(query): Query<CatalogQuery>) -> Response {
    let page = match query.page(24) {
        Ok(page) => page,
        Err(e) => return error_page(&state, &viewer, StatusCode::BAD_REQUEST, "Bad request", &e),
    };
    match state.db.catalog(viewer.gtid.as_deref(), &page).await {
        Ok(read) => {
            let (products, total) = &read.value;
            let pages = ((*total as u64).div_ceil(page.per_page as u64)).max(1);
            let view = pages::Home {
                server: &state.name,
                db_node: &read.node,
                viewer: &viewer,
                products,
                total: *total,
                search: &page.search,
                page: page.number,
                pages,
                prev: (page.number > 1).then(|| page_link(page.number - 1, &page.search)),
                next: ((page.number as u64) < pages).then(|| page_link(page.number + 1, &page.search)),
            };
            with_header(render(&viewer, view), &X_DB_READ, &read.node)
        }
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

/// `/?page=N&q=…`, the search percent-encoded.
fn page_link(number: u32, search: &str) -> String {
    let mut link = format!("/?page={number}");
    if !search.is_empty() {
        link.push_str("&q=");
        for b in search.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => link.push(b as char),
                _ => link.push_str(&format!("%{b:02X}")),
            }
        }
    }
    link
}

async fn product_page(State(state): Shared, Path(id): Path<String>, viewer: Viewer) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error_page(&state, &viewer, StatusCode::NOT_FOUND, "Not found", "There is no such product.");
    };
    match state.db.product(id, viewer.gtid.as_deref()).await {
        Ok(read) => match &read.value {
            Some(product) => {
                let page = pages::ProductPage { server: &state.name, db_node: &read.node, viewer: &viewer, product };
                with_header(render(&viewer, page), &X_DB_READ, &read.node)
            }
            None => with_header(
                error_page(&state, &viewer, StatusCode::NOT_FOUND, "Not found", "There is no such product."),
                &X_DB_READ,
                &read.node,
            ),
        },
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

async fn new_product_form(State(state): Shared, viewer: Viewer) -> Response {
    if let Some(refused) = admin_only(&state, &viewer) {
        return refused;
    }
    let page = pages::NewProduct {
        server: &state.name,
        db_node: "",
        viewer: &viewer,
        heading: "Add a product",
        action: "/products".into(),
        errors: &[],
        name: "",
        description: "",
        price: "",
        stock: "10",
    };
    render(&viewer, page)
}

async fn edit_product_form(State(state): Shared, Path(id): Path<String>, viewer: Viewer) -> Response {
    if let Some(refused) = admin_only(&state, &viewer) {
        return refused;
    }
    let Ok(id) = id.parse::<i64>() else {
        return error_page(&state, &viewer, StatusCode::NOT_FOUND, "Not found", "There is no such product.");
    };
    match state.db.product(id, viewer.gtid.as_deref()).await {
        Ok(Read { value: Some(product), .. }) => {
            let (price, stock) =
                (format!("{}.{:02}", product.price_cents / 100, product.price_cents % 100), product.stock.to_string());
            let page = pages::NewProduct {
                server: &state.name,
                db_node: "",
                viewer: &viewer,
                heading: "Change a product",
                action: format!("/products/{id}"),
                errors: &[],
                name: &product.name,
                description: &product.description,
                price: &price,
                stock: &stock,
            };
            render(&viewer, page)
        }
        Ok(Read { value: None, .. }) => {
            error_page(&state, &viewer, StatusCode::NOT_FOUND, "Not found", "There is no such product.")
        }
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

/// A product form's fields, checked; or the form again with what is wrong.
fn checked_product_form(
    state: &AppState,
    viewer: &Viewer,
    form: &ProductForm,
    heading: &str,
    action: String,
) -> Result<(String, String, i64, i64), Box<Response>> {
    let stock = parse_stock(&form.stock);
    let valid = validate_product(&form.name, &form.description, parse_price(&form.price));
    match (valid, stock) {
        (Ok((name, description, price)), Ok(stock)) => Ok((name, description, price, stock)),
        (valid, stock) => {
            let mut errors = valid.err().unwrap_or_default();
            errors.extend(stock.err());
            let page = pages::NewProduct {
                server: &state.name,
                db_node: "",
                viewer,
                heading,
                action,
                errors: &errors,
                name: &form.name,
                description: &form.description,
                price: &form.price,
                stock: &form.stock,
            };
            let mut response = render(viewer, page);
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Err(Box::new(response))
        }
    }
}

async fn update_product_form(
    State(state): Shared,
    Path(id): Path<String>,
    viewer: Viewer,
    Form(form): Form<ProductForm>,
) -> Response {
    if !viewer.form_is_genuine(&form.csrf) {
        return forged_form(&state, &viewer);
    }
    if let Some(refused) = admin_only(&state, &viewer) {
        return refused;
    }
    let Ok(id) = id.parse::<i64>() else {
        return error_page(&state, &viewer, StatusCode::NOT_FOUND, "Not found", "There is no such product.");
    };
    let (name, description, price_cents, stock) =
        match checked_product_form(&state, &viewer, &form, "Change a product", format!("/products/{id}")) {
            Ok(valid) => valid,
            Err(response) => return *response,
        };
    let product = Product { id, name, description, price_cents, stock };
    match state.db.update_product(&product).await {
        Ok(Some((writer, gtid))) => {
            let mut response = Redirect::to(&format!("/products/{id}")).into_response();
            remember_write(&mut response, &gtid);
            with_header(response, &X_DB_WRITE, &writer)
        }
        Ok(None) => error_page(&state, &viewer, StatusCode::NOT_FOUND, "Not found", "There is no such product."),
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

#[derive(Debug, Deserialize)]
pub struct ProductForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    price: String,
    #[serde(default)]
    stock: String,
    #[serde(default)]
    csrf: String,
}

/// A product as submitted, checked: the name, description and price in cents.
pub fn validate_product(
    name: &str,
    description: &str,
    price_cents: Result<i64, String>,
) -> Result<(String, String, i64), Vec<String>> {
    let mut errors = Vec::new();
    let name = name.trim();
    if name.is_empty() {
        errors.push("The name is required.".to_string());
    } else if name.chars().count() > 200 {
        errors.push("The name is longer than 200 characters.".to_string());
    }
    if description.chars().count() > 2000 {
        errors.push("The description is longer than 2000 characters.".to_string());
    }
    let price = match price_cents {
        Ok(p) if (0..=100_000_000).contains(&p) => Some(p),
        Ok(_) => {
            errors.push("The price must be between 0 and 1,000,000.00.".to_string());
            None
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };
    match (errors.is_empty(), price) {
        (true, Some(p)) => Ok((name.to_string(), description.trim().to_string(), p)),
        _ => Err(errors),
    }
}

/// `12`, `12.5` or `12.50` (a leading `$` allowed) in cents.
pub fn parse_price(text: &str) -> Result<i64, String> {
    let t = text.trim().trim_start_matches('$');
    let bad = || format!("`{}` is not a price like 12.50.", text.trim());
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty()
        || whole.len() > 9
        || frac.len() > 2
        || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<2}").parse().map_err(|_| bad())? };
    Ok(whole * 100 + frac)
}

async fn create_product_form(State(state): Shared, viewer: Viewer, Form(form): Form<ProductForm>) -> Response {
    if !viewer.form_is_genuine(&form.csrf) {
        return forged_form(&state, &viewer);
    }
    if let Some(refused) = admin_only(&state, &viewer) {
        return refused;
    }
    let (name, description, price, stock) =
        match checked_product_form(&state, &viewer, &form, "Add a product", "/products".into()) {
            Ok(valid) => valid,
            Err(response) => return *response,
        };
    match state.db.create_product(&name, &description, price, stock).await {
        Ok((product, writer, gtid)) => {
            let mut response = Redirect::to(&format!("/products/{}", product.id)).into_response();
            remember_write(&mut response, &gtid);
            with_header(response, &X_DB_WRITE, &writer)
        }
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

const MAX_STOCK: i64 = 1_000_000;
/// At most this many of one product in a cart or an order line.
const MAX_QUANTITY: i64 = 99;
/// At most this many lines in one order.
const MAX_LINES: usize = 50;

/// A stock count as typed in the form; empty is none.
pub fn parse_stock(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<i64>()
        .ok()
        .filter(|n| (0..=MAX_STOCK).contains(n))
        .ok_or_else(|| format!("The stock `{text}` is not a number from 0 to {MAX_STOCK}."))
}

/// Keeps the session's last write, so its next read waits for it (read-your-writes). The
/// embedded database has no GTIDs: it is its own writer, nothing to wait for.
fn remember_write(response: &mut Response, gtid: &str) {
    if !gtid.is_empty() {
        append_cookie(response, &format!("{GTID_COOKIE}={gtid}; Path=/; HttpOnly; SameSite=Lax"));
    }
}

#[derive(Debug, Deserialize)]
pub struct AccountForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn signup_form(State(state): Shared, viewer: Viewer) -> Response {
    let page = pages::AccountPage::signup(&state.name, &viewer, &[], "");
    render(&viewer, page)
}

async fn login_form(State(state): Shared, viewer: Viewer) -> Response {
    let page = pages::AccountPage::login(&state.name, &viewer, &[], "");
    render(&viewer, page)
}

/// The account form again, with what went wrong.
fn account_form_error(
    state: &AppState,
    viewer: &Viewer,
    signup: bool,
    status: StatusCode,
    error: String,
    email: &str,
) -> Response {
    let errors = [error];
    let page = match signup {
        true => pages::AccountPage::signup(&state.name, viewer, &errors, email),
        false => pages::AccountPage::login(&state.name, viewer, &errors, email),
    };
    let mut response = render(viewer, page);
    *response.status_mut() = status;
    response
}

/// Why an account could not be opened or entered; each is a status and a message.
enum AccountError {
    Invalid(String),
    Taken,
    WrongCredentials,
    Data(DataError),
    Internal(String),
}

impl AccountError {
    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            AccountError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, m.clone()),
            AccountError::Taken => {
                (StatusCode::CONFLICT, "An account with this e-mail address exists; log in instead.".into())
            }
            AccountError::WrongCredentials => {
                (StatusCode::UNAUTHORIZED, "The e-mail address or the password is wrong.".into())
            }
            AccountError::Data(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            AccountError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m.clone()),
        }
    }
}

/// A signed-in session: its token (for the cookie) and the GTID of the writes.
struct Opened {
    user: User,
    token: String,
    gtid: String,
}

/// Opens an account and signs it in.
async fn open_account(state: &AppState, email: &str, password: &str) -> Result<Opened, AccountError> {
    let email = accounts::valid_email(email).map_err(AccountError::Invalid)?;
    accounts::valid_password(password).map_err(AccountError::Invalid)?;
    let password = password.to_string();
    // argon2 takes tens of milliseconds of CPU: off the request threads.
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&password))
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?
        .map_err(AccountError::Internal)?;
    let (user, _) =
        state.db.create_user(&email, &hash).await.map_err(AccountError::Data)?.ok_or(AccountError::Taken)?;
    start_session(state, user).await
}

/// Checks a log-in. An unknown address costs the same argon2 work as a wrong password.
async fn enter_account(state: &AppState, viewer: &Viewer, email: &str, password: &str) -> Result<Opened, AccountError> {
    let Ok(email) = accounts::valid_email(email) else { return Err(AccountError::WrongCredentials) };
    let found = state.db.user_for_login(&email, viewer.gtid.as_deref()).await.map_err(AccountError::Data)?;
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, accounts::dummy_hash().to_string()),
    };
    let password = password.to_string();
    let matches = tokio::task::spawn_blocking(move || accounts::verify_password(&password, &hash))
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    match (user, matches) {
        (Some(user), true) => start_session(state, user).await,
        _ => Err(AccountError::WrongCredentials),
    }
}

async fn start_session(state: &AppState, user: User) -> Result<Opened, AccountError> {
    let token = accounts::new_token().map_err(AccountError::Internal)?;
    let gtid = state.db.create_session(&accounts::token_digest(&token), user.id).await.map_err(AccountError::Data)?;
    Ok(Opened { user, token, gtid })
}

/// The cookies of a new session on `response`.
fn with_session(mut response: Response, viewer: &Viewer, opened: &Opened) -> Response {
    let max_age = accounts::SESSION_DAYS * 86_400;
    append_cookie(&mut response, &accounts::secret_cookie(SESSION_COOKIE, Some(&opened.token), max_age, viewer.secure));
    remember_write(&mut response, &opened.gtid);
    response
}

async fn signup(State(state): Shared, viewer: Viewer, Form(form): Form<AccountForm>) -> Response {
    if !viewer.form_is_genuine(&form.csrf) {
        return forged_form(&state, &viewer);
    }
    match open_account(&state, &form.email, &form.password).await {
        Ok(opened) => with_session(Redirect::to("/").into_response(), &viewer, &opened),
        Err(e) => {
            let (status, message) = e.status_and_message();
            account_form_error(&state, &viewer, true, status, message, &form.email)
        }
    }
}

async fn login(State(state): Shared, viewer: Viewer, Form(form): Form<AccountForm>) -> Response {
    if !viewer.form_is_genuine(&form.csrf) {
        return forged_form(&state, &viewer);
    }
    match enter_account(&state, &viewer, &form.email, &form.password).await {
        Ok(opened) => with_session(Redirect::to("/").into_response(), &viewer, &opened),
        Err(e) => {
            let (status, message) = e.status_and_message();
            account_form_error(&state, &viewer, false, status, message, &form.email)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(state): Shared, viewer: Viewer, Form(form): Form<LogoutForm>) -> Response {
    if !viewer.form_is_genuine(&form.csrf) {
        return forged_form(&state, &viewer);
    }
    end_session(&state, &viewer, Redirect::to("/").into_response()).await
}

/// Ends the viewer's session, if any, and clears its cookie on `response`.
async fn end_session(state: &AppState, viewer: &Viewer, mut response: Response) -> Response {
    if let Some(token) = &viewer.session_token {
        match state.db.end_session(&accounts::token_digest(token)).await {
            Ok(gtid) => remember_write(&mut response, &gtid),
            Err(e) => tracing::warn!(error = %e, "could not end a session; it expires by itself"),
        }
    }
    append_cookie(&mut response, &accounts::secret_cookie(SESSION_COOKIE, None, 0, viewer.secure));
    response
}

fn api_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn api_data_error(e: &DataError) -> Response {
    tracing::warn!(error = %e, "database error");
    api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

async fn api_products(State(state): Shared, headers: HeaderMap, Query(query): Query<CatalogQuery>) -> Response {
    let page = match query.page(20) {
        Ok(page) => page,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, &e),
    };
    match state.db.catalog(session_gtid(&headers).as_deref(), &page).await {
        Ok(read) => {
            let (products, total) = &read.value;
            let body = serde_json::json!({
                "products": products,
                "page": page.number,
                "per_page": page.per_page,
                "total": total,
                "q": page.search,
            });
            with_header(Json(body).into_response(), &X_DB_READ, &read.node)
        }
        Err(e) => api_data_error(&e),
    }
}

async fn api_product(State(state): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return api_error(StatusCode::NOT_FOUND, "no such product");
    };
    match state.db.product(id, session_gtid(&headers).as_deref()).await {
        Ok(Read { value: Some(p), node }) => with_header(Json(p).into_response(), &X_DB_READ, &node),
        Ok(Read { value: None, node }) => {
            with_header(api_error(StatusCode::NOT_FOUND, "no such product"), &X_DB_READ, &node)
        }
        Err(e) => api_data_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProductJson {
    name: String,
    #[serde(default)]
    description: String,
    price_cents: i64,
    #[serde(default)]
    stock: i64,
}

async fn api_create_product(
    State(state): Shared,
    viewer: Viewer,
    body: Result<Json<NewProductJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(refused) = api_admin_only(&viewer) {
        return refused;
    }
    let input = match json_input(body) {
        Ok(input) => input,
        Err((status, message)) => return api_error(status, &message),
    };
    let (name, description, price) = match validate_product(&input.name, &input.description, Ok(input.price_cents)) {
        Ok(valid) => valid,
        Err(errors) => return api_error(StatusCode::UNPROCESSABLE_ENTITY, &errors.join(" ")),
    };
    if !(0..=MAX_STOCK).contains(&input.stock) {
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, &format!("stock must be from 0 to {MAX_STOCK}"));
    }
    match state.db.create_product(&name, &description, price, input.stock).await {
        Ok((product, writer, gtid)) => {
            let mut response = (StatusCode::CREATED, Json(&product)).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/products/{}", product.id)) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            let response = with_header(response, &HeaderName::from_static("x-gtid"), &gtid);
            with_header(response, &X_DB_WRITE, &writer)
        }
        Err(e) => api_data_error(&e),
    }
}

async fn api_update_product(
    State(state): Shared,
    Path(id): Path<String>,
    viewer: Viewer,
    body: Result<Json<NewProductJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(refused) = api_admin_only(&viewer) {
        return refused;
    }
    let Ok(id) = id.parse::<i64>() else {
        return api_error(StatusCode::NOT_FOUND, "no such product");
    };
    let input = match json_input(body) {
        Ok(input) => input,
        Err((status, message)) => return api_error(status, &message),
    };
    let (name, description, price_cents) =
        match validate_product(&input.name, &input.description, Ok(input.price_cents)) {
            Ok(valid) => valid,
            Err(errors) => return api_error(StatusCode::UNPROCESSABLE_ENTITY, &errors.join(" ")),
        };
    if !(0..=MAX_STOCK).contains(&input.stock) {
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, &format!("stock must be from 0 to {MAX_STOCK}"));
    }
    let product = Product { id, name, description, price_cents, stock: input.stock };
    match state.db.update_product(&product).await {
        Ok(Some((writer, gtid))) => {
            let response = with_header(Json(&product).into_response(), &HeaderName::from_static("x-gtid"), &gtid);
            with_header(response, &X_DB_WRITE, &writer)
        }
        Ok(None) => api_error(StatusCode::NOT_FOUND, "no such product"),
        Err(e) => api_data_error(&e),
    }
}

async fn healthz(State(state): Shared) -> Response {
    match state.db.check_local().await {
        Ok(node) => Json(serde_json::json!({ "status": "ok", "server": state.name, "database": node })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "degraded", "server": state.name, "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn not_found(State(state): Shared, viewer: Viewer) -> Response {
    error_page(&state, &viewer, StatusCode::NOT_FOUND, "Not found", "There is nothing at this address.")
}

/// Pages that change the catalog: the log-in page for visitors, 403 for shoppers.
fn admin_only(state: &AppState, viewer: &Viewer) -> Option<Response> {
    match &viewer.user {
        None => Some(to_login(viewer)),
        Some(user) if !user.is_admin => Some(error_page(
            state,
            viewer,
            StatusCode::FORBIDDEN,
            "Admins only",
            "Only the shop's admins add and change products.",
        )),
        Some(_) => None,
    }
}

fn api_admin_only(viewer: &Viewer) -> Option<Response> {
    match &viewer.user {
        None => Some(not_signed_in(viewer)),
        Some(user) if !user.is_admin => Some(api_error(StatusCode::FORBIDDEN, "only admins change products")),
        Some(_) => None,
    }
}

/// The answer for a visitor who is not signed in: the log-in page, or a 401 in the API.
/// A visitor without an account goes to the log-in page; one whose session could not be
/// checked gets a 503 (sending a signed-in user to log in would be wrong).
fn to_login(viewer: &Viewer) -> Response {
    if viewer.session_unknown {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, "The database is unavailable; try again.").into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    Redirect::to("/login").into_response()
}

fn not_signed_in(viewer: &Viewer) -> Response {
    if viewer.session_unknown {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable; the session could not be checked",
        );
    }
    api_error(StatusCode::UNAUTHORIZED, "not signed in")
}

#[derive(Debug, Deserialize)]
pub struct CartForm {
    #[serde(default)]
    product_id: String,
    #[serde(default)]
    quantity: String,
    #[serde(default)]
    csrf: String,
}

/// A cart line as asked for: a product id and a quantity from 0 (remove) to [`MAX_QUANTITY`].
pub fn valid_cart_line(product_id: &str, quantity: &str) -> Result<(i64, i64), String> {
    let product_id =
        product_id.trim().parse::<i64>().ok().filter(|id| *id > 0).ok_or("The product is not a product id.")?;
    let quantity = quantity
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|q| (0..=MAX_QUANTITY).contains(q))
        .ok_or(format!("The quantity must be a number from 0 to {MAX_QUANTITY}."))?;
    Ok((product_id, quantity))
}

async fn cart_page(State(state): Shared, viewer: Viewer) -> Response {
    let Some(user) = viewer.user.as_ref() else { return to_login(&viewer) };
    show_cart(&state, &viewer, user, StatusCode::OK, &[]).await
}

async fn show_cart(state: &AppState, viewer: &Viewer, user: &User, status: StatusCode, errors: &[String]) -> Response {
    match state.db.cart(user.id, viewer.gtid.as_deref()).await {
        Ok(read) => {
            let total: i64 = read.value.iter().map(|l| l.product.price_cents * l.quantity).sum();
            let page = pages::CartPage {
                server: &state.name,
                db_node: &read.node,
                viewer,
                lines: &read.value,
                total: crate::data::dollars(total),
                errors,
            };
            let mut response = render(viewer, page);
            *response.status_mut() = status;
            response
        }
        Err(e) => data_error_page(state, viewer, &e),
    }
}

async fn set_cart_line(State(state): Shared, viewer: Viewer, Form(form): Form<CartForm>) -> Response {
    if !viewer.form_is_genuine(&form.csrf) {
        return forged_form(&state, &viewer);
    }
    let Some(user) = viewer.user.as_ref() else { return to_login(&viewer) };
    let (product_id, quantity) = match valid_cart_line(&form.product_id, &form.quantity) {
        Ok(line) => line,
        Err(e) => return show_cart(&state, &viewer, user, StatusCode::UNPROCESSABLE_ENTITY, &[e]).await,
    };
    match state.db.set_cart_line(user.id, product_id, quantity).await {
        Ok(gtid) => {
            let mut response = Redirect::to("/cart").into_response();
            remember_write(&mut response, &gtid);
            response
        }
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

async fn place_order(State(state): Shared, viewer: Viewer, Form(form): Form<LogoutForm>) -> Response {
    if !viewer.form_is_genuine(&form.csrf) {
        return forged_form(&state, &viewer);
    }
    let Some(user) = viewer.user.as_ref() else { return to_login(&viewer) };
    match state.db.place_order(user.id, &[]).await {
        Ok(Ok((order, gtid))) => {
            let mut response = Redirect::to(&format!("/orders#order-{}", order.id)).into_response();
            remember_write(&mut response, &gtid);
            response
        }
        Ok(Err(refused)) => show_cart(&state, &viewer, user, StatusCode::CONFLICT, &[refused.to_string()]).await,
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

async fn orders_page(State(state): Shared, viewer: Viewer) -> Response {
    let Some(user) = viewer.user.as_ref() else { return to_login(&viewer) };
    match state.db.orders(user.id, viewer.gtid.as_deref()).await {
        Ok(read) => {
            let page =
                pages::OrdersPage { server: &state.name, db_node: &read.node, viewer: &viewer, orders: &read.value };
            render(&viewer, page)
        }
        Err(e) => data_error_page(&state, &viewer, &e),
    }
}

async fn api_cart(State(state): Shared, viewer: Viewer) -> Response {
    let Some(user) = viewer.user.as_ref() else { return not_signed_in(&viewer) };
    match state.db.cart(user.id, viewer.gtid.as_deref()).await {
        Ok(read) => Json(serde_json::json!({ "lines": read.value })).into_response(),
        Err(e) => api_data_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartLineJson {
    product_id: i64,
    quantity: i64,
}

async fn api_set_cart_line(
    State(state): Shared,
    viewer: Viewer,
    body: Result<Json<CartLineJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(user) = viewer.user.as_ref() else { return not_signed_in(&viewer) };
    let line = match json_input(body) {
        Ok(input) => input,
        Err((status, message)) => return api_error(status, &message),
    };
    if let Err(e) = valid_cart_line(&line.product_id.to_string(), &line.quantity.to_string()) {
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, &e);
    }
    match state.db.set_cart_line(user.id, line.product_id, line.quantity).await {
        Ok(gtid) => with_header(StatusCode::NO_CONTENT.into_response(), &HeaderName::from_static("x-gtid"), &gtid),
        Err(e) => api_data_error(&e),
    }
}

async fn api_orders(State(state): Shared, viewer: Viewer) -> Response {
    let Some(user) = viewer.user.as_ref() else { return not_signed_in(&viewer) };
    match state.db.orders(user.id, viewer.gtid.as_deref()).await {
        Ok(read) => Json(serde_json::json!({ "orders": read.value })).into_response(),
        Err(e) => api_data_error(&e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderJson {
    /// The lines to buy; none means the cart.
    #[serde(default)]
    items: Vec<CartLineJson>,
}

async fn api_place_order(
    State(state): Shared,
    viewer: Viewer,
    body: Result<Json<OrderJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(user) = viewer.user.as_ref() else { return not_signed_in(&viewer) };
    let order = match json_input(body) {
        Ok(input) => input,
        Err((status, message)) => return api_error(status, &message),
    };
    if order.items.len() > MAX_LINES {
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, &format!("at most {MAX_LINES} lines per order"));
    }
    let mut items: Vec<(i64, i64)> = Vec::with_capacity(order.items.len());
    for line in &order.items {
        if line.product_id <= 0 || !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("each line needs a product_id and a quantity from 1 to {MAX_QUANTITY}"),
            );
        }
        if items.iter().any(|(id, _)| *id == line.product_id) {
            return api_error(StatusCode::UNPROCESSABLE_ENTITY, "each product may appear once per order");
        }
        items.push((line.product_id, line.quantity));
    }
    match state.db.place_order(user.id, &items).await {
        Ok(Ok((order, gtid))) => {
            let response = (StatusCode::CREATED, Json(&order)).into_response();
            with_header(response, &HeaderName::from_static("x-gtid"), &gtid)
        }
        Ok(Err(refused)) => api_error(StatusCode::CONFLICT, &refused.to_string()),
        Err(e) => api_data_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountJson {
    email: String,
    password: String,
}

/// A JSON body, or the status and message its rejection deserves. JSON bodies only: a browser
/// cannot send one to another site without that site's CORS consent, so the API needs no CSRF
/// token.
fn json_input<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, (StatusCode, String)> {
    body.map(|Json(input)| input).map_err(|rejection| (rejection.status(), rejection.body_text()))
}

fn api_account_error(e: AccountError) -> Response {
    let (status, message) = e.status_and_message();
    api_error(status, &message)
}

async fn api_signup(
    State(state): Shared,
    viewer: Viewer,
    body: Result<Json<AccountJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let input = match json_input(body) {
        Ok(input) => input,
        Err((status, message)) => return api_error(status, &message),
    };
    match open_account(&state, &input.email, &input.password).await {
        Ok(opened) => with_session((StatusCode::CREATED, Json(&opened.user)).into_response(), &viewer, &opened),
        Err(e) => api_account_error(e),
    }
}

async fn api_login(
    State(state): Shared,
    viewer: Viewer,
    body: Result<Json<AccountJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let input = match json_input(body) {
        Ok(input) => input,
        Err((status, message)) => return api_error(status, &message),
    };
    match enter_account(&state, &viewer, &input.email, &input.password).await {
        Ok(opened) => with_session(Json(&opened.user).into_response(), &viewer, &opened),
        Err(e) => api_account_error(e),
    }
}

async fn api_logout(State(state): Shared, viewer: Viewer) -> Response {
    end_session(&state, &viewer, StatusCode::NO_CONTENT.into_response()).await
}

async fn api_me(viewer: Viewer) -> Response {
    match &viewer.user {
        Some(user) => Json(user).into_response(),
        None => not_signed_in(&viewer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prices() {
        assert_eq!(parse_price("12"), Ok(1200));
        assert_eq!(parse_price("12.5"), Ok(1250));
        assert_eq!(parse_price("$0.05"), Ok(5));
        for bad in ["", "-1", "1.234", "12,50", "abc", "1e3", "."] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn catalog_queries_are_checked() {
        let q = |page: &str, per: &str, search: &str| CatalogQuery {
            page: Some(page.into()),
            per_page: Some(per.into()),
            q: Some(search.into()),
        };
        assert_eq!(q("2", "10", " mug ").page(20), Ok(Page { number: 2, per_page: 10, search: "mug".into() }));
        assert_eq!(CatalogQuery::default().page(20).unwrap().per_page, 20);
        assert!(q("0", "", "").page(20).unwrap_err().contains("page `0`"));
        assert!(q("1", "1000", "").page(20).unwrap_err().contains("per_page `1000`"));
        assert!(q("x", "", "").page(20).is_err());
        assert!(q("1", "", &"a".repeat(101)).page(20).is_err());
        assert_eq!(page_link(3, "oak mug&x"), "/?page=3&q=oak%20mug%26x");
    }

    #[test]
    fn validates_products() {
        assert!(validate_product("Mug", "", Ok(100)).is_ok());
        let errs = validate_product("  ", &"x".repeat(2001), Ok(-1)).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn only_well_formed_gtids_are_taken_from_the_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; foobar_gtid=0-1-42"));
        assert_eq!(session_gtid(&h).as_deref(), Some("0-1-42"));
        h.insert(header::COOKIE, HeaderValue::from_static("foobar_gtid=0-1-42'); DROP"));
        assert_eq!(session_gtid(&h), None);
    }
}
