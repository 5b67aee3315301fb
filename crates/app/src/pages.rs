//! The HTML pages (askama templates under `templates/`; every value is escaped).

use askama::Template;

use crate::data::Product;

#[derive(Template)]
#[template(path = "home.html")]
pub struct Home<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
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
    pub product: &'a Product,
}

#[derive(Template)]
#[template(path = "new.html")]
pub struct NewProduct<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub errors: &'a [String],
    pub name: &'a str,
    pub description: &'a str,
    pub price: &'a str,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub server: &'a str,
    pub db_node: &'a str,
    pub title: &'a str,
    pub message: &'a str,
}
