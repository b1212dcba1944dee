//! `tutti train dataset`: renders captioned clips with their log-mel features.
//!
//! Layout of the output folder:
//!
//! ```text
//! dataset.json        the settings (checked on resume)
//! manifest.jsonl      one ManifestRow per finished clip, in completion order
//! mel/NNNNNN.f16      log-mel [n_mels, frames], f16 little-endian, row-major
//! audio/NNNNNN.i16    the rendered clip, 16-bit PCM little-endian (for the vocoder)
//! ```
//!
//! Clip `i` depends only on (seed, i): a resumed run renders exactly the clips that are missing.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::caption::caption;
use super::data::{self, ManifestRow};
use super::music::{arrange, compose, corpus::Corpus, Piece, Style};
use super::render::Renderer;
use super::{file_err, rng_for, Result, TrainError};
use tutti_model::mel::{MelConfig, MelFrontEnd};

/// The settings a dataset is made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetConfig {
    pub clips: usize,
    pub seconds: f64,
    pub seed: u64,
    pub mel: MelConfig,
    /// Fraction of clips taken from the corpus (when one is given).
    pub corpus_fraction: f64,
    /// Fraction of empty captions (for classifier-free guidance).
    pub empty_caption: f64,
    /// The composer's styles to draw from; empty: all of them. One style alone is how a change to
    /// the composer is measured on the music it changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub styles: Vec<Style>,
}

impl DatasetConfig {
    pub fn new(clips: usize, seconds: f64, seed: u64) -> Self {
        Self {
            clips,
            seconds,
            seed,
            mel: MelConfig::default(),
            corpus_fraction: 0.3,
            empty_caption: 0.1,
            styles: Vec::new(),
        }
    }
}

/// What `make` needs besides the config.
#[derive(Debug, Clone)]
pub struct DatasetPaths {
    pub out: PathBuf,
    pub soundfont: PathBuf,
    pub corpus: Option<PathBuf>,
}

const PURPOSE_CLIP: u64 = 1;

/// The piece of clip `id` and the generator its caption continues from (the same draws as
/// [`make_clip`], so the round-trip measurement hears exactly what the dataset would hold).
pub fn draw_piece(
    cfg: &DatasetConfig,
    id: usize,
    corpus: Option<&Corpus>,
) -> (Piece, rand_chacha::ChaCha8Rng) {
    let mut rng = rng_for(cfg.seed, PURPOSE_CLIP, id as u64);
    let mut piece = None;
    if let Some(c) = corpus.filter(|c| !c.entries.is_empty()) {
        if rng.random_bool(cfg.corpus_fraction) {
            for _ in 0..4 {
                let e = &c.entries[rng.random_range(0..c.entries.len())];
                if let Ok(notes) = c.notes(e) {
                    piece = arrange::arrange_corpus(e, &notes, &mut rng, cfg.seconds);
                }
                if piece.is_some() {
                    break;
                }
            }
        }
    }
    let piece = match piece {
        Some(p) => p,
        None => {
            let styles: &[Style] = if cfg.styles.is_empty() {
                &Style::PROCEDURAL
            } else {
                &cfg.styles
            };
            let style = *styles.choose(&mut rng).unwrap_or(&Style::Rock);
            compose::compose(style, &mut rng, cfg.seconds)
        }
    };
    (piece, rng)
}

/// Renders one clip: the manifest row, the samples and the log-mel.
pub fn make_clip(
    cfg: &DatasetConfig,
    id: usize,
    renderer: &Renderer,
    corpus: Option<&Corpus>,
    front: &MelFrontEnd,
) -> Result<(ManifestRow, Vec<f32>, Vec<f32>)> {
    let (piece, mut rng) = draw_piece(cfg, id, corpus);
    let (wave, rms) = renderer.render(&piece, cfg.seconds)?;
    let (mut text, mut controls) = caption(&mut rng, &piece, cfg.seconds);
    if rng.random_bool(cfg.empty_caption) {
        text.clear();
        controls = tutti_shared::prompt::parse_controls("", cfg.seconds as f32);
    }
    let mel = front
        .log_mel(&Tensor::from_slice(&wave).view([1, -1]))?
        .squeeze_dim(0)
        .contiguous();
    let frames = mel.size()[1] as usize;
    let mut values = vec![0f32; mel.numel()];
    mel.f_copy_data(&mut values, mel.numel())?;
    let row = ManifestRow {
        id,
        caption: text,
        controls,
        style: piece.style,
        source: piece.source.clone(),
        bpm: piece.bpm,
        tonic: piece.tonic,
        mode: piece.mode,
        beats_per_bar: piece.beats_per_bar,
        downbeat_s: 0.0,
        dynamics: piece.dynamics,
        families: piece.families_heard(cfg.seconds),
        sections: piece.sections_heard(cfg.seconds),
        seconds: cfg.seconds,
        frames,
        rms,
    };
    Ok((row, wave, values))
}

/// Renders every missing clip of `cfg` into `paths.out`, with a progress bar; returns the number
/// rendered by this call.
pub fn make(cfg: &DatasetConfig, paths: &DatasetPaths, progress: bool) -> Result<usize> {
    let out = &paths.out;
    std::fs::create_dir_all(out.join("mel")).map_err(|e| file_err(out, e))?;
    std::fs::create_dir_all(out.join("audio")).map_err(|e| file_err(out, e))?;
    let cfg_path = out.join("dataset.json");
    if cfg_path.exists() {
        let old: DatasetConfig = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e))?,
        )
        .map_err(|e| file_err(&cfg_path, e))?;
        let same = DatasetConfig {
            clips: cfg.clips,
            ..old.clone()
        };
        if &same != cfg {
            return Err(TrainError::Input(format!(
                "{} was made with other settings ({old:?}); use another folder",
                cfg_path.display()
            )));
        }
    }
    let json = serde_json::to_string_pretty(cfg).map_err(|e| file_err(&cfg_path, e))?;
    std::fs::write(&cfg_path, json).map_err(|e| file_err(&cfg_path, e))?;

    let done: std::collections::HashSet<usize> = data::read_manifest(out)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let todo: Vec<usize> = (0..cfg.clips).filter(|i| !done.contains(i)).collect();
    let renderer = Renderer::load(&paths.soundfont, cfg.mel.sample_rate)?;
    let corpus = paths.corpus.as_deref().map(Corpus::open).transpose()?;
    let front = MelFrontEnd::new(&cfg.mel, Device::Cpu)?;
    let bar = if progress {
        ProgressBar::new(cfg.clips as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} clips {per_sec} eta {eta} {msg}")
            .map_err(|e| TrainError::Input(e.to_string()))?,
    );
    bar.set_position(done.len() as u64);
    let manifest_path = out.join("manifest.jsonl");
    let mut manifest = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&manifest_path)
        .map_err(|e| file_err(&manifest_path, e))?;
    for &id in &todo {
        let (row, wave, mel) = make_clip(cfg, id, &renderer, corpus.as_ref(), &front)?;
        write_clip(out, id, &wave, &mel)?;
        let line = serde_json::to_string(&row).map_err(|e| file_err(&manifest_path, e))?;
        writeln!(manifest, "{line}").map_err(|e| file_err(&manifest_path, e))?;
        bar.inc(1);
    }
    bar.finish();
    Ok(todo.len())
}

fn write_clip(out: &Path, id: usize, wave: &[f32], mel: &[f32]) -> Result<()> {
    let mel_path = data::mel_path(out, id);
    let bytes: Vec<u8> = mel
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    std::fs::write(&mel_path, bytes).map_err(|e| file_err(&mel_path, e))?;
    let audio_path = data::audio_path(out, id);
    let bytes: Vec<u8> = wave
        .iter()
        .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    std::fs::write(&audio_path, bytes).map_err(|e| file_err(&audio_path, e))?;
    Ok(())
}

pub fn read_config(dir: &Path) -> Result<DatasetConfig> {
    let path = dir.join("dataset.json");
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| file_err(&path, e))
}
