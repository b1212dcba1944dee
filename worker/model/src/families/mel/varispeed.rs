//! Varispeed: a request in a key the model renders poorly is rendered in a nearby key it renders
//! well, at the tempo and length that playing the rendering back faster or slower (as a tape
//! machine's varispeed does) turns into the asked key, tempo and length.
//!
//! Why: the built-in model is heard in minor about twice as often in some tonics as in others
//! (issue 29; `scripts/eval/tonic_calibration_prompts.json`, 72 clips: C, C#, E, G, Bb and B
//! minor 25 of 36, the other six 12 of 36), and a pitch shift of a semitone keeps the mode and
//! moves the tonic. A semitone changes speed by 6%, which moves timbre far less than a listener
//! notices and is within the tempo a request may be off by.

use serde::{Deserialize, Serialize};
use tutti_shared::encode::resample;
use tutti_shared::prompt::{Controls, Mode};

use super::pack::ModeTonics;
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

/// The varispeed that serves `asked` from the nearest tonic `tonics` lists for its mode, at
/// most `max_semitones` away (the lower one on a tie), with the controls to render with; `None`
/// when the asked tonic is listed, the request names no tonic or no mode, the mode has no list,
/// no listed tonic is near enough, or the rendering would be longer than `max_duration_s`.
pub fn plan(
    asked: &Controls,
    tonics: &ModeTonics,
    max_semitones: u8,
    sample_rate: u32,
    max_duration_s: f32,
) -> Option<(Varispeed, Controls)> {
    let (tonic, mode) = (asked.key?, asked.mode?);
    let list = match mode {
        Mode::Major => &tonics.major,
        Mode::Minor => &tonics.minor,
    };
    if list.is_empty() || list.iter().any(|t| t.0 == tonic) {
        return None;
    }
    // Semitones from the listed tonic up to the asked one, in -5..=6; the smallest shift
    // wins, and of two equally near the one below (played faster).
    let semitones = list
        .iter()
        .map(|t| ((i16::from(tonic) - i16::from(t.0) + 5).rem_euclid(12) - 5) as i8)
        .min_by_key(|s| (s.unsigned_abs(), *s < 0))?;
    if semitones.unsigned_abs() > max_semitones {
        return None;
    }
    let v = Varispeed {
        semitones,
        duration_s: asked.duration_s,
    };
    let rendered = v.rendered(asked, sample_rate);
    (rendered.duration_s <= max_duration_s).then_some((v, rendered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::mel::pack::Tonic;

    fn asked(key: Option<u8>, mode: Option<Mode>) -> Controls {
        Controls {
            duration_s: 10.0,
            bpm: Some(80.0),
            key,
            mode,
        }
    }

    #[test]
    fn the_nearest_listed_tonic_serves_an_unlisted_one() {
        let tonics = ModeTonics {
            major: vec![],
            minor: [0, 1, 4, 7, 10, 11].map(Tonic).to_vec(), // C C# E G Bb B
        };
        let plan = |key, mode| plan(&asked(key, mode), &tonics, 1, 16_000, 30.0);
        // D minor from C# minor, a semitone up: rendered slower and longer.
        let (v, r) = plan(Some(2), Some(Mode::Minor)).unwrap();
        assert_eq!(v.semitones, 1);
        assert_eq!((r.key, r.mode), (Some(1), Some(Mode::Minor)));
        assert_eq!(v.rates(16_000), (16_950, 16_000));
        assert!((r.duration_s - 10.0 * 16_950.0 / 16_000.0).abs() < 1e-4);
        assert!((r.bpm.unwrap() - 80.0 * 16_000.0 / 16_950.0).abs() < 1e-4);
        // A minor from Bb minor, a semitone down; Eb from E (nearer than C#).
        let (v, r) = plan(Some(9), Some(Mode::Minor)).unwrap();
        assert_eq!((v.semitones, r.key), (-1, Some(10)));
        assert_eq!(v.rates(16_000), (15_100, 16_000));
        assert_eq!(plan(Some(3), Some(Mode::Minor)).unwrap().0.semitones, -1);
        // Listed, no list for the mode, no tonic, no mode: as asked.
        for (key, mode) in [
            (Some(4), Some(Mode::Minor)),
            (Some(2), Some(Mode::Major)),
            (None, Some(Mode::Minor)),
            (Some(2), None),
        ] {
            assert_eq!(plan(key, mode), None, "{key:?} {mode:?}");
        }
        // Too far, or too long to render.
        let far = ModeTonics {
            major: vec![],
            minor: vec![Tonic(7)],
        };
        assert_eq!(plan_far(&far, 2), None);
        assert_eq!(plan_far(&far, 5).unwrap().0.semitones, -5);
        let long = Controls {
            duration_s: 29.0,
            ..asked(Some(2), Some(Mode::Minor))
        };
        assert_eq!(plan_long(&long, &tonics), None);
    }

    fn plan_far(tonics: &ModeTonics, max: u8) -> Option<(Varispeed, Controls)> {
        plan(
            &asked(Some(2), Some(Mode::Minor)),
            tonics,
            max,
            16_000,
            30.0,
        )
    }

    fn plan_long(c: &Controls, tonics: &ModeTonics) -> Option<(Varispeed, Controls)> {
        plan(c, tonics, 1, 16_000, 30.0)
    }

    #[test]
    fn a_tie_is_served_from_below() {
        // D is two semitones from both C and E: rendered in C, played faster.
        let tonics = ModeTonics {
            major: vec![],
            minor: vec![Tonic(0), Tonic(4)],
        };
        let (v, _) = plan(&asked(Some(2), Some(Mode::Minor)), &tonics, 2, 16_000, 30.0).unwrap();
        assert_eq!(v.semitones, 2);
    }

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
