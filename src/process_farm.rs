//! A farm of `tutti` child processes: a coordinator and workers on real Postgres, RabbitMQ and
//! S3 (or one `tutti dev` on its own folder), each farm with its own database, queue prefix and
//! tiny model pack, so that farms run side by side on one set of servers. The one place where
//! such a farm's processes are assembled: the test harness (`tests/common`) and
//! `tutti bench farm` both start theirs here, as `tutti dev` and embedded `generate` share
//! `embedded::start` in process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tutti_shared::blob::S3Settings;
use uuid::Uuid;

/// The servers a farm runs on.
#[derive(Debug, Clone)]
pub struct Servers {
    /// A Postgres server without a database (`postgres://user@host:port`): the farm makes its own.
    pub pg: String,
    pub amqp: String,
    /// Where outputs go; `None` leaves the processes' own S3 settings (or their absence).
    pub s3: Option<S3Settings>,
}

/// What a farm is called on the servers, its folder (models, logs, the embedded data) and how
/// its processes start.
#[derive(Debug)]
pub struct ProcessFarm {
    /// The `tutti` binary the processes run.
    pub exe: PathBuf,
    pub servers: Servers,
    pub dir: tempfile::TempDir,
    /// The farm's database on `servers.pg`.
    pub db: String,
    /// The farm's queue prefix on `servers.amqp`.
    pub prefix: String,
    /// Extra environment of every process, set last (it overrides the farm's own).
    pub env: Vec<(String, String)>,
    /// Each process's stderr goes to `<dir>/<name>.log` instead of the parent's.
    pub log_files: bool,
}

impl ProcessFarm {
    /// A new farm named `<kind>-<12 hex digits>` (database `tutti_<kind>_<hex>`), with a tiny
    /// random-weight pack as `models/tiny`. Nothing is started yet.
    pub fn new(exe: PathBuf, servers: Servers, kind: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tutti-{kind}-"))
            .tempdir()?;
        tutti_model::tiny::write_tiny_pack(&dir.path().join("models").join("tiny"), 7)?;
        let id = Uuid::new_v4().simple().to_string();
        Ok(Self {
            exe,
            servers,
            dir,
            db: format!("tutti_{kind}_{}", &id[..12]),
            prefix: format!("{kind}-{}", &id[..12]),
            env: Vec::new(),
            log_files: false,
        })
    }

    pub fn db_url(&self) -> String {
        format!("{}/{}", self.servers.pg.trim_end_matches('/'), self.db)
    }

    pub fn models_dir(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// Where an embedded farm (`tutti dev`) keeps its SQLite file and blobs.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// `tutti SUB` with the farm's servers, names and models; its log is `<name>.log`.
    pub fn command(&self, sub: &str, name: &str) -> std::io::Result<Command> {
        let mut c = Command::new(&self.exe);
        c.arg(sub)
            .env(
                "RUST_LOG",
                std::env::var("TUTTI_FARM_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("TUTTI_DATABASE_URL", self.db_url())
            .env("TUTTI_AMQP_URL", &self.servers.amqp)
            .env("TUTTI_QUEUE_PREFIX", &self.prefix)
            .env("TUTTI_MODELS_DIR", self.models_dir())
            .stdin(Stdio::null());
        if let Some(s3) = &self.servers.s3 {
            c.env("TUTTI_S3_ENDPOINT", s3.endpoint.clone().unwrap_or_default())
                .env("TUTTI_S3_BUCKET", &s3.bucket)
                .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.log_files {
            c.stderr(std::fs::File::create(self.log_path(name))?);
        }
        Ok(c)
    }

    /// `tutti coordinator` serving gRPC on `listen`.
    pub fn coordinator(&self, listen: SocketAddr) -> std::io::Result<Command> {
        let mut c = self.command("coordinator", "coordinator")?;
        c.env("TUTTI_LISTEN", listen.to_string());
        Ok(c)
    }

    /// `tutti dev` (the embedded farm) serving gRPC on `listen` with `workers` workers on CPU.
    pub fn dev(&self, listen: SocketAddr, workers: usize) -> std::io::Result<Command> {
        let mut c = self.command("dev", "dev")?;
        c.env("TUTTI_LISTEN", listen.to_string())
            .env("TUTTI_DATA_DIR", self.data_dir())
            .env("TUTTI_WORKERS", workers.to_string())
            .env("TUTTI_DEVICE", "cpu");
        Ok(c)
    }

    /// `tutti worker` named `name`, on CPU.
    pub fn worker(&self, name: &str) -> std::io::Result<Command> {
        let mut c = self.command("worker", name)?;
        c.env("TUTTI_WORKER_NAME", name).env("TUTTI_DEVICE", "cpu");
        Ok(c)
    }

    /// Deletes the farm's queues and exchanges (see [`remove_topology`]).
    pub fn remove_topology(&self, workers: &[String]) {
        remove_topology(&self.servers.amqp, &self.prefix, workers);
    }

    /// Drops the farm's database (see [`drop_database`]).
    pub fn drop_database(&self) {
        drop_database(&self.servers.pg, &self.db);
    }

    /// The farm's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Deletes the queues and exchanges under `prefix` (the named workers' own queues too), so
/// the broker does not collect quorum queues run after run. Blocking: it runs on a thread and
/// runtime of its own, because `drop` cannot await.
pub fn remove_topology(amqp: &str, prefix: &str, workers: &[String]) {
    let (amqp, prefix, workers) = (amqp.to_string(), prefix.to_string(), workers.to_vec());
    block_on_thread(async move {
        let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
            .await
            .ok()?;
        let own = workers
            .iter()
            .flat_map(|w| ["denoise", "vocode"].map(|k| format!("worker.{w}.{k}")));
        let shared = ["denoise", "vocode", "results", "dead"].map(String::from);
        for q in shared.into_iter().chain(own) {
            let ch = conn.create_channel().await.ok()?;
            let _ = ch
                .queue_delete(&format!("{prefix}.{q}"), Default::default())
                .await;
        }
        for x in ["dlx", "control"] {
            let ch = conn.create_channel().await.ok()?;
            let _ = ch
                .exchange_delete(&format!("{prefix}.{x}"), Default::default())
                .await;
        }
        let _ = conn.close(200, "farm removed").await;
        Some(())
    });
}

/// Drops database `db` of the Postgres server `pg` (blocking, like [`remove_topology`]).
pub fn drop_database(pg: &str, db: &str) {
    use sqlx::Connection;
    let admin = format!("{}/postgres", pg.trim_end_matches('/'));
    let name = db.to_string();
    block_on_thread(async move {
        let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
        // The names are ours (`tutti_<kind>_` and hex digits), so quoting is enough.
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        Some(())
    });
}

/// Runs a clean-up on a thread with its own runtime, for at most 10 s; its failures are
/// ignored (the servers expire what is left).
fn block_on_thread<F>(work: F)
where
    F: std::future::Future<Output = Option<()>> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
        });
    });
    let _ = handle.join();
}
