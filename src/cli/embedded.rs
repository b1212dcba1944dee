//! Embedded mode: the whole farm in this process. SQLite job store, in-process task queue,
//! a local blob folder with the S3 key layout, N workers over the engine, and the gRPC API;
//! `tutti dev` serves it, `tutti generate` without `--server` runs one job through it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tutti_coordinator::config::TlsArgs;
use tutti_coordinator::store::{RetryPolicy, SqliteStore};
use tutti_coordinator::{AuthMode, Backend, Settings};
use tutti_shared::blob::LocalStore;
use tutti_shared::job::TaskKind;
use tutti_shared::metrics::Health;
use tutti_shared::models::ModelRegistry;
use tutti_shared::taskqueue::MemoryQueue;

/// Where embedded workers run and which model packs they load.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EmbeddedArgs {
    /// Folder of model packs (default: ./models, the repository's models/, then
    /// $TUTTI_HOME/models; the first that holds a pack).
    #[arg(long, env = "TUTTI_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// In-process workers, each with its own engine thread (0: the API alone).
    #[arg(long, env = "TUTTI_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub workers: u16,
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, env = "TUTTI_DEVICE", default_value = "auto")]
    pub device: String,
}

/// `tutti dev`: the full gRPC API in one process, with state that survives a restart.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DevConfig {
    /// Address of the gRPC server.
    #[arg(long, env = "TUTTI_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Folder of the SQLite database and the blobs (outputs, checkpoints)
    /// [default: $TUTTI_HOME/dev].
    #[arg(long, env = "TUTTI_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub embedded: EmbeddedArgs,
    /// Model used when a request names none (default: the only pack, or `tutti-mini`).
    #[arg(long, env = "TUTTI_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Denoising steps per chunk (0: the model's default).
    #[arg(long, env = "TUTTI_CHUNK_STEPS", default_value_t = 0)]
    pub chunk_steps: u32,
    /// Attempts per task before its job fails.
    #[arg(long, env = "TUTTI_MAX_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt.
    #[arg(long, env = "TUTTI_RETRY_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,
    /// A dispatched task with no sign of life for this long is dispatched again.
    #[arg(long, env = "TUTTI_TASK_LEASE", default_value = "300s", value_parser = humantime::parse_duration)]
    pub task_lease: Duration,
    /// How long after a job ends its checkpoints are deleted.
    #[arg(long, env = "TUTTI_CHECKPOINT_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub checkpoint_grace: Duration,
    /// Tasks dispatched but unfinished per stage. Small, so that the backlog waits in the
    /// store where priorities apply, not in the queue.
    #[arg(long, env = "TUTTI_MAX_IN_FLIGHT", default_value_t = 8)]
    pub max_in_flight: u32,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz` (off when unset).
    #[arg(long, env = "TUTTI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of tutti studio, the web page (`off`: none).
    #[arg(long, env = "TUTTI_STUDIO_LISTEN", default_value = "127.0.0.1:8080")]
    pub studio_listen: StudioListen,
    /// `required`: API calls need a key (`tutti key create --sqlite DATA_DIR/jobs.db ...`);
    /// `off`: every caller is the local tenant `default`.
    #[arg(long, env = "TUTTI_AUTH", value_enum, default_value = "off")]
    pub auth: AuthMode,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Where `tutti dev` serves the studio: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StudioListen(pub Option<SocketAddr>);

impl std::str::FromStr for StudioListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "" => Ok(StudioListen(None)),
            a => a
                .parse()
                .map(|a| StudioListen(Some(a)))
                .map_err(|e| format!("{a:?} is not an address such as 127.0.0.1:8080 or off: {e}")),
        }
    }
}

pub(crate) fn tutti_home() -> PathBuf {
    std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tutti")))
        .unwrap_or_else(|| PathBuf::from(".tutti"))
}

fn has_pack(dir: &Path) -> bool {
    dir.is_dir() && ModelRegistry::scan(dir).is_ok_and(|r| !r.is_empty())
}

/// The folder of model packs to use, or an error that says how to get one.
pub(crate) fn resolve_models_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let how = "the built-in pack belongs in models/tutti-mini of the repository (or make one \
               with `tutti train ...` then `tutti train pack`); to try the farm without it, \
               write a tiny random-weight pack with `tutti model tiny DIR/tiny` and pass \
               `--models-dir DIR` (it makes noise, not music)";
    if let Some(dir) = flag {
        if !dir.is_dir() {
            bail!("--models-dir {} does not exist; {how}", dir.display());
        }
        ModelRegistry::scan(dir)
            .with_context(|| format!("reading model packs under {}", dir.display()))?;
        if !has_pack(dir) {
            bail!(
                "no model pack (a folder with model.toml) under {}; {how}",
                dir.display()
            );
        }
        return Ok(dir.to_path_buf());
    }
    let candidates = [
        PathBuf::from("models"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        tutti_home().join("models"),
    ];
    if let Some(dir) = candidates.iter().find(|d| has_pack(d)) {
        return Ok(dir.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "no model pack found (looked in {}); {how}",
        tried.join(", ")
    )
}

/// A running embedded farm: the gRPC address, and the task to await after shutdown.
pub(crate) struct Embedded {
    pub addr: SocketAddr,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub workers: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts store, queue, blobs, workers and the API on `listener` (and the studio on `studio`).
pub(crate) async fn start(
    data_dir: &Path,
    args: &EmbeddedArgs,
    settings: Settings,
    health: Health,
    listener: TcpListener,
    studio: Option<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Embedded> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
    let db = data_dir.join("jobs.db");
    let store = SqliteStore::open(&db)
        .await
        .with_context(|| format!("opening the job store {}", db.display()))?;
    let requeued = store.requeue_in_flight().await?;
    if requeued > 0 {
        tracing::info!(
            requeued,
            "tasks in flight at the last stop go out again from their checkpoints"
        );
    }
    let queue = Arc::new(MemoryQueue::new());
    let blobs = Arc::new(LocalStore::new(data_dir.join("blobs")));
    let device = tutti_model::device::select(&args.device)
        .with_context(|| format!("choosing the device {:?}", args.device))?;
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let engine = tutti_worker::engine::Engine::start(
            settings.models_dir.clone(),
            device,
            tutti_worker::engine::EngineOptions::default_for(device),
        )
        .with_context(|| {
            format!(
                "reading model packs under {}",
                settings.models_dir.display()
            )
        })?;
        let worker = tutti_worker::runner::Worker {
            name: format!("embedded-w{i}"),
            queue: queue.clone(),
            stages: vec![TaskKind::Denoise, TaskKind::Vocode],
            prefetch: 1,
            engine,
            blobs: blobs.clone(),
        };
        workers.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    let backend = Backend {
        store: Arc::new(store),
        queue,
        blobs,
    };
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        tutti_coordinator::serve_with_studio(&settings, backend, health, listener, studio, shutdown)
            .await
    });
    Ok(Embedded {
        addr,
        server,
        workers,
    })
}

pub(crate) fn settings(models_dir: PathBuf, cfg: Option<&DevConfig>) -> Settings {
    Settings {
        models_dir,
        default_model: cfg.and_then(|c| c.default_model.clone()),
        chunk_steps: cfg.map_or(0, |c| c.chunk_steps),
        sched: tutti_coordinator::sched::Policy {
            max_in_flight: cfg.map_or(8, |c| c.max_in_flight),
            ..Default::default()
        },
        retry: RetryPolicy {
            max_attempts: cfg.map_or(4, |c| c.max_attempts),
            backoff: cfg.map_or(Duration::from_secs(1), |c| c.retry_backoff),
        },
        task_lease: cfg.map_or(Duration::from_secs(300), |c| c.task_lease),
        checkpoint_grace: cfg.map_or(Duration::from_secs(60), |c| c.checkpoint_grace),
        url_ttl: Duration::from_secs(3600),
        auth: cfg.map_or(AuthMode::Off, |c| c.auth),
        tls: cfg.and_then(|c| c.tls.files()),
    }
}

/// `tutti dev`: serves until SIGTERM or ctrl-c, then lets the workers finish their task.
pub(crate) async fn dev(cfg: DevConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let models_dir = resolve_models_dir(cfg.embedded.models_dir.as_deref())?;
    let data_dir = cfg
        .data_dir
        .clone()
        .unwrap_or_else(|| tutti_home().join("dev"));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let studio = match cfg.studio_listen.0 {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!(
                "binding the studio's address {addr} (another port: --studio-listen; none: off)"
            )
        })?),
        None => None,
    };
    let studio_addr = studio.as_ref().map(|l| l.local_addr()).transpose()?;
    let settings = settings(models_dir.clone(), Some(&cfg));
    let health = Health::default();
    if let Some(addr) = cfg.metrics_listen {
        let bound = tutti_shared::metrics::serve(addr, health.clone()).await?;
        tracing::info!(addr = %bound, "metrics and probes listening");
    }
    let farm = start(
        &data_dir,
        &cfg.embedded,
        settings,
        health,
        listener,
        studio,
        shutdown,
    )
    .await?;
    if let Some(addr) = studio_addr {
        eprintln!("tutti studio: http://{addr}/");
    }
    eprintln!(
        "tutti dev: gRPC on http://{} · data in {} · models from {} · {} worker(s)",
        farm.addr,
        data_dir.display(),
        models_dir.display(),
        cfg.embedded.workers
    );
    let result = farm.server.await.context("the API task")?;
    for w in farm.workers {
        let _ = w.await;
    }
    result
}

/// `tutti generate` without `--server`: a throwaway embedded farm in a temp folder, one job.
pub(crate) async fn generate(
    req: tutti_proto::v1::SubmitGenerationRequest,
    args: &super::client::GenerateArgs,
) -> anyhow::Result<()> {
    if args.embedded.workers == 0 {
        bail!("--workers must be at least 1 to generate embedded");
    }
    if args.no_wait {
        bail!("--no-wait needs --server: an embedded farm ends with the command");
    }
    let models_dir = resolve_models_dir(args.embedded.models_dir.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("tutti-embedded-")
        .tempdir()
        .context("creating a temp folder for the embedded farm")?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a local port for the embedded farm")?;
    let (stop, shutdown) = watch::channel(false);
    let settings = settings(models_dir, None);
    let farm = start(
        dir.path(),
        &args.embedded,
        settings,
        Health::default(),
        listener,
        None,
        shutdown,
    )
    .await?;
    let url = format!("http://{}", farm.addr);
    let result = async {
        let mut client = super::client::connect_local(&url).await?;
        super::client::run_job(&mut client, req, args, true).await
    }
    .await;
    let _ = stop.send(true);
    let _ = farm.server.await;
    result
}
