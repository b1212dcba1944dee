//! The gateway against other web sites. A page on another origin can make a browser send
//! "simple" requests (a form POST, or `fetch` with `text/plain`) to the studio without a
//! preflight, and with auth off (`tutti dev`) such a request would be anyone's farm; a DNS
//! name rebound to 127.0.0.1 would even let it read the answers. So:
//!
//! - **Host**: a studio listening on a loopback address answers only requests whose `Host` is
//!   a loopback name (`localhost`, `127.x.x.x`, `[::1]`) or one the operator allows
//!   (`--studio-allowed-hosts`): a rebound foreign name is refused (DNS rebinding). On other
//!   addresses any host is served unless an allow-list is given.
//! - **Writes** (every method but GET/HEAD/OPTIONS, and DELETE, which browsers always preflight)
//!   must carry a JSON (or, for a manifest upload, a manifest) `Content-Type`: none of them is a
//!   type a cross-site form or a simple request can send. An `Origin` header, when present, must be the studio's own or an
//!   allowed one (`--studio-allowed-origins`); `Sec-Fetch-Site: cross-site` without an
//!   allowed origin is refused as well.
//! - **CORS**: no `Access-Control-*` header unless origins are allowed; then those origins
//!   (and only those) get CORS answers, preflights included.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::StudioOptions;

/// The rules of one listener.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    access: StudioOptions,
    /// The listener is on a loopback address: only loopback (or allowed) `Host`s.
    loopback: bool,
}

/// The most of a refused request's body that is read before answering.
const DRAIN_LIMIT: usize = 1 << 20;

/// A manifest upload's body types (none is CORS-safelisted, so none comes without a preflight).
const MANIFEST_TYPES: [&str; 4] = [
    "application/octet-stream",
    "application/x-ndjson",
    "application/jsonl",
    "text/csv",
];

impl Guard {
    pub(crate) fn new(access: StudioOptions, addr: SocketAddr) -> Self {
        Self {
            access,
            loopback: addr.ip().is_loopback(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if self
            .access
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        if self.loopback {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        } else {
            self.access.allowed_hosts.is_empty()
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.access
            .allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }

    /// Why a request must not reach the API, if it must not.
    fn refusal(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<&'static str> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(host) = text(header::HOST.as_str()) else {
            return Some("a Host header is required");
        };
        if !self.host_allowed(host) {
            return Some("this host name is not served here (allowed: loopback names and --studio-allowed-hosts)");
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let origin = text(header::ORIGIN.as_str());
        let own_origin = origin.is_some_and(|o| same_host(o, host));
        let allowed_origin = origin.is_some_and(|o| self.origin_allowed(o));
        if origin.is_some() && !own_origin && !allowed_origin {
            return Some("requests from other web sites are refused (Origin)");
        }
        if text("sec-fetch-site") == Some("cross-site") && !allowed_origin {
            return Some("requests from other web sites are refused (Sec-Fetch-Site)");
        }
        // A browser preflights every DELETE from another origin (it is not a "simple" method),
        // and a DELETE has no body: REST clients send it without a Content-Type.
        if *method == Method::DELETE {
            return None;
        }
        let media = text(header::CONTENT_TYPE.as_str()).map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let upload = path == "/api/batches";
        match media.as_deref() {
            Some("application/json") => None,
            Some(m) if upload && MANIFEST_TYPES.contains(&m) => None,
            _ if upload => Some("Content-Type must be a manifest type (application/octet-stream, application/x-ndjson, text/csv)"),
            _ => Some("Content-Type must be application/json"),
        }
    }
}

/// `localhost:8080` -> `localhost`, `[::1]:8080` -> `[::1]`.
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    }
}

/// Whether `origin` (`http://host:port`) names the same host and port as the `Host` header.
fn same_host(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

/// The middleware: refuses what `Guard::refusal` names with 403 and a JSON body, and answers
/// CORS for allowed origins.
pub(crate) async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| guard.origin_allowed(o))
        .map(str::to_string);
    // A preflight from an allowed origin: say what it may send.
    if request.method() == Method::OPTIONS {
        if let Some(origin) = &origin {
            let mut response = StatusCode::NO_CONTENT.into_response();
            cors_headers(response.headers_mut(), origin, true);
            return response;
        }
    }
    if let Some(why) = guard.refusal(request.method(), request.uri().path(), request.headers()) {
        tracing::info!(
            method = %request.method(),
            path = request.uri().path(),
            why,
            "studio refused a request"
        );
        // Read (a bounded part of) what the client is still sending: closing a connection with
        // unread data makes the kernel reset it, and the client would see a reset instead of
        // the refusal.
        let _ = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT).await;
        let body =
            serde_json::json!({ "code": "PERMISSION_DENIED", "message": why, "field": null });
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    let mut response = next.run(request).await;
    if let Some(origin) = &origin {
        cors_headers(response.headers_mut(), origin, false);
    }
    response
}

fn cors_headers(h: &mut HeaderMap, origin: &str, preflight: bool) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    fn dev() -> Guard {
        Guard::new(
            StudioOptions::default(),
            "127.0.0.1:8080".parse().expect("addr"),
        )
    }

    #[test]
    fn loopback_listeners_serve_loopback_hosts_only() {
        let g = dev();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(
                g.refusal(&Method::GET, "/", &headers(&[("host", ok)]))
                    .is_none(),
                "{ok}"
            );
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "10.0.0.1:8080",
        ] {
            assert!(
                g.refusal(&Method::GET, "/", &headers(&[("host", bad)]))
                    .is_some(),
                "{bad}"
            );
        }
        assert!(g.refusal(&Method::GET, "/", &HeaderMap::new()).is_some());
        let allowed = Guard::new(
            StudioOptions {
                allowed_hosts: vec!["studio.lan".into()],
                ..Default::default()
            },
            "127.0.0.1:8080".parse().expect("addr"),
        );
        assert!(allowed
            .refusal(&Method::GET, "/", &headers(&[("host", "studio.lan:8080")]))
            .is_none());
        // A public listener serves any name unless told which.
        let public = Guard::new(
            StudioOptions::default(),
            "0.0.0.0:8080".parse().expect("addr"),
        );
        assert!(public
            .refusal(&Method::GET, "/", &headers(&[("host", "farm.example")]))
            .is_none());
    }

    #[test]
    fn writes_need_json_and_their_own_origin() {
        let g = dev();
        let host = ("host", "127.0.0.1:8080");
        let json = ("content-type", "application/json; charset=utf-8");
        let post = |h: &[(&'static str, &str)], path| g.refusal(&Method::POST, path, &headers(h));
        assert!(post(&[host, json], "/api/jobs").is_none());
        assert!(post(
            &[host, json, ("origin", "http://127.0.0.1:8080")],
            "/api/jobs"
        )
        .is_none());
        assert!(post(&[host, ("content-type", "text/plain")], "/api/jobs").is_some());
        assert!(post(&[host], "/api/jobs/1/cancel").is_some());
        assert!(post(
            &[host, ("content-type", "application/x-www-form-urlencoded")],
            "/api/jobs"
        )
        .is_some());
        assert!(post(
            &[host, json, ("origin", "http://evil.example")],
            "/api/jobs"
        )
        .is_some());
        assert!(post(&[host, json, ("origin", "null")], "/api/jobs").is_some());
        assert!(post(&[host, json, ("sec-fetch-site", "cross-site")], "/api/jobs").is_some());
        assert!(post(&[host, ("content-type", "text/csv")], "/api/batches").is_none());
        assert!(post(&[host, ("content-type", "text/csv")], "/api/jobs").is_some());
        // DELETE needs no Content-Type, but another site's Origin is still refused.
        let delete =
            |h: &[(&'static str, &str)]| g.refusal(&Method::DELETE, "/v1/jobs/x", &headers(h));
        assert!(delete(&[host]).is_none());
        assert!(delete(&[host, ("origin", "https://evil.example")]).is_some());
        let cors = Guard::new(
            StudioOptions {
                allowed_origins: vec!["https://app.example".into()],
                ..Default::default()
            },
            "127.0.0.1:8080".parse().expect("addr"),
        );
        let h = headers(&[
            host,
            json,
            ("origin", "https://app.example"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(cors.refusal(&Method::POST, "/api/jobs", &h).is_none());
    }
}
