//! The farm's settings, one source for every way of running it: `tutti coordinator`'s flags,
//! `tutti dev`'s and embedded `generate`'s, and the farms of the benchmarks and tests. The
//! defaults are written here once (`defaults`); the flags (`FarmArgs`) and `Settings::default`
//! both read them.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::AuthMode;
use crate::lifecycle::RetryPolicy;
use crate::sched::{Policy, TenantWeights};
use crate::studio::StudioOptions;
use crate::webhooks::WebhookSettings;

/// The default of every setting, as its flag spells it.
pub mod defaults {
    pub const CHUNK_STEPS: u32 = 0;
    pub const MAX_ATTEMPTS: u32 = 4;
    pub const RETRY_BACKOFF: &str = "1s";
    pub const TASK_LEASE: &str = "300s";
    pub const CHECKPOINT_GRACE: &str = "60s";
    /// Tasks dispatched before any worker has sent a heartbeat, per queue.
    pub const MAX_IN_FLIGHT: u32 = 64;
    /// The same, embedded: small, so that the backlog waits in the store where priorities
    /// apply, not in the in-process queue.
    pub const EMBEDDED_MAX_IN_FLIGHT: u32 = 8;
    pub const WORKER_TIMEOUT: &str = "10s";
    pub const BATCH_SHARE: f64 = 0.1;
    pub const AFFINITY_WAIT: &str = "1500ms";
    pub const URL_TTL: &str = "1h";
    pub const WEBHOOK_BACKOFF: &str = "5s";
    pub const WEBHOOK_MAX_BACKOFF: &str = "1h";
    pub const WEBHOOK_RETRY_FOR: &str = "24h";
    pub const WEBHOOK_TIMEOUT: &str = "10s";
    pub const WEBHOOK_LEASE: &str = "60s";
}

/// A default duration; the texts above are constants (a unit test parses each).
fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("default {text:?}: {e}"))
}

/// The scheduler's and the lifecycle's knobs, whichever backend runs them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub models_dir: PathBuf,
    pub default_model: Option<String>,
    pub chunk_steps: u32,
    pub sched: Policy,
    pub retry: RetryPolicy,
    pub task_lease: Duration,
    /// How long after a job ends its checkpoints are deleted.
    pub checkpoint_grace: Duration,
    pub url_ttl: Duration,
    /// Whether job API calls need an API key.
    pub auth: AuthMode,
    /// TLS for the gRPC server (plaintext when `None`).
    pub tls: Option<TlsFiles>,
    /// Key prefixes of the blob store that admin keys may name in requests (manifests), beside
    /// every tenant's own `uploads/<tenant>/` and `manifests/<tenant>/`.
    pub admin_blob_prefixes: Vec<String>,
    /// Which browsers' requests the studio's gateway serves (hosts, origins).
    pub studio_options: StudioOptions,
    /// How webhooks are sent (and whether this replica sends them).
    pub webhooks: WebhookSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            default_model: None,
            chunk_steps: defaults::CHUNK_STEPS,
            sched: Policy::default(),
            retry: RetryPolicy {
                max_attempts: defaults::MAX_ATTEMPTS,
                backoff: duration(defaults::RETRY_BACKOFF),
            },
            task_lease: duration(defaults::TASK_LEASE),
            checkpoint_grace: duration(defaults::CHECKPOINT_GRACE),
            url_ttl: duration(defaults::URL_TTL),
            auth: AuthMode::Off,
            tls: None,
            admin_blob_prefixes: Vec::new(),
            studio_options: StudioOptions::default(),
            webhooks: WebhookSettings {
                send: true,
                allow_private: false,
                backoff: duration(defaults::WEBHOOK_BACKOFF),
                max_backoff: duration(defaults::WEBHOOK_MAX_BACKOFF),
                retry_for: duration(defaults::WEBHOOK_RETRY_FOR),
                timeout: duration(defaults::WEBHOOK_TIMEOUT),
                lease: duration(defaults::WEBHOOK_LEASE),
            },
        }
    }
}

impl Settings {
    /// The defaults of an embedded farm (`tutti dev`, `tutti generate` without a server).
    pub fn embedded(models_dir: PathBuf) -> Self {
        Self {
            models_dir,
            sched: Policy {
                max_in_flight: defaults::EMBEDDED_MAX_IN_FLIGHT,
                ..Policy::default()
            },
            ..Self::default()
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_in_flight: defaults::MAX_IN_FLIGHT,
            worker_timeout: duration(defaults::WORKER_TIMEOUT),
            weights: TenantWeights::default(),
            batch_share: defaults::BATCH_SHARE,
            affinity_wait: duration(defaults::AFFINITY_WAIT),
        }
    }
}

/// The flags of the farm's settings, shared by `tutti coordinator` and `tutti dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct FarmArgs {
    /// Model used when a request names none (default: the only pack, or `tutti-mini`).
    #[arg(long, env = "TUTTI_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Denoising steps per chunk (0: the model's default).
    #[arg(long, env = "TUTTI_CHUNK_STEPS", default_value_t = defaults::CHUNK_STEPS)]
    pub chunk_steps: u32,
    /// Attempts per task before its job fails.
    #[arg(long, env = "TUTTI_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt.
    #[arg(long, env = "TUTTI_RETRY_BACKOFF", default_value = defaults::RETRY_BACKOFF, value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,
    /// A dispatched task with no sign of life for this long is dispatched again (attempt + 1).
    /// The broker's redelivery covers dead workers; this covers lost messages.
    #[arg(long, env = "TUTTI_TASK_LEASE", default_value = defaults::TASK_LEASE, value_parser = humantime::parse_duration)]
    pub task_lease: Duration,
    /// How long after a job ends its checkpoints (one object per denoise chunk) are deleted.
    #[arg(long, env = "TUTTI_CHECKPOINT_GRACE", default_value = defaults::CHECKPOINT_GRACE, value_parser = humantime::parse_duration)]
    pub checkpoint_grace: Duration,
    /// Tasks dispatched but unfinished per queue while no worker has ever sent a heartbeat;
    /// afterwards the slots of live workers bound it. The rest of the backlog waits in the
    /// store [default: 64 on a coordinator, 8 embedded].
    #[arg(long, env = "TUTTI_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<u32>,
    /// A worker unheard of for this long has no capacity, and its tasks go back to the backlog.
    #[arg(long, env = "TUTTI_WORKER_TIMEOUT", default_value = defaults::WORKER_TIMEOUT, value_parser = humantime::parse_duration)]
    pub worker_timeout: Duration,
    /// Fair-share weights of tenants within a class, `tenant=weight,...` (others weigh 1).
    #[arg(long, env = "TUTTI_TENANT_WEIGHTS", default_value = "")]
    pub tenant_weights: TenantWeights,
    /// Share of each stage's capacity kept for batch work while it waits (0 to 1; at least one
    /// slot when above 0, never every slot).
    #[arg(long, env = "TUTTI_BATCH_SHARE", default_value_t = defaults::BATCH_SHARE)]
    pub batch_share: f64,
    /// How long a job's next chunk waits for the worker that holds its latent (chunk affinity)
    /// before any worker may take it.
    #[arg(long, env = "TUTTI_AFFINITY_WAIT", default_value = defaults::AFFINITY_WAIT, value_parser = humantime::parse_duration)]
    pub affinity_wait: Duration,
    /// Lifetime of presigned output URLs.
    #[arg(long, env = "TUTTI_URL_TTL", default_value = defaults::URL_TTL, value_parser = humantime::parse_duration)]
    pub url_ttl: Duration,
    /// `required`: every job API call needs `authorization: Bearer <key>` (keys from
    /// `tutti key create`); `off`: every caller is the tenant `default`.
    #[arg(long, env = "TUTTI_AUTH", value_enum, default_value = "off")]
    pub auth: AuthMode,
    /// Key prefixes of the farm's bucket that admin keys may name as manifests
    /// (`catalog/,backfills/`), beside each tenant's own `uploads/<tenant>/` and
    /// `manifests/<tenant>/`.
    #[arg(long, env = "TUTTI_ADMIN_BLOB_PREFIXES", value_delimiter = ',')]
    pub admin_blob_prefixes: Vec<String>,
    /// Origins whose pages may call the studio's HTTP API (`https://app.example.com,...`):
    /// they get CORS answers. Without it no other site's page can (writes from another
    /// origin are refused).
    #[arg(long, env = "TUTTI_STUDIO_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub studio_allowed_origins: Vec<String>,
    /// Host names the studio answers besides loopback names when it listens on loopback (a
    /// guard against DNS rebinding); on other addresses, the only names it answers when set.
    #[arg(long, env = "TUTTI_STUDIO_ALLOWED_HOSTS", value_delimiter = ',')]
    pub studio_allowed_hosts: Vec<String>,
    /// The largest manifest the studio accepts in one upload, in MiB.
    #[arg(long, env = "TUTTI_MAX_UPLOAD_MB", default_value_t = 64)]
    pub max_upload_mb: usize,
    /// Uploaded manifests a tenant keeps at once (each is a submitted batch's).
    #[arg(long, env = "TUTTI_MAX_UPLOADS", default_value_t = 10_000)]
    pub max_uploads: usize,
    /// Whether this replica sends webhook deliveries (any number of replicas may; each
    /// delivery goes out once per attempt).
    #[arg(long, env = "TUTTI_WEBHOOK_SEND", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook_send: bool,
    /// Let webhooks target loopback, private and link-local addresses (private networks,
    /// tests). Off: such URLs are INVALID_ARGUMENT and such resolved addresses are refused.
    #[arg(long, env = "TUTTI_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// First delay before a failed webhook delivery is retried; doubles per attempt, with
    /// jitter.
    #[arg(long, env = "TUTTI_WEBHOOK_BACKOFF", default_value = defaults::WEBHOOK_BACKOFF, value_parser = humantime::parse_duration)]
    pub webhook_backoff: Duration,
    /// The longest delay between attempts of a webhook delivery.
    #[arg(long, env = "TUTTI_WEBHOOK_MAX_BACKOFF", default_value = defaults::WEBHOOK_MAX_BACKOFF, value_parser = humantime::parse_duration)]
    pub webhook_max_backoff: Duration,
    /// How long a webhook delivery is retried before it is marked failed.
    #[arg(long, env = "TUTTI_WEBHOOK_RETRY_FOR", default_value = defaults::WEBHOOK_RETRY_FOR, value_parser = humantime::parse_duration)]
    pub webhook_retry_for: Duration,
    /// Time limit of one webhook attempt (connect, send, read the answer).
    #[arg(long, env = "TUTTI_WEBHOOK_TIMEOUT", default_value = defaults::WEBHOOK_TIMEOUT, value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,
}

impl FarmArgs {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.batch_share) {
            return Err("batch_share must be between 0 and 1".into());
        }
        if let Some(p) = self.admin_blob_prefixes.iter().find(|p| {
            !p.ends_with('/') || tutti_shared::blob::check_key(p.trim_end_matches('/')).is_err()
        }) {
            return Err(format!(
                "admin_blob_prefixes: {p:?} must be a key prefix of plain segments ending in /"
            ));
        }
        if self.url_ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err("url_ttl must be at most 7 days (an S3 limit)".into());
        }
        Ok(())
    }

    /// `base` with these flags applied (`base` supplies the models, TLS and what the flags
    /// leave to the kind of farm).
    pub fn apply(&self, base: Settings) -> Settings {
        Settings {
            default_model: self.default_model.clone(),
            chunk_steps: self.chunk_steps,
            sched: Policy {
                max_in_flight: self.max_in_flight.unwrap_or(base.sched.max_in_flight),
                worker_timeout: self.worker_timeout,
                weights: self.tenant_weights.clone(),
                batch_share: self.batch_share,
                affinity_wait: self.affinity_wait,
            },
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                backoff: self.retry_backoff,
            },
            task_lease: self.task_lease,
            checkpoint_grace: self.checkpoint_grace,
            url_ttl: self.url_ttl,
            auth: self.auth,
            admin_blob_prefixes: self.admin_blob_prefixes.clone(),
            studio_options: StudioOptions {
                allowed_origins: self.studio_allowed_origins.clone(),
                allowed_hosts: self.studio_allowed_hosts.clone(),
                max_upload_bytes: self.max_upload_mb << 20,
                max_uploads: self.max_uploads,
            },
            webhooks: WebhookSettings {
                send: self.webhook_send,
                allow_private: self.webhook_allow_private,
                backoff: self.webhook_backoff,
                max_backoff: self.webhook_max_backoff,
                retry_for: self.webhook_retry_for,
                timeout: self.webhook_timeout,
                ..base.webhooks
            },
            ..base
        }
    }
}

/// TLS for the gRPC server: the files to read at start.
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        farm: FarmArgs,
    }

    #[test]
    fn the_flags_defaults_are_the_settings_defaults() {
        let args = Cli::try_parse_from(["tutti"]).expect("no flags").farm;
        let from_flags = args.apply(Settings::default());
        let default = Settings::default();
        assert_eq!(from_flags.sched, default.sched);
        assert_eq!(from_flags.retry.max_attempts, default.retry.max_attempts);
        assert_eq!(from_flags.retry.backoff, Duration::from_secs(1));
        assert_eq!(from_flags.task_lease, Duration::from_secs(300));
        assert_eq!(from_flags.checkpoint_grace, Duration::from_secs(60));
        assert_eq!(from_flags.url_ttl, Duration::from_secs(3600));
        assert_eq!(from_flags.sched.affinity_wait, Duration::from_millis(1500));
        assert_eq!(from_flags.webhooks.backoff, default.webhooks.backoff);
        assert_eq!(from_flags.webhooks.retry_for, default.webhooks.retry_for);
        assert!(from_flags.webhooks.send && !from_flags.webhooks.allow_private);
        let embedded = args.apply(Settings::embedded("packs".into()));
        assert_eq!(
            embedded.sched.max_in_flight,
            defaults::EMBEDDED_MAX_IN_FLIGHT
        );
        assert_eq!(embedded.models_dir, PathBuf::from("packs"));
    }
}
