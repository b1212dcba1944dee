//! Drum grooves per style (General MIDI percussion on channel 10) and swing.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Note, Style};

pub const KICK: u8 = 36;
pub const SNARE: u8 = 38;
pub const CLAP: u8 = 39;
pub const HAT: u8 = 42;
pub const OPEN_HAT: u8 = 46;
pub const CRASH: u8 = 49;
pub const RIDE: u8 = 51;

/// How much of the kit a section plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intensity {
    None,
    /// Hats or ride only.
    Light,
    Full,
    /// A snare roll that speeds up (a build).
    Roll,
}

/// Swing: offbeat sixteenths (lo-fi) are late by a fraction of a beat.
pub fn swing(style: Style, beat: f64) -> f64 {
    if style != Style::LofiHipHop {
        return beat;
    }
    let frac = (beat * 4.0).round() as i64 % 2;
    if frac == 1 {
        beat + 0.07
    } else {
        beat
    }
}

fn hit(out: &mut Vec<Note>, track: usize, beat: f64, pitch: u8, vel: i32) {
    out.push(Note {
        start: beat,
        dur: 0.25,
        pitch,
        vel: vel.clamp(1, 127) as u8,
        track,
    });
}

/// One bar of the style's groove starting at `bar_start` (beats), `bpb` beats long.
#[allow(clippy::too_many_arguments)]
pub fn bar(
    out: &mut Vec<Note>,
    rng: &mut ChaCha8Rng,
    style: Style,
    track: usize,
    bar_start: f64,
    bpb: u32,
    vel: i32,
    intensity: Intensity,
    crash: bool,
) {
    let b = bar_start;
    let v = |rng: &mut ChaCha8Rng, base: i32| base + rng.random_range(-6..=6);
    if crash && intensity == Intensity::Full {
        hit(out, track, b, CRASH, vel);
    }
    match intensity {
        Intensity::None => {}
        Intensity::Roll => {
            // Quarters, then eighths, then sixteenths over the bar; rising velocity.
            let steps = [1.0, 0.5, 0.25];
            let mut t = 0.0;
            let mut i = 0;
            while t < bpb as f64 - 1e-9 {
                let stage = ((t / bpb as f64) * 3.0) as usize;
                let x = v(rng, vel - 30 + (i * 3).min(40));
                hit(out, track, b + t, SNARE, x);
                t += steps[stage.min(2)];
                i += 1;
            }
        }
        Intensity::Light => {
            let step = if style == Style::Trap { 0.5 } else { 1.0 };
            let pitch = if style == Style::Rock { RIDE } else { HAT };
            let mut t = 0.0;
            while t < bpb as f64 - 1e-9 {
                let x = v(rng, vel - 20);
                hit(out, track, swing(style, b + t), pitch, x);
                t += step;
            }
        }
        Intensity::Full => full_bar(out, rng, style, track, b, bpb, vel),
    }
}

fn full_bar(
    out: &mut Vec<Note>,
    rng: &mut ChaCha8Rng,
    style: Style,
    track: usize,
    b: f64,
    bpb: u32,
    vel: i32,
) {
    let v = |rng: &mut ChaCha8Rng, base: i32| base + rng.random_range(-6..=6);
    match style {
        Style::Rock => {
            for e in 0..(bpb * 2) {
                let x = v(rng, vel - 15 + if e % 2 == 0 { 8 } else { 0 });
                hit(out, track, b + e as f64 * 0.5, HAT, x);
            }
            for (t, p) in [
                (0.0, KICK),
                (1.0, SNARE),
                (2.0, KICK),
                (2.5, KICK),
                (3.0, SNARE),
            ] {
                let x = v(rng, vel);
                hit(out, track, b + t, p, x);
            }
        }
        Style::LofiHipHop => {
            for s in 0..8 {
                let t = s as f64 * 0.5;
                let x = v(rng, vel - 25 + if s % 2 == 0 { 6 } else { 0 });
                hit(out, track, swing(style, b + t), HAT, x);
            }
            for (t, p) in [
                (0.0, KICK),
                (1.0, SNARE),
                (1.75, KICK),
                (2.5, KICK),
                (3.0, SNARE),
            ] {
                let x = v(rng, vel - 5);
                hit(out, track, swing(style, b + t), p, x);
            }
        }
        Style::House => {
            for q in 0..4 {
                let x = v(rng, vel);
                hit(out, track, b + q as f64, KICK, x);
                let x = v(rng, vel - 15);
                hit(out, track, b + q as f64 + 0.5, OPEN_HAT, x);
                if q % 2 == 1 {
                    let x = v(rng, vel - 5);
                    hit(out, track, b + q as f64, CLAP, x);
                }
            }
        }
        Style::Trap => {
            // Half-time: kick on 1 (and a syncopated one), snare/clap on 3, rolling hats.
            let mut t = 0.0;
            while t < 4.0 - 1e-9 {
                let roll = rng.random_bool(0.18);
                let step = if roll { 0.125 } else { 0.25 };
                let n = if roll { 4 } else { 2 };
                for k in 0..n {
                    let x = v(rng, vel - 22 + if k == 0 { 6 } else { 0 });
                    hit(out, track, b + t + k as f64 * step, HAT, x);
                }
                t += 0.5;
            }
            let kick2 = [1.5, 1.75, 2.5][rng.random_range(0..3)];
            for (t, p) in [(0.0, KICK), (kick2, KICK), (2.0, SNARE), (2.0, CLAP)] {
                let x = v(rng, vel);
                hit(out, track, b + t, p, x);
            }
        }
        Style::Waltz | Style::Classical | Style::Folk | Style::Ambient => {
            // A light kit that follows the meter: kick on 1, snare on the last beat, hats on beats.
            for q in 0..bpb {
                let x = v(rng, vel - 20);
                hit(out, track, b + q as f64, HAT, x);
            }
            let x = v(rng, vel - 5);
            hit(out, track, b, KICK, x);
            let x = v(rng, vel - 10);
            hit(out, track, b + (bpb - 1) as f64, SNARE, x);
        }
    }
}
