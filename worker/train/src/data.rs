//! Reading a rendered dataset: the manifest, log-mel features and audio.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tutti_shared::prompt::{Controls, Mode};

use super::music::{Dynamics, Family, Style};
use super::{file_err, Result, TrainError};

/// One clip of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRow {
    pub id: usize,
    pub caption: String,
    /// What the API's parser reads from the caption (the training controls).
    pub controls: Controls,
    pub style: Style,
    pub source: String,
    pub bpm: f32,
    pub tonic: u8,
    pub mode: Mode,
    pub beats_per_bar: u32,
    pub dynamics: Dynamics,
    pub families: Vec<Family>,
    pub sections: Vec<String>,
    pub seconds: f64,
    pub frames: usize,
    pub rms: f32,
}

pub fn mel_path(dir: &Path, id: usize) -> PathBuf {
    dir.join("mel").join(format!("{id:06}.f16"))
}

pub fn audio_path(dir: &Path, id: usize) -> PathBuf {
    dir.join("audio").join(format!("{id:06}.i16"))
}

/// The manifest rows, sorted by id (a torn last line from an interrupted run is skipped).
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestRow>> {
    let path = dir.join("manifest.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    let mut rows: Vec<ManifestRow> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    rows.sort_by_key(|r| r.id);
    rows.dedup_by_key(|r| r.id);
    Ok(rows)
}

/// A clip's log-mel `[n_mels * frames]` (row-major `[n_mels, frames]`).
pub fn read_mel(dir: &Path, id: usize, n_mels: usize, frames: usize) -> Result<Vec<f32>> {
    let path = mel_path(dir, id);
    let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e))?;
    if bytes.len() != n_mels * frames * 2 {
        return Err(TrainError::File {
            path: path.display().to_string(),
            message: format!(
                "expected {} bytes, found {}",
                n_mels * frames * 2,
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect())
}

/// A clip's samples in [-1, 1].
pub fn read_audio(dir: &Path, id: usize) -> Result<Vec<f32>> {
    let path = audio_path(dir, id);
    let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e))?;
    Ok(bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32767.0)
        .collect())
}
