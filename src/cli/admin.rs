//! Operator commands for tenants and API keys. They talk to the job store directly (Postgres
//! at TUTTI_DATABASE_URL, or an embedded farm's SQLite file with --sqlite), not to the gRPC
//! API, so they work before any key exists.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tutti_coordinator::auth::limits::priorities_from_text;
use tutti_coordinator::auth::{self, Limits};
use tutti_coordinator::store::{JobStore, PgStore, SqliteStore};
use tutti_shared::config::{redact_url, DatabaseArgs};
use tutti_shared::job::Priority;

#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// An embedded farm's SQLite store instead of Postgres (`tutti dev` keeps it at
    /// DATA_DIR/jobs.db).
    #[arg(long)]
    pub sqlite: Option<PathBuf>,
}

impl StoreArgs {
    async fn open(&self) -> anyhow::Result<Arc<dyn JobStore>> {
        Ok(match &self.sqlite {
            Some(path) => Arc::new(
                SqliteStore::open(path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => Arc::new(
                PgStore::connect(&self.database.database_url)
                    .await
                    .with_context(|| {
                        format!(
                            "connecting to Postgres at {}",
                            redact_url(&self.database.database_url)
                        )
                    })?,
            ),
        })
    }
}

/// A tenant's limits; a limit left out is no limit.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LimitArgs {
    /// Jobs queued or running at once.
    #[arg(long)]
    pub max_jobs_in_flight: Option<u32>,
    /// Sustained submit rate (per coordinator process).
    #[arg(long)]
    pub submits_per_second: Option<f64>,
    /// Submits allowed in a burst (default: the rate rounded up).
    #[arg(long, requires = "submits_per_second", value_parser = clap::value_parser!(u32).range(1..))]
    pub submit_burst: Option<u32>,
    /// Items in one batch.
    #[arg(long)]
    pub max_batch_items: Option<u32>,
    /// Allowed priority classes, comma-separated, e.g. `standard,batch` (default: all).
    #[arg(long, value_parser = parse_priorities)]
    pub priorities: Option<PriorityList>,
    /// Seconds of audio per job.
    #[arg(long)]
    pub max_duration: Option<f32>,
    /// Denoising steps per job.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_steps: Option<u32>,
    /// Budget: seconds of audio delivered per UTC day (jobs in flight count as asked).
    #[arg(long, value_parser = parse_budget)]
    pub audio_seconds_per_day: Option<f64>,
    /// Budget: seconds of audio delivered per calendar month (UTC).
    #[arg(long, value_parser = parse_budget)]
    pub audio_seconds_per_month: Option<f64>,
    /// Budget: device seconds (the workers' own stage timings) per UTC day.
    #[arg(long, value_parser = parse_budget)]
    pub device_seconds_per_day: Option<f64>,
    /// Budget: device seconds per calendar month (UTC).
    #[arg(long, value_parser = parse_budget)]
    pub device_seconds_per_month: Option<f64>,
    /// Retention: days an output is kept before it is deleted (default: until its job is).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_outputs_days: Option<u32>,
    /// Retention: days a job's own init clip is kept after the job ends.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_inputs_days: Option<u32>,
    /// Retention: days a batch's results manifest (and a manifest uploaded through the studio)
    /// is kept after the batch finished.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_manifests_days: Option<u32>,
}

fn parse_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err("must be a number of seconds, 0 or more".into()),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PriorityList(Vec<Priority>);

fn parse_priorities(s: &str) -> Result<PriorityList, String> {
    let list = priorities_from_text(s)?;
    if list.is_empty() {
        return Err("name at least one class: interactive, standard or batch".into());
    }
    Ok(PriorityList(list))
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<Limits> {
        if self
            .submits_per_second
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            anyhow::bail!("--submits-per-second must be a positive number");
        }
        if self
            .max_duration
            .is_some_and(|d| !(d > 0.0 && d.is_finite()))
        {
            anyhow::bail!("--max-duration must be a positive number of seconds");
        }
        Ok(Limits {
            max_jobs_in_flight: self.max_jobs_in_flight,
            submits_per_second: self.submits_per_second,
            submit_burst: self.submit_burst,
            max_batch_items: self.max_batch_items,
            priorities: self.priorities.clone().map(|p| p.0),
            max_duration_s: self.max_duration,
            max_steps: self.max_steps,
            budgets: auth::Budgets {
                audio_seconds_per_day: self.audio_seconds_per_day,
                audio_seconds_per_month: self.audio_seconds_per_month,
                device_seconds_per_day: self.device_seconds_per_day,
                device_seconds_per_month: self.device_seconds_per_month,
            },
            retain_outputs_days: self.retain_outputs_days,
            retain_inputs_days: self.retain_inputs_days,
            retain_manifests_days: self.retain_manifests_days,
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TenantCommand {
    /// Add a tenant with its limits.
    Create {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replace a tenant's limits (a limit left out becomes no limit).
    Limits {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tenants and their limits.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Create an API key for a tenant; prints it once (only its hash is kept).
    Create {
        tenant: String,
        /// Operator key: reads and cancels every tenant's jobs.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by its prefix (`tt_<id>`, as `tutti key list` and the logs show it);
    /// it stops working at once.
    Revoke {
        prefix: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (prefixes only).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn show_limits(l: &Limits) -> String {
    let mut parts = Vec::new();
    let mut put = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    put(
        "max_jobs_in_flight",
        l.max_jobs_in_flight.map(|v| v.to_string()),
    );
    put(
        "submits_per_second",
        l.submits_per_second.map(|v| v.to_string()),
    );
    put("submit_burst", l.submit_burst.map(|v| v.to_string()));
    put("max_batch_items", l.max_batch_items.map(|v| v.to_string()));
    put(
        "priorities",
        l.priorities
            .as_deref()
            .map(auth::limits::priorities_to_text),
    );
    put("max_duration_s", l.max_duration_s.map(|v| v.to_string()));
    put("max_steps", l.max_steps.map(|v| v.to_string()));
    let b = &l.budgets;
    for (name, v) in [
        ("audio_seconds_per_day", b.audio_seconds_per_day),
        ("audio_seconds_per_month", b.audio_seconds_per_month),
        ("device_seconds_per_day", b.device_seconds_per_day),
        ("device_seconds_per_month", b.device_seconds_per_month),
    ] {
        put(name, v.map(|v| v.to_string()));
    }
    put(
        "retain_outputs_days",
        l.retain_outputs_days.map(|v| v.to_string()),
    );
    put(
        "retain_inputs_days",
        l.retain_inputs_days.map(|v| v.to_string()),
    );
    put(
        "retain_manifests_days",
        l.retain_manifests_days.map(|v| v.to_string()),
    );
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join(" ")
    }
}

pub(crate) async fn tenant(cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create {
            name,
            limits,
            store,
        } => {
            auth::check_tenant_name(&name)?;
            let limits = limits.limits()?;
            store.open().await?.create_tenant(&name, &limits).await?;
            println!("created tenant {name} ({})", show_limits(&limits));
        }
        TenantCommand::Limits {
            name,
            limits,
            store,
        } => {
            let limits = limits.limits()?;
            store.open().await?.set_limits(&name, &limits).await?;
            println!("tenant {name}: {}", show_limits(&limits));
        }
        TenantCommand::List { store } => {
            for t in store.open().await?.tenants().await? {
                println!("{:<24} {}", t.name, show_limits(&t.limits));
            }
        }
    }
    Ok(())
}

pub(crate) async fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create {
            tenant,
            admin,
            store,
        } => {
            let store = store.open().await?;
            let key = auth::issue_key(store.as_ref(), &tenant, admin).await?;
            eprintln!(
                "created {} key {} for tenant {tenant}; it is shown only now:",
                if admin { "an admin" } else { "a" },
                key.prefix()
            );
            println!("{}", key.expose());
        }
        KeyCommand::Revoke { prefix, store } => {
            let id = auth::key::id_from_prefix(&prefix)?;
            if store.open().await?.revoke_key(&id).await? {
                println!("revoked tt_{id}");
            } else {
                println!("tt_{id} was already revoked");
            }
        }
        KeyCommand::List { store } => {
            for k in store.open().await?.keys().await? {
                println!(
                    "tt_{}  {:<24} {:<6} created {}{}",
                    k.id,
                    k.tenant,
                    if k.admin { "admin" } else { "" },
                    k.created_at.format("%Y-%m-%d %H:%M:%S"),
                    k.revoked_at
                        .map(|t| format!(" revoked {}", t.format("%Y-%m-%d %H:%M:%S")))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
