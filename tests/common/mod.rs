//! A test farm on either backend, as child processes of the `tutti` binary so tests can
//! SIGKILL and restart them:
//! - distributed: real Postgres, RabbitMQ and S3 (see `scripts/setup`), a `tutti coordinator`
//!   and `tutti worker` processes; each farm has its own database and queue prefix, so tests
//!   run side by side on one broker without taking each other's work;
//! - embedded: one `tutti dev` process (SQLite file, in-process queue and workers, a local
//!   blob folder) in the farm's temp folder.
//!
//! Both use the farm's own tiny random model pack. `both_backends!(test_fn)` runs one test
//! body on each.

#![allow(dead_code, unreachable_pub, unused_macros)]

pub mod browser;
pub mod packs;

/// Runs `async fn $body(Backend)` as two tests, `$body::distributed` and `$body::embedded`.
macro_rules! both_backends {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            #[tokio::test]
            async fn distributed() {
                super::$body(super::common::Backend::Distributed).await
            }
            #[tokio::test]
            async fn embedded() {
                super::$body(super::common::Backend::Embedded).await
            }
        }
    )+};
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tutti::process_farm::{ProcessFarm, Servers};
use tutti_proto::v1 as pb;
use tutti_proto::v1::generation_client::GenerationClient;
use tutti_shared::blob::{S3Settings, S3Store};
use uuid::Uuid;

pub fn pg_url(db: &str) -> String {
    let base = std::env::var("TUTTI_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    format!("{base}/{db}")
}

pub fn amqp_url() -> String {
    std::env::var("TUTTI_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn s3_settings() -> S3Settings {
    S3Settings {
        endpoint: Some(
            std::env::var("TUTTI_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8333".into()),
        ),
        region: "us-east-1".into(),
        bucket: std::env::var("TUTTI_TEST_BUCKET").unwrap_or_else(|_| "tutti-test".into()),
        access_key_id: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "tutti".into()),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY")
            .unwrap_or_else(|_| "tutti-secret".into()),
        path_style: true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Postgres, RabbitMQ, S3; coordinator and worker processes.
    Distributed,
    /// `tutti dev`: SQLite, in-process queue and workers, a local folder.
    Embedded,
}

pub struct FarmOptions {
    pub workers: usize,
    pub chunk_steps: u32,
    pub retry_backoff: &'static str,
    pub backend: Backend,
    /// Extra environment of every farm process (set last: it overrides the farm's own).
    pub env: Vec<(String, String)>,
    /// Each process's stderr goes to `<farm dir>/<name>.log` (see `Farm::log`) instead of the
    /// test's.
    pub log_files: bool,
    /// Start the coordinator with `TUTTI_AUTH=required` (clients then need `client_as`).
    pub auth: bool,
    /// Serve gRPC over TLS (the farm's own clients trust `ca` and present `client`).
    pub tls: Option<Tls>,
    /// Extra environment of the coordinator (scheduler knobs and the like).
    pub coordinator_env: Vec<(&'static str, String)>,
    /// Writes more model packs into the farm's models folder before anything starts (the
    /// tiny mel pack is always there).
    pub packs: Option<fn(&Path)>,
}

/// PEM files for a TLS farm.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA clients trust.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, the server requires client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// Certificate and key the farm's own clients present.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Default for FarmOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            chunk_steps: 0,
            retry_backoff: "200ms",
            backend: Backend::Distributed,
            env: Vec::new(),
            log_files: false,
            auth: false,
            tls: None,
            coordinator_env: Vec::new(),
            packs: None,
        }
    }
}

/// Adds `authorization: Bearer <key>` to every call when it holds a key.
#[derive(Clone)]
pub struct WithKey(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for WithKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl WithKey {
    /// `authorization: Bearer <key>` for any service's client.
    pub fn bearer(key: Option<&str>) -> Self {
        WithKey(key.map(|k| format!("Bearer {k}").parse().expect("header value")))
    }
}

pub type KeyedClient = GenerationClient<InterceptedService<Channel, WithKey>>;

impl FarmOptions {
    pub fn on(backend: Backend) -> Self {
        Self {
            backend,
            ..Default::default()
        }
    }
}

/// The job store a test reads behind the farm's back.
pub enum Db {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

pub struct Farm {
    /// Names, folder and process commands (shared with `tutti bench farm`).
    pub procs: ProcessFarm,
    pub addr: SocketAddr,
    /// The distributed coordinator's `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: SocketAddr,
    /// tutti studio (the web page) of the coordinator or `tutti dev`.
    pub studio_addr: SocketAddr,
    /// The coordinator, or the `tutti dev` process of an embedded farm.
    pub coordinator: Option<Child>,
    pub workers: Vec<Child>,
    pub opts: FarmOptions,
    pub store: Db,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tutti")
}

/// A port nothing listens on, never the same twice in this test process: the OS can hand a
/// port released here to a farm of a parallel test before the first farm binds it, and the two
/// farms' tests then talk to one server (seen as "connection reset" once the other test ended).
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = l.local_addr().expect("local addr");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(addr.port()) {
            return addr;
        }
    }
}

impl Farm {
    pub async fn start(opts: FarmOptions) -> Farm {
        let servers = Servers {
            pg: pg_url(""),
            amqp: amqp_url(),
            s3: Some(s3_settings()),
        };
        let mut procs = ProcessFarm::new(bin().into(), servers, "test").expect("a farm folder");
        procs.log_files = opts.log_files;
        if let Some(write) = opts.packs {
            write(&procs.models_dir());
        }
        let store = match opts.backend {
            Backend::Distributed => Db::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .connect_lazy(&procs.db_url())
                    .expect("pool"),
            ),
            Backend::Embedded => Db::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_lazy_with(
                        sqlx::sqlite::SqliteConnectOptions::new()
                            .filename(procs.data_dir().join("jobs.db"))
                            .busy_timeout(Duration::from_secs(10)),
                    ),
            ),
        };
        let mut farm = Farm {
            procs,
            addr: free_addr(),
            metrics_addr: free_addr(),
            studio_addr: free_addr(),
            coordinator: None,
            workers: Vec::new(),
            opts,
            store,
        };
        farm.start_coordinator().await;
        if farm.opts.backend == Backend::Distributed {
            for _ in 0..farm.opts.workers {
                farm.add_worker(&[]);
            }
            farm.wait_for_consumers(farm.opts.workers as u32).await;
        }
        farm
    }

    /// The Postgres pool of a distributed farm (tests of the farm's own wiring).
    pub fn pg(&self) -> &sqlx::PgPool {
        match &self.store {
            Db::Pg(p) => p,
            Db::Sqlite(_) => panic!("this test runs on the distributed backend only"),
        }
    }

    /// Jobs stored for one tenant.
    pub async fn tenant_job_count(&self, tenant: &str) -> i64 {
        let q = "SELECT count(*) FROM jobs WHERE tenant = $1";
        match &self.store {
            Db::Pg(p) => sqlx::query_scalar(q).bind(tenant).fetch_one(p).await,
            Db::Sqlite(p) => sqlx::query_scalar(q).bind(tenant).fetch_one(p).await,
        }
        .expect("count jobs")
    }

    pub async fn job_count(&self) -> i64 {
        let q = "SELECT count(*) FROM jobs";
        match &self.store {
            Db::Pg(p) => sqlx::query_scalar(q).fetch_one(p).await,
            Db::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await,
        }
        .expect("count jobs")
    }

    /// The bytes of an output, from S3 or the embedded farm's folder.
    pub async fn fetch(&self, uri_or_url: &str) -> Vec<u8> {
        if let Some(path) = uri_or_url.strip_prefix("file://") {
            return std::fs::read(path).expect("read a local output");
        }
        if let Some(rest) = uri_or_url.strip_prefix("s3://") {
            let key = rest.split_once('/').expect("s3 key").1;
            use tutti_shared::blob::BlobStore;
            return self
                .s3()
                .get(key)
                .await
                .expect("s3 get")
                .expect("object exists")
                .to_vec();
        }
        reqwest::get(uri_or_url)
            .await
            .expect("download")
            .bytes()
            .await
            .expect("body")
            .to_vec()
    }

    /// Where an output key lives on this farm's blob store.
    pub fn uri(&self, key: &str) -> String {
        match self.opts.backend {
            Backend::Distributed => format!("s3://{}/{key}", s3_settings().bucket),
            Backend::Embedded => format!(
                "file://{}",
                self.procs.data_dir().join("blobs").join(key).display()
            ),
        }
    }

    pub fn models_dir(&self) -> PathBuf {
        self.procs.models_dir()
    }

    /// The farm's folder (models, logs, an embedded farm's data).
    pub fn dir(&self) -> &Path {
        self.procs.path()
    }

    /// The farm's queue prefix.
    pub fn prefix(&self) -> &str {
        &self.procs.prefix
    }

    /// The farm's database name.
    pub fn db(&self) -> &str {
        &self.procs.db
    }

    /// The stderr of a farm process started with `log_files`: "coordinator", "dev" or "w<N>".
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.procs.log_path(name)).unwrap_or_default()
    }

    /// A `tutti SUB` process of this farm, its stderr in `<name>.log` with `log_files`.
    pub fn command(&self, sub: &str) -> Command {
        self.with_test_env(self.procs.command(sub, sub))
    }

    /// The test's extra environment, set last (tests change it between restarts).
    fn with_test_env(&self, c: std::io::Result<Command>) -> Command {
        let mut c = c.expect("a farm process's log file");
        c.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub async fn start_coordinator(&mut self) {
        let mut cmd = match self.opts.backend {
            Backend::Distributed => {
                let mut c = self.with_test_env(self.procs.coordinator(self.addr));
                c.env("TUTTI_METRICS_LISTEN", self.metrics_addr.to_string());
                c
            }
            Backend::Embedded => self.with_test_env(self.procs.dev(self.addr, self.opts.workers)),
        };
        if self.opts.auth {
            cmd.env("TUTTI_AUTH", "required");
        }
        if let Some(tls) = &self.opts.tls {
            cmd.env("TUTTI_TLS_CERT", &tls.cert)
                .env("TUTTI_TLS_KEY", &tls.key);
            if let Some(ca) = &tls.client_ca {
                cmd.env("TUTTI_TLS_CLIENT_CA", ca);
            }
        }
        let child = cmd
            .env("TUTTI_STUDIO_LISTEN", self.studio_addr.to_string())
            .env("TUTTI_CHUNK_STEPS", self.opts.chunk_steps.to_string())
            .env("TUTTI_RETRY_BACKOFF", self.opts.retry_backoff)
            .envs(self.opts.coordinator_env.iter().map(|(k, v)| (*k, v)))
            .spawn()
            .expect("spawn coordinator");
        self.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The gRPC port is bound before the store is migrated, the studio's after: wait
            // for both.
            if self.channel().await.is_ok()
                && tokio::net::TcpStream::connect(self.studio_addr)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "coordinator did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The studio's page.
    pub fn studio_url(&self) -> String {
        format!("http://{}/", self.studio_addr)
    }

    /// SIGKILLs the coordinator (no drain, no goodbye).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn add_worker(&mut self, extra: &[&str]) -> usize {
        assert_eq!(
            self.opts.backend,
            Backend::Distributed,
            "worker processes belong to the distributed backend"
        );
        let n = self.workers.len();
        let child = self
            .with_test_env(self.procs.worker(&format!("w{n}")))
            .args(extra)
            .spawn()
            .expect("spawn worker");
        self.workers.push(child);
        n
    }

    pub fn kill_worker(&mut self, i: usize) {
        let _ = self.workers[i].kill();
        let _ = self.workers[i].wait();
    }

    /// Sends SIGTERM to a worker and waits for it to exit; returns its exit status.
    pub fn terminate_worker(&mut self, i: usize) -> std::process::ExitStatus {
        let pid = self.workers[i].id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.workers[i].wait().expect("wait worker")
    }

    /// Waits until the denoise queue has `n` consumers (workers loaded and consuming).
    pub async fn wait_for_consumers(&self, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.consumers(&format!("{}.denoise", self.prefix())).await >= n {
                return;
            }
            assert!(Instant::now() < deadline, "workers did not start consuming");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn queue_counts(&self, queue: &str) -> Option<(u32, u32)> {
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .ok()?;
        let ch = conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue,
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = conn.close(200, "bye").await;
        Some((q.message_count(), q.consumer_count()))
    }

    pub async fn consumers(&self, queue: &str) -> u32 {
        self.queue_counts(queue).await.map(|c| c.1).unwrap_or(0)
    }

    /// A channel to the coordinator, over TLS when the farm serves it.
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let Some(tls) = &self.opts.tls else {
            return Channel::from_shared(format!("http://{}", self.addr))
                .expect("address")
                .connect()
                .await;
        };
        let pem = |p: &PathBuf| std::fs::read(p).expect("read PEM");
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(&tls.ca)));
        if let Some((cert, key)) = &tls.client {
            cfg = cfg.identity(Identity::from_pem(pem(cert), pem(key)));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("address")
            .tls_config(cfg)?
            .connect()
            .await
    }

    /// A client that sends `key` (or no key) with every call.
    pub async fn client_as(&self, key: Option<&str>) -> KeyedClient {
        let bearer = key.map(|k| format!("Bearer {k}").parse().expect("header value"));
        GenerationClient::with_interceptor(
            self.channel().await.expect("connect to coordinator"),
            WithKey(bearer),
        )
    }

    /// Runs an operator command (`tenant ...`, `key ...`) against the farm's store; its stdout.
    pub fn operator(&self, args: &[&str]) -> String {
        let mut c = self.command(args[0]);
        c.args(&args[1..]);
        if self.opts.backend == Backend::Embedded {
            c.arg("--sqlite").arg(self.procs.data_dir().join("jobs.db"));
        }
        let out = c.output().expect("run tutti");
        assert!(
            out.status.success(),
            "tutti {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// A new API key of `tenant`, as `tutti key create` prints it.
    pub fn create_key(&self, tenant: &str, admin: bool) -> String {
        let mut args = vec!["key", "create", tenant];
        if admin {
            args.push("--admin");
        }
        self.operator(&args)
    }

    pub async fn client(&self) -> GenerationClient<Channel> {
        GenerationClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to coordinator")
    }

    pub fn s3(&self) -> S3Store {
        S3Store::new(&s3_settings())
    }

    /// Polls GetJob until the job ends (tolerating a coordinator restart); panics after `limit`.
    pub async fn wait_job(&self, id: &str, limit: Duration) -> pb::Job {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut c) = GenerationClient::connect(format!("http://{}", self.addr)).await {
                if let Ok(r) = c.get_job(pb::GetJobRequest { id: id.into() }).await {
                    let job = r.into_inner();
                    if matches!(
                        pb::JobState::try_from(job.state),
                        Ok(pb::JobState::Succeeded
                            | pb::JobState::Failed
                            | pb::JobState::Cancelled)
                    ) {
                        return job;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not finish in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the job has done at least `steps` steps.
    pub async fn wait_steps(&self, id: &str, steps: u32, limit: Duration) -> pb::Job {
        let deadline = Instant::now() + limit;
        let mut c = self.client().await;
        loop {
            let job = c
                .get_job(pb::GetJobRequest { id: id.into() })
                .await
                .expect("get job")
                .into_inner();
            if job.steps_done >= steps {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not reach step {steps}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (kind, chunk, attempt, detail) of a job's history, oldest first.
    pub async fn events(
        &self,
        id: &str,
    ) -> Vec<(String, Option<i32>, Option<i32>, serde_json::Value)> {
        let id: Uuid = id.parse().expect("uuid");
        let q = "SELECT kind, chunk, attempt, detail FROM job_events WHERE job_id = $1 ORDER BY id";
        match &self.store {
            Db::Pg(p) => sqlx::query_as(q)
                .bind(id)
                .fetch_all(p)
                .await
                .expect("events"),
            Db::Sqlite(p) => {
                let rows: Vec<(String, Option<i32>, Option<i32>, String)> = sqlx::query_as(q)
                    .bind(id.to_string())
                    .fetch_all(p)
                    .await
                    .expect("events");
                rows.into_iter()
                    .map(|(k, c, a, d)| (k, c, a, serde_json::from_str(&d).expect("detail")))
                    .collect()
            }
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.kill_coordinator();
        if self.opts.backend == Backend::Distributed {
            remove_topology(self.prefix(), self.workers.len());
        }
    }
}

/// Deletes a test farm's queues and exchanges, its workers' (`w0`..) own queues too.
pub fn remove_topology(prefix: &str, workers: usize) {
    let names: Vec<String> = (0..workers).map(|n| format!("w{n}")).collect();
    tutti::process_farm::remove_topology(&amqp_url(), prefix, &names);
}

pub fn request(prompt: &str) -> pb::SubmitGenerationRequest {
    pb::SubmitGenerationRequest {
        prompt_kind: Some(pb::submit_generation_request::PromptKind::Prompt(
            prompt.into(),
        )),
        duration_seconds: Some(2.0),
        seed: Some(42),
        ..Default::default()
    }
}

pub fn state(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified)
}

/// Polls a job through `c` (a tenant's own key, where `Farm::wait_job` sends none) until it
/// ends, for at most three minutes.
pub async fn wait_ended(c: &mut KeyedClient, id: &str) -> pb::Job {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let job = c
            .get_job(pb::GetJobRequest { id: id.into() })
            .await
            .expect("get job")
            .into_inner();
        if matches!(
            state(&job),
            pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
        ) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A WAV of sines (440 Hz left, 660 Hz right when stereo), `secs` long.
pub fn sine_wav(secs: f32, rate: u32, channels: u16) -> Vec<u8> {
    let n = (secs * rate as f32) as usize;
    let samples: Vec<f32> = (0..n)
        .flat_map(|i| {
            let t = i as f32 / rate as f32;
            let tau = 2.0 * std::f32::consts::PI;
            [(tau * 440.0 * t).sin() * 0.5, (tau * 660.0 * t).sin() * 0.5]
                .into_iter()
                .take(usize::from(channels))
        })
        .collect();
    tutti_shared::audio::encode_wav(&samples, channels, rate).expect("encode")
}
