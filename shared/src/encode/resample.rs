//! Sample-rate conversion with `rubato`'s FFT resampler (synchronous, fixed ratio: the right
//! one for whole clips; its anti-aliasing is a BlackmanHarris-windowed sinc).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use crate::audio::AudioError;

/// Input frames a resampling step.
const CHUNK: usize = 2048;

/// `samples` (`channels` interleaved) from `from` Hz to `to` Hz: `round(frames * to / from)`
/// frames, time-aligned (the resampler's delay trimmed).
pub fn resample(
    samples: &[f32],
    channels: u16,
    from: u32,
    to: u32,
) -> Result<Vec<f32>, AudioError> {
    let ch = usize::from(channels);
    if ch == 0 || !samples.len().is_multiple_of(ch) {
        return Err(AudioError::Channels {
            samples: samples.len(),
            channels,
        });
    }
    let frames = samples.len() / ch;
    if from == to || frames == 0 {
        return Ok(samples.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| {
        AudioError::Format(format!("resampling {from} Hz to {to} Hz: {e}"))
    };
    // One FFT of twice the chunk a chunk: the steepest anti-aliasing filter this chunk size
    // gives (more sub-chunks lower the delay, which a whole clip doesn't need).
    let mut r = Fft::<f32>::new_custom(
        from as usize,
        to as usize,
        CHUNK,
        1,
        ch,
        WindowFunction::BlackmanHarris2,
        FixedSync::Input,
    )
    .map_err(|e| err(&e))?;
    let input = InterleavedSlice::new(samples, ch, frames).map_err(|e| err(&e))?;
    let mut out = r
        .process_all(&input, frames, None)
        .map_err(|e| err(&e))?
        .take_data();
    let want = ((frames as u64 * u64::from(to) + u64::from(from) / 2) / u64::from(from)) as usize;
    out.resize(want * ch, 0.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_keeps_its_length_pitch_and_level() {
        let (from, to) = (16_000u32, 48_000u32);
        let f = 440.0f32;
        let pcm: Vec<f32> = (0..from)
            .flat_map(|i| {
                let s = 0.5 * (2.0 * std::f32::consts::PI * f * i as f32 / from as f32).sin();
                [s, -s]
            })
            .collect();
        let out = resample(&pcm, 2, from, to).unwrap();
        assert_eq!(out.len(), 2 * to as usize);
        // Away from the edges the output is the same sine at the new rate.
        for i in (4800..43_200).step_by(997) {
            let want = 0.5 * (2.0 * std::f32::consts::PI * f * i as f32 / to as f32).sin();
            assert!(
                (out[2 * i] - want).abs() < 0.01,
                "{i}: {} vs {want}",
                out[2 * i]
            );
            assert!((out[2 * i + 1] + want).abs() < 0.01);
        }
        assert_eq!(resample(&pcm, 2, from, from).unwrap(), pcm);
        assert!(resample(&pcm[..3], 2, from, to).is_err());
        let second = vec![0.0f32; 2 * 44_100];
        assert_eq!(resample(&second, 2, 44_100, 48_000).unwrap().len(), 96_000);
    }
}
