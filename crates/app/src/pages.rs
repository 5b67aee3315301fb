//! The HTML pages (askama templates under `templates/`; every value is escaped).

use askama::Template;

use crate::data::{CartLine, Order, Product};
use crate::server::Viewer;

#[derive(Template)]
#[template(path = "home.html")]
pub struct Home<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub viewer: &'a Viewer,
    pub products: &'a [Product],
    pub total: i64,
    pub search: &'a str,
    pub page: u32,
    pub pages: u64,
    pub prev: Option<String>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "product.html")]
pub struct ProductPage<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub viewer: &'a Viewer,
    pub product: &'a Product,
}

#[derive(Template)]
#[template(path = "new.html")]
pub struct NewProduct<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub viewer: &'a Viewer,
    pub heading: &'a str,
    /// Where the form posts: `/products` to add, `/products/ID` to change.
    pub action: String,
    pub errors: &'a [String],
    pub name: &'a str,
    pub description: &'a str,
    pub price: &'a str,
    pub stock: &'a str,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub viewer: &'a Viewer,
    pub title: &'a str,
    pub message: &'a str,
}

/// Sign up or log in: one form, two purposes.
#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub viewer: &'a Viewer,
    pub title: &'a str,
    pub action: &'a str,
    pub button: &'a str,
    pub other_link: &'a str,
    pub other_text: &'a str,
    pub new_password: bool,
    pub errors: &'a [String],
    pub email: &'a str,
}

/// What tells the two account forms apart.
struct AccountForm {
    title: &'static str,
    action: &'static str,
    button: &'static str,
    other_link: &'static str,
    other_text: &'static str,
    new_password: bool,
}

const SIGN_UP: AccountForm = AccountForm {
    title: "Create an account",
    action: "/signup",
    button: "Sign up",
    other_link: "/login",
    other_text: "Have an account? Log in.",
    new_password: true,
};

const LOG_IN: AccountForm = AccountForm {
    title: "Log in",
    action: "/login",
    button: "Log in",
    other_link: "/signup",
    other_text: "New here? Create an account.",
    new_password: false,
};

impl<'a> AccountPage<'a> {
    pub fn signup(server: &'a str, viewer: &'a Viewer, errors: &'a [String], email: &'a str) -> Self {
        Self::with(&SIGN_UP, server, viewer, errors, email)
    }

    pub fn login(server: &'a str, viewer: &'a Viewer, errors: &'a [String], email: &'a str) -> Self {
        Self::with(&LOG_IN, server, viewer, errors, email)
    }

    fn with(form: &AccountForm, server: &'a str, viewer: &'a Viewer, errors: &'a [String], email: &'a str) -> Self {
        AccountPage {
            server,
            db_node: "",
            viewer,
            title: form.title,
            action: form.action,
            button: form.button,
            other_link: form.other_link,
            other_text: form.other_text,
            new_password: form.new_password,
            errors,
            email,
        }
    }
}

#[derive(Template)]
#[template(path = "cart.html")]
pub struct CartPage<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub viewer: &'a Viewer,
    pub lines: &'a [CartLine],
    pub total: String,
    pub errors: &'a [String],
}

#[derive(Template)]
#[template(path = "orders.html")]
pub struct OrdersPage<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub viewer: &'a Viewer,
    pub orders: &'a [Order],
}
