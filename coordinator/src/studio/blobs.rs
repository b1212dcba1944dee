//! Audio for the page. Outputs on S3 already carry a presigned HTTPS URL (S3 serves ranges
//! itself); an embedded farm's local blobs have only a `file://` URI, which a browser cannot
//! open from a page. For those the gateway hands out its own presigned URL: `/blobs/<key>` with
//! an expiry and an HMAC of both under a secret of this process, served with HTTP range
//! requests so that the player can seek.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tutti_proto::v1 as pb;
use tutti_shared::blob::BlobStore;

use super::Studio;

type Signer = Hmac<Sha256>;

/// Signs and serves URLs of local blobs.
#[derive(Clone)]
pub(crate) struct LocalUrls {
    blobs: Arc<dyn BlobStore>,
    secret: Arc<[u8; 32]>,
    /// `file:///root/`: the URI of every local key starts so.
    prefix: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct BlobQuery {
    expires: u64,
    sig: String,
    /// When set, the response is an attachment of this file name.
    download: Option<String>,
}

impl LocalUrls {
    pub(crate) fn new(blobs: Arc<dyn BlobStore>) -> Self {
        let prefix = blobs.uri("");
        Self {
            blobs,
            secret: Arc::new(rand::random()),
            prefix,
        }
    }

    fn signature(&self, key: &str, expires: u64) -> Signer {
        // A 32-byte key always fits HMAC.
        let mut mac = <Signer as Mac>::new_from_slice(&self.secret[..])
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The page's URL of a local object (`None` for one the blob store presigned itself).
    fn url(
        &self,
        uri: &str,
        url: &str,
        expires: Option<&tutti_proto::wkt::Timestamp>,
    ) -> Option<String> {
        if !url.starts_with("file://") {
            return None;
        }
        let key = uri.strip_prefix(&self.prefix)?;
        let expires = expires.map_or(0, |t| t.seconds.max(0) as u64);
        let sig = hex::encode(self.signature(key, expires).finalize().into_bytes());
        Some(format!("/blobs/{key}?expires={expires}&sig={sig}"))
    }

    /// Replaces `file://` URLs of a job's outputs with the gateway's presigned ones.
    pub(crate) fn rewrite(&self, job: &mut pb::Job) {
        for o in &mut job.outputs {
            if let Some(url) = self.url(&o.uri, &o.url, o.url_expires_at.as_ref()) {
                o.url = url;
            }
        }
    }

    /// The same for a batch's results manifest.
    pub(crate) fn rewrite_batch(&self, batch: &mut pb::Batch) {
        let expires = batch.results_url_expires_at.as_ref();
        if let Some(url) = self.url(&batch.results_uri, &batch.results_url, expires) {
            batch.results_url = url;
        }
    }

    fn verify(&self, key: &str, q: &BlobQuery) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Ok(sig) = hex::decode(&q.sig) else {
            return false;
        };
        q.expires >= now && self.signature(key, q.expires).verify_slice(&sig).is_ok()
    }
}

/// The byte range of a `Range` header for a body of `len` bytes: `Ok(None)` for the whole
/// body (no header, or several ranges, which are served whole), `Err(())` when unsatisfiable.
pub(crate) fn parse_range(value: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", "") => return Err(()),
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = match e {
                "" => len.saturating_sub(1),
                e => e.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1)),
            };
            (s, e)
        }
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn content_type(key: &str) -> &'static str {
    let ext = key.rsplit('.').next();
    if let Some(f) = ext.and_then(|e| e.parse::<tutti_shared::job::AudioFormat>().ok()) {
        return f.content_type();
    }
    match ext {
        Some("jsonl") => "application/x-ndjson",
        Some("csv") => "text/csv",
        _ => "application/octet-stream",
    }
}

pub(crate) async fn get(
    State(studio): State<Studio>,
    Path(key): Path<String>,
    Query(q): Query<BlobQuery>,
    headers: HeaderMap,
) -> Response {
    let urls = &studio.blobs;
    if !urls.verify(&key, &q) {
        return (StatusCode::FORBIDDEN, "this link is invalid or has expired").into_response();
    }
    let body = match urls.blobs.get(&key).await {
        Ok(Some(b)) => b,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such object").into_response(),
        Err(e) => {
            tracing::warn!(key, error = %e, "reading a blob for the studio");
            return (StatusCode::SERVICE_UNAVAILABLE, "the blob store failed").into_response();
        }
    };
    let len = body.len() as u64;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let mut response = match parse_range(range, len) {
        Ok(None) => (StatusCode::OK, body).into_response(),
        Ok(Some((start, end))) => {
            let part = body.slice(start as usize..=end as usize);
            let mut r = (StatusCode::PARTIAL_CONTENT, part).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        Err(()) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&key)),
    );
    if let Some(name) = q.download {
        let safe: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 100), Err(()));
        assert_eq!(parse_range(Some("items=0-3"), 100), Ok(None));
    }
}
