//! The music21 corpus, exported to MIDI by `scripts/export_music21.py`: `index.jsonl` (key and
//! mode from music21's analysis, meter, source) and one MIDI file per tune, read with `midly`.

use std::path::{Path, PathBuf};

use midly::{MidiMessage, Smf, Timing, TrackEventKind};
use serde::Deserialize;

use super::Note;
use crate::{file_err, Result, TrainError};

/// One line of the corpus index.
#[derive(Debug, Clone, Deserialize)]
pub struct CorpusEntry {
    pub file: String,
    pub source: String,
    pub tonic: u8,
    pub mode: String,
    pub beats_per_bar: u32,
}

/// The exported corpus.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub dir: PathBuf,
    pub entries: Vec<CorpusEntry>,
}

impl Corpus {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("index.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
        let entries = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str::<CorpusEntry>(l).ok())
            .filter(|e| e.mode == "major" || e.mode == "minor")
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// The notes of a tune, one track per MIDI track that has notes; times in beats.
    pub fn notes(&self, entry: &CorpusEntry) -> Result<Vec<Note>> {
        let path = self.dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e))?;
        read_midi(&bytes).map_err(|message| TrainError::Midi {
            path: path.display().to_string(),
            message,
        })
    }
}

/// Notes of a standard MIDI file (metrical timing), one track index per track with notes.
pub fn read_midi(bytes: &[u8]) -> Result<Vec<Note>, String> {
    let smf = Smf::parse(bytes).map_err(|e| e.to_string())?;
    let tpq = match smf.header.timing {
        Timing::Metrical(t) => t.as_int() as f64,
        Timing::Timecode(..) => return Err("timecode timing is not supported".into()),
    };
    let mut notes = Vec::new();
    let mut track_index = 0;
    for track in &smf.tracks {
        let mut tick: u64 = 0;
        let mut open: Vec<(u8, u64, u8)> = Vec::new();
        let mut found = false;
        for ev in track {
            tick += ev.delta.as_int() as u64;
            let TrackEventKind::Midi { channel, message } = ev.kind else {
                continue;
            };
            if channel.as_int() == 9 {
                continue;
            }
            let (key, vel, on) = match message {
                MidiMessage::NoteOn { key, vel } => (key.as_int(), vel.as_int(), vel.as_int() > 0),
                MidiMessage::NoteOff { key, vel } => (key.as_int(), vel.as_int(), false),
                _ => continue,
            };
            if on {
                open.push((key, tick, vel));
            } else if let Some(i) = open.iter().position(|(k, _, _)| *k == key) {
                let (k, start, v) = open.remove(i);
                if tick > start {
                    notes.push(Note {
                        start: start as f64 / tpq,
                        dur: (tick - start) as f64 / tpq,
                        pitch: k,
                        vel: v.max(1),
                        track: track_index,
                    });
                    found = true;
                }
            }
        }
        if found {
            track_index += 1;
        }
    }
    notes.sort_by(|a, b| a.start.total_cmp(&b.start));
    Ok(notes)
}
