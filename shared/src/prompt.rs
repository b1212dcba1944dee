//! The prompt builder: structured request fields -> prompt text, and numeric controls parsed out of
//! free text ("75 BPM", "in A minor") so that tempo and key are controls, not hopes.

use serde::{Deserialize, Serialize};

/// Major or minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Major,
    Minor,
}

/// Numeric conditioning values of one generation. `None` means "unknown": the model uses the
/// conditioner's learned unknown embedding.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Controls {
    /// Requested length in seconds (always known).
    pub duration_s: f32,
    /// Tempo in beats per minute.
    pub bpm: Option<f32>,
    /// Tonic pitch class, 0 = C, 1 = C#/Db, ..., 11 = B.
    pub key: Option<u8>,
    pub mode: Option<Mode>,
}
