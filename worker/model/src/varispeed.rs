//! Varispeed playback: a clip rendered in another key, at a tempo and length scaled to match,
//! played back faster or slower (as a tape machine's varispeed does) so that what is heard is
//! the asked key, tempo and length. A family decides when to use it (the mel family: the
//! tonics its pack renders poorly, `families/mel/varispeed.rs`); the state carries it.

use serde::{Deserialize, Serialize};
use tutti_shared::encode::resample;
use tutti_shared::prompt::Controls;

use crate::Result;

/// How a generation is played back: the rendering is raised by `semitones` (lowered when
/// negative) and so sped up by `2^(semitones / 12)`; `duration_s` is the asked length.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Varispeed {
    pub semitones: i8,
    pub duration_s: f32,
}

/// The playback rates are rounded to this many hertz, so that the resampler's ratio has a
/// small numerator and denominator (0.1 cent off the exact ratio at 16 kHz).
const RATE_STEP: f64 = 50.0;

impl Varispeed {
    /// `(from, to)`: the rendering's samples are played as if at `from` Hz and resampled to
    /// the pack's `to` Hz.
    pub fn rates(self, sample_rate: u32) -> (u32, u32) {
        let exact = f64::from(sample_rate) * 2f64.powf(f64::from(self.semitones) / 12.0);
        (
            ((exact / RATE_STEP).round() * RATE_STEP) as u32,
            sample_rate,
        )
    }

    /// How much faster than rendered the clip plays (`from / to`).
    pub fn speed(self, sample_rate: u32) -> f64 {
        let (from, to) = self.rates(sample_rate);
        f64::from(from) / f64::from(to)
    }

    /// The controls to render with for `asked` played back this way: tempo divided by the
    /// speed, length multiplied by it, the tonic `semitones` lower.
    pub fn rendered(self, asked: &Controls, sample_rate: u32) -> Controls {
        let speed = self.speed(sample_rate);
        Controls {
            duration_s: (f64::from(asked.duration_s) * speed) as f32,
            bpm: asked.bpm.map(|b| (f64::from(b) / speed) as f32),
            key: asked
                .key
                .map(|k| (i16::from(k) - i16::from(self.semitones)).rem_euclid(12) as u8),
            mode: asked.mode,
        }
    }

    /// Plays a rendered mono clip back: `samples` samples (the asked length at `sample_rate`).
    pub fn play(self, wave: &[f32], sample_rate: u32, samples: usize) -> Result<Vec<f32>> {
        let (from, to) = self.rates(sample_rate);
        let mut out = resample(wave, 1, from, to)?;
        out.resize(samples, 0.0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playback_raises_a_tone_by_the_semitones_at_the_asked_length() {
        let sr = 16_000u32;
        let v = Varispeed {
            semitones: 1,
            duration_s: 2.0,
        };
        let speed = v.speed(sr);
        let rendered = (2.0 * speed * f64::from(sr)).round() as usize;
        let f = 440.0f64;
        let wave: Vec<f32> = (0..rendered)
            .map(|i| (0.5 * (std::f64::consts::TAU * f * i as f64 / f64::from(sr)).sin()) as f32)
            .collect();
        let out = v.play(&wave, sr, 32_000).unwrap();
        assert_eq!(out.len(), 32_000);
        // Zero crossings between 0.5 s and 1.5 s (away from the edges) count the frequency.
        let mid = &out[8_000..24_000];
        let crossings = mid
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        let heard = crossings as f64 / 2.0;
        let want = f * 2f64.powf(1.0 / 12.0); // A#4, 466.2 Hz
        assert!((heard - want).abs() < 2.0, "{heard} Hz, want {want}");
        let peak = mid.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.02, "{peak}");
    }
}
