//! Blob storage for checkpoints, outputs and model packs: S3 (any S3-compatible server) or a
//! local folder with the same key layout.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("s3 {op} {key}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
        /// The store could not be reached or answered 5xx/429: the same call may pass later.
        transient: bool,
    },
    #[error("file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid key {0:?}: keys are relative paths without '..'")]
    InvalidKey(String),
}

impl BlobError {
    /// Whether waiting may help: the store was unreachable, timed out or was overloaded (an
    /// outage), rather than refusing this call (a bad key, a denied access, a full disk).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BlobError::S3 {
                transient: true,
                ..
            }
        )
    }
}

/// Keys are relative paths of plain segments (`outputs/t/j/0.wav`): no empty key, no leading
/// `/`, no `.`/`..` segments. Both stores refuse the same keys, so a key that works on a laptop
/// works on S3 and cannot escape the local folder.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && std::path::Path::new(key)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        && !key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(key.to_string()))
    }
}

/// An object being read in pieces.
pub type BlobReader = Box<dyn tokio::io::AsyncBufRead + Send + Unpin>;

/// Where a key can be fetched from: a presigned URL and when it stops working.
#[derive(Debug, Clone)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: std::time::SystemTime,
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes (or overwrites) an object.
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), BlobError>;
    /// Reads an object; `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError>;
    /// Opens an object to read it in pieces (a large manifest in flat memory); `None` when it
    /// does not exist. By default it is read whole.
    async fn open(&self, key: &str) -> Result<Option<BlobReader>, BlobError> {
        Ok(self
            .get(key)
            .await?
            .map(|b| Box::new(std::io::Cursor::new(b)) as BlobReader))
    }
    /// The object's URI (`s3://bucket/key` or `file:///path`).
    fn uri(&self, key: &str) -> String;
    /// A URL that fetches the object without credentials until it expires.
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<SignedUrl, BlobError>;
    /// Deletes the objects; one that does not exist is no error.
    async fn delete(&self, keys: &[String]) -> Result<(), BlobError>;
    /// Keys that start with `prefix`, in key order, at most `limit` of them.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, BlobError>;
}

/// Settings of an S3-compatible store.
#[derive(Clone)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    pub path_style: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .finish()
    }
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Store {
    pub fn new(s: &S3Settings) -> Self {
        let creds = Credentials::new(
            s.access_key_id.clone(),
            s.secret_access_key.clone(),
            None,
            None,
            "tutti-config",
        );
        let mut conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .credentials_provider(creds)
            .force_path_style(s.path_style)
            // Without these a store that stops answering (a paused server, a dropped route)
            // hangs a call for good; with them it is a transient error that callers wait out.
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(ep) = &s.endpoint {
            conf = conf.endpoint_url(ep);
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(conf.build()),
            bucket: s.bucket.clone(),
        }
    }

    /// Creates the bucket when it does not exist (development servers start empty).
    pub async fn ensure_bucket(&self) -> Result<(), BlobError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let msg = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
                if msg.contains("BucketAlreadyOwnedByYou") || msg.contains("BucketAlreadyExists") {
                    Ok(())
                } else {
                    metrics::counter!(crate::metrics::names::S3_ERRORS, "op" => "create_bucket")
                        .increment(1);
                    Err(BlobError::S3 {
                        op: "create_bucket",
                        key: self.bucket.clone(),
                        message: msg,
                        transient: false,
                    })
                }
            }
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// Every S3 failure passes here, so `tutti_s3_errors_total` counts them all.
fn s3_err<E: std::error::Error>(op: &'static str, key: &str, e: E, transient: bool) -> BlobError {
    metrics::counter!(crate::metrics::names::S3_ERRORS, "op" => op).increment(1);
    BlobError::S3 {
        op,
        key: key.to_string(),
        message: format!("{}", aws_sdk_s3::error::DisplayErrorContext(e)),
        transient,
    }
}

/// A failed S3 call, transient when the request never got a proper answer (no connection, a
/// timeout, a broken response) or the server said it is failing or overloaded.
fn sdk_err<E>(op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> BlobError
where
    E: std::error::Error + 'static,
{
    let transient = match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status >= 500 || status == 429
        }
        _ => false,
    };
    s3_err(op, key, e, transient)
}

#[async_trait]
impl BlobStore for S3Store {
    #[tracing::instrument(name = "s3.put", skip_all, fields(key = %key, bytes = body.len()))]
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), BlobError> {
        check_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_err("put", key, e))?;
        Ok(())
    }

    #[tracing::instrument(name = "s3.get", skip_all, fields(key = %key))]
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        check_key(key)?;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let data = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| s3_err("get", key, e, true))?;
                Ok(Some(data.into_bytes()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_err("get", key, e)),
        }
    }

    async fn open(&self, key: &str) -> Result<Option<BlobReader>, BlobError> {
        check_key(key)?;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(Box::new(Box::pin(out.body.into_async_read())))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_err("get", key, e)),
        }
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<SignedUrl, BlobError> {
        check_key(key)?;
        let cfg =
            PresigningConfig::expires_in(ttl).map_err(|e| s3_err("presign", key, e, false))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| sdk_err("presign", key, e))?;
        Ok(SignedUrl {
            url: req.uri().to_string(),
            expires_at: std::time::SystemTime::now() + ttl,
        })
    }

    /// One DeleteObject per key, 16 at a time (S3 deletes are idempotent: a missing key is
    /// success). Not DeleteObjects: S3-compatible servers differ in the checksums it needs.
    async fn delete(&self, keys: &[String]) -> Result<(), BlobError> {
        for some in keys.chunks(16) {
            let deletes: Vec<_> = some.iter().cloned().map(|k| self.delete_one(k)).collect();
            for r in futures::future::join_all(deletes).await {
                r?;
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, BlobError> {
        let mut keys = Vec::new();
        let mut token = None;
        while keys.len() < limit {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys((limit - keys.len()).min(1000) as i32)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| sdk_err("list", prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        keys.truncate(limit);
        Ok(keys)
    }
}

impl S3Store {
    async fn delete_one(&self, key: String) -> Result<(), BlobError> {
        check_key(&key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| sdk_err("delete", &key, e))?;
        Ok(())
    }
}

/// A local folder with the S3 key layout; `file://` URLs stand in for presigned ones.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn file_err(path: &std::path::Path, source: std::io::Error) -> BlobError {
    BlobError::File {
        path: path.display().to_string(),
        source,
    }
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, _content_type: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| file_err(dir, e))?;
        }
        // Write then rename, so a reader never sees half an object.
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
        tokio::fs::write(&tmp, &body)
            .await
            .map_err(|e| file_err(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| file_err(&path, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err(&path, e)),
        }
    }

    async fn open(&self, key: &str) -> Result<Option<BlobReader>, BlobError> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(Box::new(tokio::io::BufReader::new(f)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err(&path, e)),
        }
    }

    fn uri(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<SignedUrl, BlobError> {
        let path = self.path(key)?;
        Ok(SignedUrl {
            url: format!("file://{}", path.display()),
            expires_at: std::time::SystemTime::now() + ttl,
        })
    }

    async fn delete(&self, keys: &[String]) -> Result<(), BlobError> {
        for key in keys {
            let path = self.path(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    // The folder goes with its last object (`checkpoints/<job>/`); a folder
                    // with others left in it stays, which is the error ignored here.
                    if let Some(dir) = path.parent().filter(|d| *d != self.root) {
                        let _ = tokio::fs::remove_dir(dir).await;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_err(&path, e)),
            }
        }
        Ok(())
    }
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, BlobError> {
        // Walk the folder the prefix names (or its parent for a partial last segment).
        let dir = match prefix.rsplit_once('/') {
            Some((dir, _)) => self.root.join(dir),
            None => self.root.clone(),
        };
        let mut keys = Vec::new();
        let mut pending = vec![dir];
        while let Some(dir) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(file_err(&dir, e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(|e| file_err(&dir, e))? {
                let path = entry.path();
                let kind = entry.file_type().await.map_err(|e| file_err(&path, e))?;
                if kind.is_dir() {
                    pending.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                // Half-written objects (`put` writes a temporary file first) are not objects.
                if key.starts_with(prefix) && !key.contains(".tmp-") {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        keys.truncate(limit);
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    //! One conformance suite for both stores (S3: the local SeaweedFS of `scripts/setup`,
    //! `TUTTI_TEST_S3`, bucket `tutti-test`; each run under its own key prefix).

    use std::time::{Duration, SystemTime};

    use bytes::Bytes;

    use super::{BlobError, BlobStore, LocalStore, S3Settings, S3Store};

    async fn round_trips_overwrites_and_misses(s: &dyn BlobStore, prefix: &str) {
        let key = format!("{prefix}/outputs/t/j/0.wav");
        assert!(s.get(&key).await.expect("get").is_none());
        s.put(&key, Bytes::from_static(b"first"), "audio/wav")
            .await
            .expect("put");
        assert_eq!(
            s.get(&key).await.expect("get").as_deref(),
            Some(&b"first"[..])
        );
        s.put(&key, Bytes::from_static(b"second"), "audio/wav")
            .await
            .expect("overwrite");
        assert_eq!(
            s.get(&key).await.expect("get").as_deref(),
            Some(&b"second"[..])
        );
        let uri = s.uri(&key);
        assert!(
            uri.ends_with(&key) && (uri.starts_with("s3://") || uri.starts_with("file://")),
            "{uri}"
        );
        let signed = s
            .presign_get(&key, Duration::from_secs(60))
            .await
            .expect("presign");
        assert!(signed.url.contains(&key), "{}", signed.url);
        let left = signed
            .expires_at
            .duration_since(SystemTime::now())
            .expect("expires in the future");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
    }

    async fn opens_objects_to_read_in_pieces(s: &dyn BlobStore, prefix: &str) {
        use tokio::io::AsyncBufReadExt;
        let key = format!("{prefix}/manifests/m.jsonl");
        assert!(s.open(&key).await.expect("open").is_none());
        s.put(&key, Bytes::from_static(b"one\ntwo\n"), "text/plain")
            .await
            .expect("put");
        let mut lines = s.open(&key).await.expect("open").expect("object").lines();
        let mut read = Vec::new();
        while let Some(l) = lines.next_line().await.expect("line") {
            read.push(l);
        }
        assert_eq!(read, ["one", "two"]);
    }

    async fn deletes_objects_and_ignores_missing_ones(s: &dyn BlobStore, prefix: &str) {
        let keys: Vec<String> = (0..3)
            .map(|c| format!("{prefix}/checkpoints/j/{c}"))
            .collect();
        let kept = format!("{prefix}/outputs/t/j/0.wav");
        for key in keys.iter().chain([&kept]) {
            s.put(key, Bytes::from_static(b"x"), "application/octet-stream")
                .await
                .expect("put");
        }
        let mut doomed = keys.clone();
        doomed.push(format!("{prefix}/checkpoints/j/9")); // never written
        s.delete(&doomed).await.expect("delete");
        for key in &keys {
            assert!(s.get(key).await.expect("get").is_none(), "{key} is left");
        }
        assert!(s.get(&kept).await.expect("get").is_some());
        s.delete(&keys).await.expect("deleting again is no error");
    }

    async fn refuses_keys_outside_the_layout(s: &dyn BlobStore, _prefix: &str) {
        for key in ["", "/abs", "a/../b", "../up", "a//b", "./a", "a/"] {
            let put = s.put(key, Bytes::from_static(b"x"), "text/plain").await;
            assert!(
                matches!(put, Err(BlobError::InvalidKey(_))),
                "{key:?}: {put:?}"
            );
            assert!(
                matches!(s.get(key).await, Err(BlobError::InvalidKey(_))),
                "{key:?}"
            );
        }
    }

    async fn lists_keys_under_a_prefix(s: &dyn BlobStore, prefix: &str) {
        let keys: Vec<String> = [
            "checkpoints/a/0",
            "checkpoints/a/1",
            "checkpoints/b/0",
            "outputs/t/a/0.wav",
        ]
        .iter()
        .map(|k| format!("{prefix}/{k}"))
        .collect();
        for key in &keys {
            s.put(key, Bytes::from_static(b"x"), "application/octet-stream")
                .await
                .expect("put");
        }
        let listed = s
            .list(&format!("{prefix}/checkpoints/"), 100)
            .await
            .expect("list");
        assert_eq!(listed, keys[..3]);
        assert_eq!(
            s.list(&format!("{prefix}/checkpoints/a"), 100)
                .await
                .expect("list"),
            keys[..2]
        );
        assert_eq!(
            s.list(&format!("{prefix}/checkpoints/"), 2)
                .await
                .expect("list")
                .len(),
            2
        );
        assert!(s
            .list(&format!("{prefix}/none/"), 10)
            .await
            .expect("list")
            .is_empty());
        s.delete(&keys).await.expect("clean up");
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_transient_error_and_a_bad_key_is_not() {
        let s = S3Store::new(&S3Settings {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            bucket: "b".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            path_style: true,
        });
        let e = s.get("a/b").await.expect_err("nothing listens on port 9");
        assert!(e.is_transient(), "{e}");
        assert!(!s.get("../x").await.expect_err("bad key").is_transient());
    }

    fn prefix() -> String {
        format!("conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
    }

    async fn s3() -> S3Store {
        let s = S3Store::new(&S3Settings {
            endpoint: Some(
                std::env::var("TUTTI_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8333".into()),
            ),
            region: "us-east-1".into(),
            bucket: std::env::var("TUTTI_TEST_BUCKET").unwrap_or_else(|_| "tutti-test".into()),
            access_key_id: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "tutti".into()),
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY")
                .unwrap_or_else(|_| "tutti-secret".into()),
            path_style: true,
        });
        s.ensure_bucket().await.expect("bucket");
        s
    }

    macro_rules! blob_store_suite {
        ($($name:ident),+ $(,)?) => {
            mod s3_suite {
                $(#[tokio::test] async fn $name() {
                    super::$name(&super::s3().await, &super::prefix()).await;
                })+
            }
            mod local_suite {
                $(#[tokio::test] async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    super::$name(&super::LocalStore::new(dir.path()), &super::prefix()).await;
                })+
            }
        };
    }

    blob_store_suite!(
        round_trips_overwrites_and_misses,
        opens_objects_to_read_in_pieces,
        refuses_keys_outside_the_layout,
        deletes_objects_and_ignores_missing_ones,
        lists_keys_under_a_prefix,
    );
}
