//! Audio analyzers for prompt adherence: tempo from the autocorrelation of an onset envelope
//! (spectral flux of the log-mel), key and mode from a chroma profile correlated with the
//! Temperley (Kostka-Payne) key profiles, and distances between clips for diversity.

use tch::{Device, Kind, Tensor};
use tutti_shared::prompt::Mode;

use crate::Result;
use tutti_model::mel::{MelConfig, MelFrontEnd};

/// Log-mel `[n_mels, frames]` (row-major) of a mono clip.
pub fn log_mel(front: &MelFrontEnd, wave: &[f32]) -> Result<(Vec<f32>, usize)> {
    let m = front
        .log_mel(&Tensor::from_slice(wave).view([1, -1]))?
        .squeeze_dim(0)
        .contiguous();
    let frames = m.size()[1] as usize;
    let mut v = vec![0f32; m.numel()];
    m.f_copy_data(&mut v, m.numel())?;
    Ok((v, frames))
}

/// Tempo in BPM from a log-mel: the onset strength (half-wave rectified frame difference, summed
/// over bands, mean removed) is autocorrelated; lags for 50-200 BPM are weighted by a log-normal
/// prior around 120 BPM (as librosa's tempo estimator) and the best one is refined parabolically.
pub fn tempo(mel: &[f32], n_mels: usize, frames: usize, fps: f64) -> Option<f64> {
    if frames < 16 {
        return None;
    }
    let mut onset = vec![0f64; frames];
    for t in 1..frames {
        let mut s = 0.0;
        for m in 0..n_mels {
            let d = mel[m * frames + t] - mel[m * frames + t - 1];
            if d > 0.0 {
                s += d as f64;
            }
        }
        onset[t] = s;
    }
    let mean = onset.iter().sum::<f64>() / frames as f64;
    onset.iter_mut().for_each(|v| *v -= mean);
    let ac = |lag: usize| -> f64 {
        (lag..frames)
            .map(|t| onset[t] * onset[t - lag])
            .sum::<f64>()
            / (frames - lag) as f64
    };
    let lo = (fps * 60.0 / 200.0).floor() as usize;
    let hi = ((fps * 60.0 / 50.0).ceil() as usize).min(frames / 2);
    let mut best = None::<(usize, f64)>;
    for lag in lo.max(1)..=hi {
        let bpm = 60.0 * fps / lag as f64;
        let prior = (-0.5 * ((bpm / 120.0).log2() / 1.0).powi(2)).exp();
        let score = ac(lag) * prior;
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((lag, score));
        }
    }
    let (lag, _) = best?;
    let (a, b, c) = (ac(lag - 1), ac(lag), ac(lag + 1));
    let denom = a - 2.0 * b + c;
    let shift = if denom.abs() > 1e-12 {
        (0.5 * (a - c) / denom).clamp(-0.5, 0.5)
    } else {
        0.0
    };
    Some(60.0 * fps / (lag as f64 + shift))
}

const MAJOR_PROFILE: [f64; 12] = [
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
];
const MINOR_PROFILE: [f64; 12] = [
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
];

/// A 12-bin chroma profile (C = 0): a 4096-point STFT (4 Hz bins, enough to separate low
/// semitones), square-rooted magnitudes of the bins between 80 Hz and 2 kHz folded onto pitch
/// classes, each frame normalised to its maximum (so loud drum hits do not dominate), summed.
pub fn chroma(_front: &MelFrontEnd, cfg: &MelConfig, wave: &[f32]) -> Result<[f64; 12]> {
    let n_fft = 4096i64;
    let mut out = [0f64; 12];
    if (wave.len() as i64) < n_fft {
        return Ok(out);
    }
    let win = Tensor::hann_window_periodic(n_fft, true, (Kind::Float, Device::Cpu));
    let spec = Tensor::from_slice(wave)
        .view([1, -1])
        .f_stft(
            n_fft,
            n_fft / 4,
            n_fft,
            Some(&win),
            false,
            true,
            true,
            false,
        )?
        .abs()
        .squeeze_dim(0)
        .sqrt()
        .transpose(0, 1)
        .contiguous();
    let (frames, bins) = (spec.size()[0] as usize, spec.size()[1] as usize);
    let mut m = vec![0f32; frames * bins];
    spec.f_copy_data(&mut m, frames * bins)?;
    let pcs: Vec<Option<usize>> = (0..bins)
        .map(|k| {
            let f = k as f64 * cfg.sample_rate as f64 / n_fft as f64;
            (80.0..=2000.0).contains(&f).then(|| {
                ((69.0 + 12.0 * (f / 440.0).log2()).round() as i64).rem_euclid(12) as usize
            })
        })
        .collect();
    for t in 0..frames {
        let mut c = [0f64; 12];
        for (k, pc) in pcs.iter().enumerate() {
            if let Some(pc) = pc {
                c[*pc] += m[t * bins + k] as f64;
            }
        }
        let max = c.iter().copied().fold(0.0, f64::max);
        if max > 1e-6 {
            for (o, v) in out.iter_mut().zip(c) {
                *o += v / max;
            }
        }
    }
    Ok(out)
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut s, mut sa, mut sb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        s += (x - ma) * (y - mb);
        sa += (x - ma).powi(2);
        sb += (y - mb).powi(2);
    }
    s / (sa.sqrt() * sb.sqrt()).max(1e-12)
}

/// The best (tonic, mode, correlation) of a chroma profile against the 24 key profiles.
pub fn key(chroma: &[f64; 12]) -> (u8, Mode, f64) {
    let mut best = (0u8, Mode::Major, f64::NEG_INFINITY);
    for tonic in 0..12 {
        for (mode, prof) in [(Mode::Major, &MAJOR_PROFILE), (Mode::Minor, &MINOR_PROFILE)] {
            let rotated: Vec<f64> = (0..12).map(|pc| prof[(pc + 12 - tonic) % 12]).collect();
            let r = pearson(chroma, &rotated);
            if r > best.2 {
                best = (tonic as u8, mode, r);
            }
        }
    }
    best
}

/// Mean absolute difference of two log-mels of the same shape.
pub fn mel_distance(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / n as f64
}

/// Whether `measured` is within `tol` (relative) of `wanted`.
pub fn tempo_ok(measured: f64, wanted: f64, tol: f64) -> bool {
    (measured - wanted).abs() <= tol * wanted
}

/// The metrical levels an onset-periodicity estimator confuses with the beat: double and half
/// time, and the dotted/triplet relations (3/2, 2/3) of compound and swung meters.
pub const METRICAL_FACTORS: [f64; 5] = [1.0, 2.0, 0.5, 1.5, 2.0 / 3.0];

/// Whether `measured` is within `tol` of `wanted` at one of the [`METRICAL_FACTORS`]: the clip
/// keeps the asked pulse, though the analyzer may count it at another level of the meter.
pub fn tempo_metrical(measured: f64, wanted: f64, tol: f64) -> bool {
    METRICAL_FACTORS
        .iter()
        .any(|f| tempo_ok(measured, wanted * f, tol))
}

/// The tonic of the relative key (same pitch set, the other mode): the analyzer's usual miss.
pub fn relative_tonic(tonic: u8, mode: Mode) -> u8 {
    match mode {
        Mode::Major => (tonic + 9) % 12,
        Mode::Minor => (tonic + 3) % 12,
    }
}

/// The mel front end of the analyzers.
pub fn front_end(cfg: &MelConfig) -> Result<MelFrontEnd> {
    Ok(MelFrontEnd::new(cfg, Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrical_levels_count_as_the_pulse_but_not_as_the_tempo() {
        assert!(tempo_ok(122.0, 120.0, 0.08) && tempo_metrical(122.0, 120.0, 0.08));
        for m in [60.0, 240.0, 180.0, 80.0] {
            assert!(
                !tempo_ok(m, 120.0, 0.08) && tempo_metrical(m, 120.0, 0.08),
                "{m}"
            );
        }
        assert!(!tempo_metrical(100.0, 120.0, 0.08));
        assert_eq!(relative_tonic(0, Mode::Major), 9); // C major -> A minor
        assert_eq!(relative_tonic(9, Mode::Minor), 0);
    }
}
