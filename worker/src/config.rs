//! The worker's configuration: flags and `TUTTI_*` environment variables.

use std::path::PathBuf;

use tutti_shared::config::{AmqpArgs, S3Args};
use tutti_shared::job::TaskKind;

use crate::engine::EngineOptions;

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
    /// Vocode tasks a worker holds unacknowledged (denoise chunks: `--max-batch`).
    #[arg(long, env = "TUTTI_PREFETCH", default_value_t = 1)]
    pub prefetch: u16,
    /// Most denoise chunks the worker holds and steps in one denoiser forward (continuous
    /// batching); 1 runs one chunk at a time. Default: 8 on CPU, 32 on CUDA.
    #[arg(long, env = "TUTTI_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Memory in MB for the latents of finished chunks, kept so that a job's next chunk on this
    /// worker skips the S3 checkpoint read (0 turns it off). Default: 256 on CPU, 2048 on CUDA.
    #[arg(long, env = "TUTTI_HELD_LATENTS_MB")]
    pub held_latents_mb: Option<usize>,
    /// Activation memory in MB one batched denoiser forward may take (estimated per chunk from
    /// the pack's size, the clip length and the variations); caps the batch below --max-batch
    /// for long clips or big packs. Default: 1024 on CPU, 16384 on CUDA.
    #[arg(long, env = "TUTTI_BATCH_MEMORY_MB")]
    pub batch_memory_mb: Option<usize>,
    /// Interactive tasks of each kind the worker takes beyond its slots (its express lane, so an
    /// interactive job never waits for batch work to end). Default: 2 on CPU, 4 on CUDA.
    #[arg(long, env = "TUTTI_EXPRESS_SLOTS")]
    pub express_slots: Option<usize>,
    /// Precision of the model networks: auto (f32 on CPU; bf16 on CUDA, with Stable Audio's
    /// VAE in f16), f32, bf16 or f16 (for GPUs without fast bf16). Text encoders run in f32.
    #[arg(long, env = "TUTTI_PRECISION", default_value = "auto")]
    pub precision: tutti_model::device::Precision,
    /// libtorch intra-op threads (default: libtorch's, one per core); set it when several CPU
    /// workers share a machine.
    #[arg(long, env = "TUTTI_TORCH_THREADS")]
    pub torch_threads: Option<i32>,
    /// Name reported with results (default: host and process id).
    #[arg(long, env = "TUTTI_WORKER_NAME")]
    pub name: Option<String>,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz` (off when unset).
    #[arg(long, env = "TUTTI_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long a task in hand waits out an unreachable blob store (no connection, timeouts,
    /// 5xx) before it fails; keep it under the coordinator's task lease.
    #[arg(long, env = "TUTTI_OUTAGE_BUDGET", default_value = crate::runner::DEFAULT_OUTAGE_BUDGET, value_parser = humantime::parse_duration)]
    pub outage_budget: std::time::Duration,
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
        if self.torch_threads.is_some_and(|n| n < 1) {
            return Err("torch-threads: must be at least 1".into());
        }
        if let Some(b) = self.max_batch {
            if b == 0 || b > usize::from(u16::MAX) {
                return Err(format!("max-batch: must be in 1..={}, got {b}", u16::MAX));
            }
        }
        Ok(())
    }

    /// Batching and held-latent settings for `device`, with the per-device defaults.
    pub fn engine_options(&self, device: tch::Device) -> EngineOptions {
        let d = EngineOptions::default_for(device);
        EngineOptions {
            max_batch: self.max_batch.unwrap_or(d.max_batch),
            held_bytes: self.held_latents_mb.map_or(d.held_bytes, |mb| mb << 20),
            batch_bytes: self.batch_memory_mb.map_or(d.batch_bytes, |mb| mb << 20),
            express: self.express_slots.unwrap_or(d.express),
            precision: self.precision,
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerConfig,
    }

    #[test]
    fn batch_defaults_follow_the_device_and_flags_override_them() {
        let cfg = Cli::parse_from(["w"]).worker;
        let cpu = cfg.engine_options(tch::Device::Cpu);
        assert_eq!(
            (cpu.max_batch, cpu.held_bytes, cpu.batch_bytes),
            (8, 256 << 20, crate::engine::CPU_BATCH_BYTES)
        );
        let cuda = cfg.engine_options(tch::Device::Cuda(0));
        assert_eq!(cuda.max_batch, 32);
        let cfg = Cli::parse_from(["w", "--max-batch", "1", "--held-latents-mb", "0"]).worker;
        assert!(cfg.validate().is_ok());
        let one = cfg.engine_options(tch::Device::Cpu);
        let seq = EngineOptions::sequential();
        assert_eq!(
            (one.max_batch, one.held_bytes),
            (seq.max_batch, seq.held_bytes)
        );
        let cfg = Cli::parse_from(["w", "--batch-memory-mb", "64", "--express-slots", "0"]).worker;
        let o = cfg.engine_options(tch::Device::Cpu);
        assert_eq!(
            (o.batch_bytes, o.express, o.interactive_first),
            (64 << 20, 0, true)
        );
        assert!(!cfg.engine_options(tch::Device::Cuda(0)).interactive_first);
        assert_eq!(o.precision, tutti_model::device::Precision::Auto);
        let cfg = Cli::parse_from(["w", "--precision", "fp16"]).worker;
        let o = cfg.engine_options(tch::Device::Cuda(0));
        assert_eq!(o.precision, tutti_model::device::Precision::F16);
        assert!(Cli::try_parse_from(["w", "--precision", "int8"]).is_err());
        let cfg = Cli::parse_from(["w", "--max-batch", "0"]).worker;
        assert!(cfg.validate().is_err());
    }
}
