//! The worker's configuration: flags and `TUTTI_*` environment variables.

use std::path::PathBuf;

use tutti_shared::config::{AmqpArgs, S3Args};
use tutti_shared::job::TaskKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StageArg {
    Denoise,
    Vocode,
}

impl From<StageArg> for TaskKind {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Denoise => TaskKind::Denoise,
            StageArg::Vocode => TaskKind::Vocode,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// Folder of model packs (each with a model.toml).
    #[arg(long, env = "TUTTI_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Stages this worker takes (a GPU pool for denoising, a cheaper one for vocoding).
    #[arg(long, env = "TUTTI_STAGES", value_delimiter = ',', default_values = ["denoise", "vocode"])]
    pub stages: Vec<StageArg>,
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, env = "TUTTI_DEVICE", default_value = "auto")]
    pub device: String,
    /// Tasks a worker holds unacknowledged per stage queue.
    #[arg(long, env = "TUTTI_PREFETCH", default_value_t = 1)]
    pub prefetch: u16,
    /// Name reported with results (default: host and process id).
    #[arg(long, env = "TUTTI_WORKER_NAME")]
    pub name: Option<String>,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz` (off when unset).
    #[arg(long, env = "TUTTI_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl WorkerConfig {
    pub fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.stages.is_empty() {
            return Err("stages: at least one of denoise, vocode".into());
        }
        if self.prefetch == 0 {
            return Err("prefetch: must be at least 1".into());
        }
        Ok(())
    }
}
