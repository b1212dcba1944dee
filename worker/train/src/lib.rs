//! Training of the built-in model: the dataset (compositions, arrangement, rendering, captions,
//! features), the trainers (rectified-flow denoiser, Vocos vocoder), the pack writer and the
//! evaluation analyzers. Everything is deterministic given its seeds, and every long command can
//! stop and resume exactly.

pub mod batch;
pub mod caption;
pub mod ceiling;
pub mod checkpoint;
pub mod cond;
pub mod data;
pub mod dataset;
pub mod denoiser;
pub mod eval;
pub mod gan;
pub mod music;
pub mod optim;
pub mod pack;
pub mod plot;
pub mod render;
pub mod resample;
pub mod vae;
pub mod vocoder;
pub mod vocos_net;
pub mod widen;

use thiserror::Error;

/// Errors of the training commands; messages name the file or value at fault.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("soundfont: {0}")]
    SoundFont(String),
    #[error("midi {path}: {message}")]
    Midi { path: String, message: String },
    #[error("plot: {0}")]
    Plot(String),
    #[error(transparent)]
    Model(#[from] tutti_model::ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// An error naming a file.
pub(crate) fn file_err(path: &std::path::Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The per-purpose random generator: a ChaCha8 stream keyed by (seed, purpose, index), so every
/// random choice can be recomputed from its coordinates (the key to exact resume).
pub fn rng_for(seed: u64, purpose: u64, index: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&purpose.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    rand_chacha::ChaCha8Rng::from_seed(key)
}

/// Appends `{step, loss, frames_per_s, seconds}` to `run/log.jsonl` (for runs in the background,
/// where the progress bar is hidden). Best effort: a failed write only loses a log line.
pub(crate) fn log_line(run: &std::path::Path, step: u64, loss: f64, fps: f64, seconds: f64) {
    use std::io::Write;
    let line = format!(
        "{{\"step\":{step},\"loss\":{loss},\"frames_per_s\":{fps:.1},\"seconds\":{seconds:.1}}}\n"
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join("log.jsonl"))
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// CPU seconds of this process (user + system), from /proc; 0 where unavailable.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
