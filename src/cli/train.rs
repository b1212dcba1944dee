//! `tutti train ...`: render the dataset, train the denoiser and the vocoder, write and evaluate
//! the built-in pack.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tutti_worker::train;

#[derive(Debug, Subcommand)]
pub(crate) enum TrainCommand {
    /// Render a captioned dataset (procedural compositions and the music21 corpus) with log-mels.
    Dataset(DatasetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DatasetArgs {
    /// Output folder (resumable: missing clips are rendered).
    pub out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub clips: usize,
    /// Clip length in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value = "/usr/share/sounds/sf2/FluidR3_GM.sf2")]
    pub soundfont: PathBuf,
    /// Folder written by scripts/export_music21.py (index.jsonl + MIDI files).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 0.3)]
    pub corpus_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
}

pub(crate) fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Dataset(a) => {
            tch::set_num_threads(a.threads);
            let mut cfg = train::dataset::DatasetConfig::new(a.clips, a.seconds, a.seed);
            cfg.corpus_fraction = a.corpus_fraction;
            let paths = train::dataset::DatasetPaths {
                out: a.out.clone(),
                soundfont: a.soundfont,
                corpus: a.corpus,
            };
            let t0 = std::time::Instant::now();
            let n = train::dataset::make(&cfg, &paths, true)?;
            let s = t0.elapsed().as_secs_f64();
            println!(
                "rendered {n} clips into {} in {s:.1} s ({:.2} clips/s)",
                a.out.display(),
                n as f64 / s.max(1e-9)
            );
            Ok(())
        }
    }
}
