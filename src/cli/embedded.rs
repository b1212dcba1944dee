//! Embedded mode: the whole farm in this process. SQLite job store, in-process task queue,
//! a local blob folder with the S3 key layout, N workers over the engine, and the gRPC API;
//! `tutti dev` serves it, `tutti generate` without `--server` runs one job through it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tutti_coordinator::config::TlsArgs;
use tutti_coordinator::store::SqliteStore;
use tutti_coordinator::{Backend, FarmArgs, Settings};
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
    #[command(flatten)]
    pub farm: FarmArgs,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz` (off when unset).
    #[arg(long, env = "TUTTI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of tutti studio, the web page (`off`: none).
    #[arg(long, env = "TUTTI_STUDIO_LISTEN", default_value = "127.0.0.1:8080")]
    pub studio_listen: StudioListen,
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
            // Local blobs have no outages: their errors are the disk's, and final.
            outage_budget: std::time::Duration::ZERO,
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

/// The settings of an embedded farm: its defaults, with `tutti dev`'s flags when given.
pub(crate) fn settings(models_dir: PathBuf, cfg: Option<&DevConfig>) -> Settings {
    let base = Settings::embedded(models_dir);
    match cfg {
        Some(c) => c.farm.apply(Settings {
            tls: c.tls.files(),
            ..base
        }),
        None => base,
    }
}

/// `tutti dev`: serves until SIGTERM or ctrl-c, then lets the workers finish their task.
pub(crate) async fn dev(cfg: DevConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    cfg.farm.validate().map_err(anyhow::Error::msg)?;
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
