//! The one gain stage between a model's raw waveform and the encoder: EBU R128 integrated
//! loudness (ITU-R BS.1770, measured with the `ebur128` crate) brought to a per-request target,
//! with a true-peak ceiling held by a look-ahead limiter. The models hand over their waveforms
//! unscaled (non-finite samples zeroed); nothing else in tutti changes a level.
//!
//! How: measure the clip's integrated loudness, apply the gain that brings it to the target,
//! then limit: a gain envelope that never lets the 4x-oversampled (true) peak past the ceiling,
//! reaching its reduction over a few milliseconds before a peak and releasing over ~80 ms.
//! Limiting lowers the loudness, so the gain is corrected and the pass repeated until the
//! result is within a hundredth of an LU of the target: a secant step on the loudness the last
//! two passes gave (with heavy limiting a dB more gain brings much less than a dB more
//! loudness). A last static trim makes the ceiling hold exactly as `ebur128`'s true-peak meter
//! reads it.

use crate::audio::AudioError;

/// The default integrated loudness target (what the big streaming platforms normalise to).
pub const DEFAULT_TARGET_LUFS: f32 = -14.0;
/// The targets a request may ask for, inclusive.
pub const TARGET_RANGE_LUFS: (f32, f32) = (-40.0, -8.0);
/// The true-peak ceiling every output keeps to (headroom for a lossy encoder's overshoot).
pub const TRUE_PEAK_CEILING_DBTP: f32 = -1.0;

/// Below this the clip counts as silence: BS.1770's absolute gate.
const SILENCE_LUFS: f64 = -70.0;
/// Look-ahead (and attack) of the limiter.
const LOOKAHEAD_S: f64 = 0.005;
/// Release time constant of the limiter.
const RELEASE_S: f64 = 0.08;
/// Gain-correction passes at most.
const MAX_PASSES: usize = 16;
/// The most gain one correction adds, dB.
const MAX_STEP_DB: f64 = 12.0;
/// Close enough to the target to stop correcting.
const TOLERANCE_LU: f64 = 0.01;

/// The loudness of a clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loudness {
    /// Integrated loudness in LUFS; `None` for silence (nothing above the absolute gate).
    pub integrated_lufs: Option<f32>,
    /// The highest true peak over the channels in dBTP; `None` for digital silence.
    pub true_peak_dbtp: Option<f32>,
}

/// Whether `target` is a loudness target a request may ask for.
pub fn target_in_range(target: f32) -> bool {
    target.is_finite() && (TARGET_RANGE_LUFS.0..=TARGET_RANGE_LUFS.1).contains(&target)
}

/// Measures integrated loudness and true peak of `samples` (`channels` interleaved).
pub fn measure(samples: &[f32], channels: u16, sample_rate: u32) -> Result<Loudness, AudioError> {
    check(samples, channels, sample_rate)?;
    let (lufs, peak) = meter(samples, channels, sample_rate)?;
    Ok(Loudness {
        integrated_lufs: (lufs > SILENCE_LUFS).then_some(lufs as f32),
        true_peak_dbtp: (peak > 0.0).then(|| (20.0 * peak.log10()) as f32),
    })
}

/// Brings `samples` (`channels` interleaved) to `target_lufs` integrated loudness with true
/// peaks at most [`TRUE_PEAK_CEILING_DBTP`], in place, and returns what the result measures.
/// Non-finite samples become zero; silence stays silence. One gain for all channels at each
/// instant (the stereo image is kept).
pub fn normalize(
    samples: &mut [f32],
    channels: u16,
    sample_rate: u32,
    target_lufs: f32,
) -> Result<Loudness, AudioError> {
    check(samples, channels, sample_rate)?;
    if !target_in_range(target_lufs) {
        return Err(AudioError::Format(format!(
            "loudness target {target_lufs} LUFS is outside {} to {}",
            TARGET_RANGE_LUFS.0, TARGET_RANGE_LUFS.1
        )));
    }
    for s in samples.iter_mut() {
        if !s.is_finite() {
            *s = 0.0;
        }
    }
    let measured = integrated(samples, channels, sample_rate)?;
    if measured <= SILENCE_LUFS {
        return measure(samples, channels, sample_rate);
    }
    let target = f64::from(target_lufs);
    let ceiling = 10f64.powf(f64::from(TRUE_PEAK_CEILING_DBTP) / 20.0);
    let raw = samples.to_vec();
    let limiter = Limiter::new(channels, sample_rate, ceiling as f32);
    let mut gain_db = target - measured;
    let mut best: Option<(f64, Vec<f32>)> = None;
    let mut last: Option<(f64, f64)> = None;
    for _ in 0..MAX_PASSES {
        let g = 10f64.powf(gain_db / 20.0) as f32;
        let mut out: Vec<f32> = raw.iter().map(|s| s * g).collect();
        limiter.apply(&mut out);
        let lufs = integrated(&out, channels, sample_rate)?;
        let miss = target - lufs;
        if best.as_ref().is_none_or(|(m, _)| miss.abs() < m.abs()) {
            best = Some((miss, out));
        }
        if miss.abs() < TOLERANCE_LU {
            break;
        }
        // LU of loudness per dB of gain, from the last two passes: 1 without limiting, less
        // the more the limiter holds back.
        let slope = match last {
            Some((g0, l0)) if (gain_db - g0).abs() > 1e-6 => {
                ((lufs - l0) / (gain_db - g0)).clamp(0.05, 1.0)
            }
            _ => 1.0,
        };
        last = Some((gain_db, lufs));
        gain_db += (miss / slope).clamp(-MAX_STEP_DB, MAX_STEP_DB);
    }
    let (_, out) = best.expect("at least one pass");
    samples.copy_from_slice(&out);
    // The limiter works on its own interpolation; the meter's may read a hair higher.
    let (_, peak) = meter(samples, channels, sample_rate)?;
    if peak > ceiling {
        let trim = (ceiling / peak) as f32;
        samples.iter_mut().for_each(|s| *s *= trim);
    }
    measure(samples, channels, sample_rate)
}

fn check(samples: &[f32], channels: u16, sample_rate: u32) -> Result<(), AudioError> {
    if channels == 0 || !samples.len().is_multiple_of(usize::from(channels)) {
        return Err(AudioError::Channels {
            samples: samples.len(),
            channels,
        });
    }
    if sample_rate == 0 {
        return Err(AudioError::Format("sample rate 0".into()));
    }
    Ok(())
}

/// Integrated loudness (LUFS, `-inf` for silence) and the highest true peak (linear).
fn meter(samples: &[f32], channels: u16, sample_rate: u32) -> Result<(f64, f64), AudioError> {
    meter_with(samples, channels, sample_rate, true)
}

/// Integrated loudness alone (the true-peak meter's oversampling is most of a meter's cost).
fn integrated(samples: &[f32], channels: u16, sample_rate: u32) -> Result<f64, AudioError> {
    Ok(meter_with(samples, channels, sample_rate, false)?.0)
}

fn meter_with(
    samples: &[f32],
    channels: u16,
    sample_rate: u32,
    true_peak: bool,
) -> Result<(f64, f64), AudioError> {
    use ebur128::{EbuR128, Mode};
    let err = |e: ebur128::Error| AudioError::Format(format!("loudness meter: {e}"));
    let mode = if true_peak {
        Mode::I | Mode::TRUE_PEAK
    } else {
        Mode::I
    };
    let mut m = EbuR128::new(u32::from(channels), sample_rate, mode).map_err(err)?;
    m.add_frames_f32(samples).map_err(err)?;
    let lufs = m.loudness_global().map_err(err)?;
    let mut peak = 0f64;
    if true_peak {
        for c in 0..u32::from(channels) {
            peak = peak.max(m.true_peak(c).map_err(err)?);
        }
    }
    Ok((lufs, peak))
}

/// Taps each side of the interpolated point (12 in all per phase, as BS.1770's filter).
const HALF_TAPS: usize = 6;
/// Oversampling of the limiter's peak detector.
const PHASES: usize = 4;

/// A look-ahead true-peak limiter for one clip.
struct Limiter {
    channels: usize,
    ceiling: f32,
    lookahead: usize,
    release: f32,
    /// Interpolation taps of the phases 1/4, 2/4, 3/4 between two samples, for the samples
    /// `n - HALF_TAPS + 1 ..= n + HALF_TAPS`.
    taps: [[f32; 2 * HALF_TAPS]; PHASES - 1],
    /// The largest sum of absolute taps: a bound on interpolated peaks over sample peaks.
    gain_bound: f32,
}

impl Limiter {
    fn new(channels: u16, sample_rate: u32, ceiling: f32) -> Self {
        let mut taps = [[0f32; 2 * HALF_TAPS]; PHASES - 1];
        for (p, row) in taps.iter_mut().enumerate() {
            let frac = (p + 1) as f64 / PHASES as f64;
            let mut sum = 0f64;
            let mut vals = [0f64; 2 * HALF_TAPS];
            for (j, v) in vals.iter_mut().enumerate() {
                // Sample n + k, k = j - HALF_TAPS + 1, seen from the point n + frac.
                let t = frac - (j as f64 - HALF_TAPS as f64 + 1.0);
                let sinc = if t.abs() < 1e-12 {
                    1.0
                } else {
                    (std::f64::consts::PI * t).sin() / (std::f64::consts::PI * t)
                };
                // A Hann window over the taps' span.
                let w = 0.5 + 0.5 * (std::f64::consts::PI * t / HALF_TAPS as f64).cos();
                *v = sinc * w;
                sum += *v;
            }
            for (o, v) in row.iter_mut().zip(vals) {
                *o = (v / sum) as f32;
            }
        }
        let gain_bound = taps
            .iter()
            .map(|r| r.iter().map(|t| t.abs()).sum::<f32>())
            .fold(1f32, f32::max);
        let rate = f64::from(sample_rate);
        Self {
            channels: usize::from(channels),
            ceiling,
            lookahead: ((rate * LOOKAHEAD_S).round() as usize).max(2 * HALF_TAPS),
            release: (-1.0 / (rate * RELEASE_S)).exp() as f32,
            taps,
            gain_bound,
        }
    }

    /// The true (interpolated) peak of each frame over its channels, for the frames whose
    /// peak could pass the ceiling; 0 elsewhere.
    fn frame_peaks(&self, samples: &[f32]) -> Vec<f32> {
        let ch = self.channels;
        let frames = samples.len() / ch;
        let sample_peak: Vec<f32> = samples
            .chunks_exact(ch)
            .map(|f| f.iter().fold(0f32, |m, s| m.max(s.abs())))
            .collect();
        // The largest sample peak among the taps of each frame's interpolation.
        let near = sliding_max(&sample_peak, HALF_TAPS - 1, HALF_TAPS);
        let at = |i: isize, c: usize| -> f32 {
            if i < 0 || i as usize >= frames {
                0.0
            } else {
                samples[i as usize * ch + c]
            }
        };
        (0..frames)
            .map(|n| {
                let mut peak = sample_peak[n];
                if near[n] * self.gain_bound <= self.ceiling {
                    return peak;
                }
                for c in 0..ch {
                    for row in &self.taps {
                        let mut v = 0f32;
                        for (j, t) in row.iter().enumerate() {
                            v += t * at(n as isize + j as isize - HALF_TAPS as isize + 1, c);
                        }
                        peak = peak.max(v.abs());
                    }
                }
                peak
            })
            .collect()
    }

    /// Limits `samples` in place so that no frame's true peak passes the ceiling.
    fn apply(&self, samples: &mut [f32]) {
        let ch = self.channels;
        let peaks = self.frame_peaks(samples);
        if peaks.iter().all(|p| *p <= self.ceiling) {
            return;
        }
        // The gain each frame needs on its own.
        let need: Vec<f32> = peaks
            .iter()
            .map(|p| {
                if *p > self.ceiling {
                    self.ceiling / p
                } else {
                    1.0
                }
            })
            .collect();
        let w = self.lookahead;
        // Held: the least need over the last `w` frames, released slowly after.
        let held = sliding_min(&need, w - 1, 0);
        let mut env = Vec::with_capacity(held.len());
        let mut g = 1f32;
        for h in held {
            g = (1.0 - self.release) + self.release * g;
            g = g.min(h);
            env.push(g);
        }
        // Smoothed: the mean of the next `w` frames of the held envelope. Every one of them
        // held this frame's need, so the mean never exceeds it.
        // Past the end the envelope stays where it ended.
        let last = *env.last().expect("a frame at least");
        let at = |j: usize| f64::from(*env.get(j).unwrap_or(&last));
        let mut sum: f64 = (0..w).map(at).sum();
        for n in 0..env.len() {
            let gain = (sum / w as f64) as f32;
            let gain = gain.min(need[n]);
            for s in &mut samples[n * ch..(n + 1) * ch] {
                *s *= gain;
            }
            sum += at(n + w) - at(n);
        }
    }
}

/// For each index `i`, the maximum of `v[i - before ..= i + after]` (clipped to the slice).
fn sliding_max(v: &[f32], before: usize, after: usize) -> Vec<f32> {
    sliding(v, before, after, |a, b| a >= b)
}

/// For each index `i`, the minimum of `v[i - before ..= i + after]` (clipped to the slice).
fn sliding_min(v: &[f32], before: usize, after: usize) -> Vec<f32> {
    sliding(v, before, after, |a, b| a <= b)
}

/// A monotonic-deque sliding extreme: `keeps(a, b)` when `a` dominates `b`.
fn sliding(v: &[f32], before: usize, after: usize, keeps: impl Fn(f32, f32) -> bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.len());
    let mut dq: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut next = 0;
    for i in 0..v.len() {
        let hi = (i + after).min(v.len() - 1);
        while next <= hi {
            while dq.back().is_some_and(|&b| keeps(v[next], v[b])) {
                dq.pop_back();
            }
            dq.push_back(next);
            next += 1;
        }
        while dq.front().is_some_and(|&f| f + before < i) {
            dq.pop_front();
        }
        out.push(v[*dq.front().expect("window holds i")]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, amp: f32, seconds: f32, rate: u32, channels: u16) -> Vec<f32> {
        let n = (seconds * rate as f32) as usize;
        (0..n)
            .flat_map(|i| {
                let s = amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin();
                std::iter::repeat_n(s, usize::from(channels))
            })
            .collect()
    }

    #[test]
    fn a_sine_at_a_known_level_measures_as_bs1770_says() {
        // BS.1770: a 0 dBFS 1 kHz sine in one channel reads -3.01 LKFS, so one at -20 dBFS
        // peak reads -23.
        let s = sine(997.0, 0.1, 5.0, 48_000, 1);
        let l = measure(&s, 1, 48_000).unwrap();
        let lufs = l.integrated_lufs.unwrap();
        assert!((lufs + 23.0).abs() < 0.1, "{lufs}");
        let tp = l.true_peak_dbtp.unwrap();
        assert!((tp + 20.0).abs() < 0.2, "{tp}");
    }

    #[test]
    fn a_quiet_sine_lands_on_the_target_within_half_an_lu() {
        for (rate, channels, target) in [
            (16_000, 1, DEFAULT_TARGET_LUFS),
            (44_100, 2, -14.0),
            (48_000, 2, -23.0),
            (16_000, 1, -30.0),
        ] {
            let mut s = sine(440.0, 0.01, 4.0, rate, channels);
            let l = normalize(&mut s, channels, rate, target).unwrap();
            let again = measure(&s, channels, rate).unwrap();
            assert_eq!(l, again);
            let lufs = l.integrated_lufs.unwrap();
            assert!(
                (lufs - target).abs() < 0.5,
                "{rate} {channels} {target}: {lufs}"
            );
            assert!(l.true_peak_dbtp.unwrap() <= TRUE_PEAK_CEILING_DBTP + 1e-3);
        }
    }

    #[test]
    fn peaky_audio_is_limited_to_the_ceiling_and_still_reaches_the_target() {
        // A quiet sine with loud clicks: the gain to -14 LUFS would put the clicks far above
        // full scale; the limiter holds them under -1 dBTP and the loudness still lands.
        let rate = 44_100;
        let mut s = sine(220.0, 0.02, 6.0, rate, 2);
        for k in 0..12 {
            let at = (k * rate as usize / 2 + 1234) * 2;
            s[at] = 0.9;
            s[at + 1] = -0.9;
            s[at + 2] = 0.7;
        }
        let l = normalize(&mut s, 2, rate, -14.0).unwrap();
        let lufs = l.integrated_lufs.unwrap();
        assert!((lufs + 14.0).abs() < 0.5, "{lufs}");
        let tp = l.true_peak_dbtp.unwrap();
        assert!(tp <= TRUE_PEAK_CEILING_DBTP + 1e-3, "{tp}");
        assert!(s.iter().all(|x| x.abs() <= 0.9));
    }

    #[test]
    fn heavy_limiting_still_converges_on_the_target() {
        // A quiet noise bed under dense loud crackle: most of the gain to -14 LUFS lands on
        // the crackle, which the limiter holds back, so each dB of gain buys much less than
        // a dB of loudness.
        let rate = 16_000;
        let mut x = 7u32;
        let mut rand = move || {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let mut s: Vec<f32> = (0..3 * rate)
            .map(|i| {
                let crackle = if i % 331 == 0 {
                    0.9 * rand().signum()
                } else {
                    0.0
                };
                0.02 * rand() + crackle
            })
            .collect();
        let l = normalize(&mut s, 1, rate, -14.0).unwrap();
        let lufs = l.integrated_lufs.unwrap();
        assert!((lufs + 14.0).abs() < 0.1, "{lufs}");
        assert!(l.true_peak_dbtp.unwrap() <= TRUE_PEAK_CEILING_DBTP + 1e-3);
    }

    #[test]
    fn a_loud_clip_comes_down_and_keeps_its_stereo_image() {
        // Left twice as loud as right: one gain for both keeps the ratio.
        let rate = 48_000;
        let mut s: Vec<f32> = sine(1000.0, 0.9, 3.0, rate, 2)
            .chunks(2)
            .flat_map(|f| [f[0], f[1] * 0.5])
            .collect();
        let l = normalize(&mut s, 2, rate, -23.0).unwrap();
        assert!((l.integrated_lufs.unwrap() + 23.0).abs() < 0.5);
        for f in s.chunks(2).skip(1000).take(1000) {
            assert!((f[1] - f[0] * 0.5).abs() < 1e-5);
        }
    }

    #[test]
    fn silence_and_bad_input() {
        let mut quiet = vec![0.0f32; 16_000];
        let l = normalize(&mut quiet, 1, 16_000, -14.0).unwrap();
        assert_eq!(l.integrated_lufs, None);
        assert!(quiet.iter().all(|x| *x == 0.0));
        let mut nan = sine(440.0, 0.1, 1.0, 16_000, 1);
        nan[5] = f32::NAN;
        nan[6] = f32::INFINITY;
        let l = normalize(&mut nan, 1, 16_000, -14.0).unwrap();
        assert!(nan.iter().all(|x| x.is_finite()));
        assert!(l.integrated_lufs.is_some());
        assert!(normalize(&mut [0.0; 3], 2, 16_000, -14.0).is_err());
        assert!(normalize(&mut [0.0; 4], 2, 16_000, -3.0).is_err());
        assert!(!target_in_range(f32::NAN));
        assert!(target_in_range(-14.0));
    }

    #[test]
    fn sliding_extremes() {
        let v = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        assert_eq!(
            sliding_max(&v, 1, 1),
            vec![3.0, 4.0, 4.0, 5.0, 9.0, 9.0, 9.0, 6.0]
        );
        assert_eq!(
            sliding_min(&v, 2, 0),
            vec![3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
        );
    }
}
