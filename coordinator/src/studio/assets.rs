//! The page, compiled into the binary: plain HTML, CSS and JavaScript, no build step and
//! nothing fetched from elsewhere, so it works offline.

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub(super) const INDEX: &str = include_str!("assets/index.html");
pub(super) const STYLE: &str = include_str!("assets/studio.css");
/// The page's scripts by path, in the order the page loads them (deferred, so they run in that
/// order and share one global scope): studio.js holds what the others use.
pub(super) const SCRIPTS: [(&str, &str); 7] = [
    ("/studio.js", include_str!("assets/studio.js")),
    ("/models.js", include_str!("assets/models.js")),
    ("/pictures.js", include_str!("assets/pictures.js")),
    ("/batches.js", include_str!("assets/batches.js")),
    ("/operator.js", include_str!("assets/operator.js")),
    ("/usage.js", include_str!("assets/usage.js")),
    ("/webhooks.js", include_str!("assets/webhooks.js")),
];

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

pub(super) fn script(body: &'static str) -> Response {
    asset("text/javascript; charset=utf-8", body)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_every_script_served_in_the_served_order() {
        let loaded: Vec<&str> = INDEX
            .lines()
            .filter_map(|l| l.trim().strip_prefix("<script src=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        let served: Vec<&str> = SCRIPTS.iter().map(|(path, _)| *path).collect();
        assert_eq!(loaded, served);
    }
}
