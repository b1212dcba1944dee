//! Symbolic music: notes on a beat grid, procedural compositions per style, the music21 corpus
//! (MIDI) and the arrangement that turns either into a renderable, describable piece.

pub mod arrange;
pub mod compose;
pub mod corpus;
pub mod grooves;
pub mod theory;

use serde::{Deserialize, Serialize};
use tutti_shared::prompt::{vocab, Mode};

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
            Family::Piano => vocab::PIANO,
            Family::ElectricPiano => vocab::ELECTRIC_PIANO,
            Family::Organ => vocab::ORGAN,
            Family::AcousticGuitar => vocab::ACOUSTIC_GUITAR,
            Family::ElectricGuitar => vocab::ELECTRIC_GUITAR,
            Family::Strings => vocab::STRINGS,
            Family::Flute => vocab::FLUTE,
            Family::SynthPad => vocab::SYNTH_PAD,
            Family::Bass => vocab::BASS,
            Family::Drums => vocab::DRUMS,
        }
    }

    /// General MIDI programs of the family (drums: unused, channel 10).
    pub fn programs(self) -> &'static [u8] {
        match self {
            Family::Piano => &[0, 1, 2],
            Family::ElectricPiano => &[4, 5],
            Family::Organ => &[16, 17, 19],
            Family::AcousticGuitar => &[24, 25],
            Family::ElectricGuitar => &[26, 27, 29, 30],
            Family::Strings => &[48, 49, 50, 40, 42],
            Family::Flute => &[73, 72],
            Family::SynthPad => &[88, 89, 90, 91, 94],
            Family::Bass => &[32, 33, 34, 38, 39],
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
    Pop,
    Jazz,
    Techno,
    Cinematic,
}

impl Style {
    /// The styles the composer writes (classical and folk also come from the corpus).
    pub const PROCEDURAL: [Style; 12] = [
        Style::Rock,
        Style::LofiHipHop,
        Style::House,
        Style::Trap,
        Style::Waltz,
        Style::Ambient,
        Style::Classical,
        Style::Folk,
        Style::Pop,
        Style::Jazz,
        Style::Techno,
        Style::Cinematic,
    ];

    /// The (subgenre, genre) wordings its captions pick from (`prompt::vocab`).
    pub fn wordings(self) -> vocab::Wordings {
        match self {
            Style::Rock => vocab::ROCK,
            Style::LofiHipHop => vocab::LOFI_HIP_HOP,
            Style::House => vocab::HOUSE,
            Style::Trap => vocab::TRAP,
            Style::Waltz => vocab::WALTZ,
            Style::Ambient => vocab::AMBIENT,
            Style::Classical => vocab::CLASSICAL,
            Style::Folk => vocab::FOLK,
            Style::Pop => vocab::POP,
            Style::Jazz => vocab::JAZZ,
            Style::Techno => vocab::TECHNO,
            Style::Cinematic => vocab::CINEMATIC,
        }
    }

    /// (subgenre, genre) words of the caption: its first wording.
    pub fn words(self) -> (&'static str, &'static str) {
        self.wordings().first().copied().unwrap_or(("", ""))
    }

    /// Tempo range in BPM (together 60-180).
    pub fn tempo_range(self) -> (f32, f32) {
        match self {
            Style::Rock => (95.0, 180.0),
            Style::LofiHipHop => (60.0, 95.0),
            Style::House => (115.0, 130.0),
            Style::Trap => (130.0, 175.0),
            Style::Waltz => (85.0, 170.0),
            Style::Ambient => (60.0, 90.0),
            Style::Classical => (60.0, 140.0),
            Style::Folk => (70.0, 160.0),
            Style::Pop => (85.0, 135.0),
            Style::Jazz => (80.0, 180.0),
            Style::Techno => (120.0, 145.0),
            Style::Cinematic => (60.0, 110.0),
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
