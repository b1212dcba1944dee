//! Resampling a clip between the renderer's, a pack's and the analyzers' sample rates (used by
//! the ceiling and the evaluation, so neither imports the other).

use tch::{Kind, Tensor};

use super::Result;

/// Band-limited resampling of a whole clip: the spectrum truncated (or zero-extended) to the
/// new length. Exact for clips whose length converts to a whole number of samples.
pub fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == to {
        return Ok(x.to_vec());
    }
    let n = x.len() as i64;
    let m = (n as u64 * to as u64 / from as u64) as i64;
    let spec = Tensor::from_slice(x)
        .to_kind(Kind::Double)
        .f_fft_rfft(None, 0, "backward")?;
    let keep = (m / 2 + 1).min(spec.size()[0]);
    let y = spec
        .narrow(0, 0, keep)
        .f_fft_irfft(Some(m), 0, "backward")?
        * (m as f64 / n as f64);
    Ok(Vec::<f32>::try_from(y.to_kind(Kind::Float))?)
}
