//! The coordinator's configuration: flags and `TUTTI_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tutti_shared::config::{AmqpArgs, DatabaseArgs, S3Args};

use crate::auth::AuthMode;
use crate::sched::{Policy, TenantWeights};

#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorConfig {
    /// Address of the gRPC server.
    #[arg(long, env = "TUTTI_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// Folder of model packs (each with a model.toml); the same packs the workers load.
    #[arg(long, env = "TUTTI_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Model used when a request names none (default: the only pack, or `tutti-mini`).
    #[arg(long, env = "TUTTI_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Denoising steps per chunk (0: the model's default).
    #[arg(long, env = "TUTTI_CHUNK_STEPS", default_value_t = 0)]
    pub chunk_steps: u32,
    /// Attempts per task before its job fails.
    #[arg(long, env = "TUTTI_MAX_ATTEMPTS", default_value_t = 4)]
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt.
    #[arg(long, env = "TUTTI_RETRY_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,
    /// A dispatched task with no sign of life for this long is dispatched again (attempt + 1).
    /// The broker's redelivery covers dead workers; this covers lost messages.
    #[arg(long, env = "TUTTI_TASK_LEASE", default_value = "300s", value_parser = humantime::parse_duration)]
    pub task_lease: Duration,
    /// How long after a job ends its checkpoints (one S3 object per denoise chunk) are deleted.
    #[arg(long, env = "TUTTI_CHECKPOINT_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub checkpoint_grace: Duration,
    /// Tasks dispatched but unfinished per queue while no worker has ever sent a heartbeat;
    /// afterwards the slots of live workers bound it. The rest of the backlog waits in Postgres.
    #[arg(long, env = "TUTTI_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: u32,
    /// A worker unheard of for this long has no capacity, and its tasks go back to the backlog.
    #[arg(long, env = "TUTTI_WORKER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub worker_timeout: Duration,
    /// Fair-share weights of tenants within a class, `tenant=weight,...` (others weigh 1).
    #[arg(long, env = "TUTTI_TENANT_WEIGHTS", default_value = "")]
    pub tenant_weights: TenantWeights,
    /// Share of each stage's capacity kept for batch work while it waits (0 to 1; at least one
    /// slot when above 0, never every slot).
    #[arg(long, env = "TUTTI_BATCH_SHARE", default_value_t = 0.1)]
    pub batch_share: f64,
    /// How long a job's next chunk waits for the worker that holds its latent (chunk affinity)
    /// before any worker may take it.
    #[arg(long, env = "TUTTI_AFFINITY_WAIT", default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub affinity_wait: Duration,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz` (off when unset).
    #[arg(long, env = "TUTTI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of tutti studio, the web page and its HTTP/JSON gateway (off when unset).
    #[arg(long, env = "TUTTI_STUDIO_LISTEN")]
    pub studio_listen: Option<SocketAddr>,
    /// Run the database migrations, then exit (for a Kubernetes migration Job).
    #[arg(long)]
    pub migrate_only: bool,
    /// Lifetime of presigned output URLs.
    #[arg(long, env = "TUTTI_URL_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub url_ttl: Duration,
    /// `required`: every job API call needs `authorization: Bearer <key>` (keys from
    /// `tutti key create`); `off`: every caller is the tenant `default`.
    #[arg(long, env = "TUTTI_AUTH", value_enum, default_value = "off")]
    pub auth: AuthMode,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS for the gRPC server: a certificate chain and key (PEM), and optionally a CA whose
/// client certificates are required (mutual TLS). Paths only; the files are read at start.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Server certificate chain (PEM); with --tls-key, the server speaks only TLS.
    #[arg(long, env = "TUTTI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "TUTTI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates; when set, clients must present one.
    #[arg(long, env = "TUTTI_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files to serve TLS with, when TLS is on.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into tonic's server config.
    pub fn server_config(&self) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
        use anyhow::Context;
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("reading the TLS {what} {}", p.display()))
        };
        let identity = tonic::transport::Identity::from_pem(
            read(&self.cert, "certificate")?,
            read(&self.key, "key")?,
        );
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(read(
                ca,
                "client CA",
            )?));
        }
        Ok(cfg)
    }
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.batch_share) {
            return Err("batch_share must be between 0 and 1".into());
        }
        if self.url_ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err("url_ttl must be at most 7 days (an S3 limit)".into());
        }
        if self.tls.tls_cert.is_some() != self.tls.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        Ok(())
    }
}

impl CoordinatorConfig {
    /// The scheduler's knobs.
    pub fn policy(&self) -> Policy {
        Policy {
            max_in_flight: self.max_in_flight,
            worker_timeout: self.worker_timeout,
            weights: self.tenant_weights.clone(),
            batch_share: self.batch_share,
            affinity_wait: self.affinity_wait,
        }
    }
}
