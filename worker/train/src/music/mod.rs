//! Symbolic music: notes on a beat grid, procedural compositions per style, the music21 corpus
//! (MIDI) and the arrangement that turns either into a renderable, describable piece.

pub mod arrange;
pub mod compose;
pub mod corpus;
pub mod grooves;
pub mod theory;

use serde::{Deserialize, Serialize};
use tutti_shared::prompt::Mode;

/// One note; times in beats (quarter notes) from the start of the piece.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Note {
    pub start: f64,
    pub dur: f64,
    pub pitch: u8,
    pub vel: u8,
    pub track: usize,
}

/// Instrument families (what captions name and the evaluation classifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Piano,
    ElectricPiano,
    Organ,
    AcousticGuitar,
    ElectricGuitar,
    Strings,
    Flute,
    SynthPad,
    Bass,
    Drums,
}

impl Family {
    /// The caption word.
    pub fn word(self) -> &'static str {
        match self {
            Family::Piano => "piano",
            Family::ElectricPiano => "electric piano",
            Family::Organ => "organ",
            Family::AcousticGuitar => "acoustic guitar",
            Family::ElectricGuitar => "electric guitar",
            Family::Strings => "strings",
            Family::Flute => "flute",
            Family::SynthPad => "synth pad",
            Family::Bass => "bass",
            Family::Drums => "drums",
        }
    }

    /// General MIDI programs of the family (drums: unused, channel 10).
    pub fn programs(self) -> &'static [u8] {
        match self {
            Family::Piano => &[0, 1],
            Family::ElectricPiano => &[4, 5],
            Family::Organ => &[16, 19],
            Family::AcousticGuitar => &[24, 25],
            Family::ElectricGuitar => &[26, 27, 29],
            Family::Strings => &[48, 49],
            Family::Flute => &[73],
            Family::SynthPad => &[88, 89, 90],
            Family::Bass => &[32, 33, 38],
            Family::Drums => &[0],
        }
    }

    /// Melodic families a lead or harmony part may use.
    pub const MELODIC: [Family; 8] = [
        Family::Piano,
        Family::ElectricPiano,
        Family::Organ,
        Family::AcousticGuitar,
        Family::ElectricGuitar,
        Family::Strings,
        Family::Flute,
        Family::SynthPad,
    ];
}

/// A part of the arrangement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Track {
    pub family: Family,
    pub program: u8,
    /// Channel volume (CC 7).
    pub volume: u8,
}

/// Musical styles; each has its tempo range, grooves and palette.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    Rock,
    LofiHipHop,
    House,
    Trap,
    Waltz,
    Ambient,
    Classical,
    Folk,
}

impl Style {
    pub const PROCEDURAL: [Style; 6] = [
        Style::Rock,
        Style::LofiHipHop,
        Style::House,
        Style::Trap,
        Style::Waltz,
        Style::Ambient,
    ];

    /// (subgenre, genre) words of the caption.
    pub fn words(self) -> (&'static str, &'static str) {
        match self {
            Style::Rock => ("", "rock"),
            Style::LofiHipHop => ("lo-fi", "hip hop"),
            Style::House => ("", "house"),
            Style::Trap => ("", "trap"),
            Style::Waltz => ("", "waltz"),
            Style::Ambient => ("", "ambient"),
            Style::Classical => ("", "classical"),
            Style::Folk => ("", "folk"),
        }
    }

    /// Tempo range in BPM (within 60-170).
    pub fn tempo_range(self) -> (f32, f32) {
        match self {
            Style::Rock => (95.0, 160.0),
            Style::LofiHipHop => (65.0, 95.0),
            Style::House => (115.0, 130.0),
            Style::Trap => (130.0, 170.0),
            Style::Waltz => (85.0, 170.0),
            Style::Ambient => (60.0, 90.0),
            Style::Classical => (60.0, 140.0),
            Style::Folk => (70.0, 160.0),
        }
    }
}

/// Loudness character of a performance (velocities), used by the mood words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dynamics {
    Soft,
    Medium,
    Loud,
}

/// A fully arranged piece, ready to render and to describe.
#[derive(Debug, Clone)]
pub struct Piece {
    pub style: Style,
    pub source: String,
    pub bpm: f32,
    pub beats_per_bar: u32,
    pub tonic: u8,
    pub mode: Mode,
    pub dynamics: Dynamics,
    /// Tracks; a track whose family is `Drums` plays on channel 10.
    pub tracks: Vec<Track>,
    pub notes: Vec<Note>,
    /// Section names with their start beat, in order (empty: no structure words).
    pub sections: Vec<(f64, String)>,
}

impl Piece {
    /// Seconds per beat.
    pub fn beat_s(&self) -> f64 {
        60.0 / self.bpm as f64
    }

    /// The instrument families that sound within the first `seconds`, in track order, deduplicated.
    pub fn families_heard(&self, seconds: f64) -> Vec<Family> {
        let limit = seconds / self.beat_s();
        let mut out = Vec::new();
        for (i, t) in self.tracks.iter().enumerate() {
            let plays = self.notes.iter().any(|n| n.track == i && n.start < limit);
            if plays && !out.contains(&t.family) {
                out.push(t.family);
            }
        }
        out
    }

    /// Sections that start within the first `seconds`.
    pub fn sections_heard(&self, seconds: f64) -> Vec<String> {
        let limit = seconds / self.beat_s();
        self.sections
            .iter()
            .filter(|(b, _)| *b < limit - 2.0 || *b == 0.0)
            .map(|(_, s)| s.clone())
            .collect()
    }
}
