//! Which requests the mel family renders by varispeed ([`crate::varispeed`]): a key the model
//! renders poorly is rendered in a nearby key it renders well.
//!
//! Why: the built-in model is heard in minor far more often in some tonics than in others
//! (issue 29; `scripts/eval/tonic_calibration_wide_prompts.json`, every minor key in 8 settings
//! over 2 seeds: C#, D, E, G and A minor 56 of 80 clips, the other seven 42 of 112), and a pitch
//! shift of a semitone keeps the mode and moves the tonic. A semitone changes speed by 6%, which moves timbre far less than a listener
//! notices, and the tempo is rendered scaled so that the asked one is heard.

use tutti_shared::prompt::{Controls, Mode};

use super::pack::ModeTonics;
use crate::varispeed::Varispeed;

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
        let g = ModeTonics {
            major: vec![],
            minor: vec![Tonic(7)],
        };
        let d_minor = asked(Some(2), Some(Mode::Minor));
        assert_eq!(super::plan(&d_minor, &g, 2, 16_000, 30.0), None);
        let (v, _) = super::plan(&d_minor, &g, 5, 16_000, 30.0).unwrap();
        assert_eq!(v.semitones, -5);
        let long = Controls {
            duration_s: 29.0,
            ..d_minor
        };
        assert_eq!(super::plan(&long, &tonics, 1, 16_000, 30.0), None);
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
}
