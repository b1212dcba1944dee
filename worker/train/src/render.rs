//! Rendering with a SoundFont synthesizer (`rustysynth`): notes -> 16 kHz mono, loudness and peak
//! normalised.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustysynth::{SoundFont, Synthesizer, SynthesizerSettings};

use super::music::{Family, Piece};
use super::{file_err, Result, TrainError};

/// Target RMS of a rendered clip (-20 dBFS).
pub const TARGET_RMS: f32 = 0.1;
/// Peak ceiling after loudness normalisation.
pub const PEAK: f32 = 0.95;

/// A loaded SoundFont; cheap to share across renders.
#[derive(Clone)]
pub struct Renderer {
    font: Arc<SoundFont>,
    sample_rate: u32,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("sample_rate", &self.sample_rate)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    pub fn load(path: &Path, sample_rate: u32) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
        let font = SoundFont::new(&mut BufReader::new(file))
            .map_err(|e| TrainError::SoundFont(format!("{}: {e}", path.display())))?;
        Ok(Self {
            font: Arc::new(font),
            sample_rate,
        })
    }

    /// Renders the first `seconds` of `piece`: mono, normalised to [`TARGET_RMS`] with peaks at
    /// most [`PEAK`]. Returns the samples and the RMS before normalisation.
    pub fn render(&self, piece: &Piece, seconds: f64) -> Result<(Vec<f32>, f32)> {
        let mut settings = SynthesizerSettings::new(self.sample_rate as i32);
        settings.enable_reverb_and_chorus = true;
        let mut synth = Synthesizer::new(&self.font, &settings)
            .map_err(|e| TrainError::SoundFont(format!("synthesizer: {e}")))?;
        let channel_of = |track: usize| -> i32 {
            if piece.tracks[track].family == Family::Drums {
                9
            } else {
                let c = track as i32 % 15;
                if c >= 9 {
                    c + 1
                } else {
                    c
                }
            }
        };
        for (i, t) in piece.tracks.iter().enumerate() {
            let ch = channel_of(i);
            if t.family != Family::Drums {
                synth.process_midi_message(ch, 0xC0, t.program as i32, 0);
            }
            synth.process_midi_message(ch, 0xB0, 7, t.volume as i32);
        }
        let sr = self.sample_rate as f64;
        let total = (seconds * sr).round() as usize;
        let beat = piece.beat_s();
        // Events: (sample, is_on, channel, key, velocity); note-offs sort before note-ons.
        let mut events: Vec<(usize, bool, i32, i32, i32)> =
            Vec::with_capacity(piece.notes.len() * 2);
        for n in &piece.notes {
            if n.track >= piece.tracks.len() {
                continue;
            }
            let on = (n.start * beat * sr).round().max(0.0) as usize;
            if on >= total {
                continue;
            }
            let off = ((n.start + n.dur) * beat * sr).round() as usize;
            let ch = channel_of(n.track);
            events.push((on, true, ch, n.pitch as i32, n.vel as i32));
            events.push((off.max(on + 1), false, ch, n.pitch as i32, 0));
        }
        events.sort_by_key(|e| (e.0, e.1));
        let mut left = vec![0f32; total];
        let mut right = vec![0f32; total];
        let mut pos = 0;
        for (at, on, ch, key, vel) in events {
            let at = at.min(total);
            if at > pos {
                synth.render(&mut left[pos..at], &mut right[pos..at]);
                pos = at;
            }
            if pos >= total {
                break;
            }
            if on {
                synth.note_on(ch, key, vel);
            } else {
                synth.note_off(ch, key);
            }
        }
        if pos < total {
            synth.render(&mut left[pos..], &mut right[pos..]);
        }
        let mut mono: Vec<f32> = left
            .iter()
            .zip(&right)
            .map(|(l, r)| 0.5 * (l + r))
            .collect();
        let rms = normalise(&mut mono);
        Ok((mono, rms))
    }
}

/// Scales to [`TARGET_RMS`], then down to [`PEAK`] if a peak exceeds it; returns the input RMS.
pub fn normalise(x: &mut [f32]) -> f32 {
    let rms =
        (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt() as f32;
    if rms > 1e-6 {
        let g = TARGET_RMS / rms;
        x.iter_mut().for_each(|v| *v *= g);
    }
    let peak = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    if peak > PEAK {
        let g = PEAK / peak;
        x.iter_mut().for_each(|v| *v *= g);
    }
    rms
}
