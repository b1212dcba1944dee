//! The page, compiled into the binary: plain HTML, CSS and JavaScript, no build step and
//! nothing fetched from elsewhere, so it works offline.

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub(super) const INDEX: &str = include_str!("assets/index.html");
pub(super) const SCRIPT: &str = include_str!("assets/studio.js");
pub(super) const STYLE: &str = include_str!("assets/studio.css");
/// The batches and operator views (the first script holds what they share).
pub(super) const BATCHES_SCRIPT: &str = include_str!("assets/batches.js");
pub(super) const OPERATOR_SCRIPT: &str = include_str!("assets/operator.js");
pub(super) const USAGE_SCRIPT: &str = include_str!("assets/usage.js");
pub(super) const WEBHOOKS_SCRIPT: &str = include_str!("assets/webhooks.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub(super) async fn batches_script() -> Response {
    asset("text/javascript; charset=utf-8", BATCHES_SCRIPT)
}

pub(super) async fn operator_script() -> Response {
    asset("text/javascript; charset=utf-8", OPERATOR_SCRIPT)
}

pub(super) async fn usage_script() -> Response {
    asset("text/javascript; charset=utf-8", USAGE_SCRIPT)
}

pub(super) async fn webhooks_script() -> Response {
    asset("text/javascript; charset=utf-8", WEBHOOKS_SCRIPT)
}
