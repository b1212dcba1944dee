//! Per-step noise of the stochastic samplers, drawn from the job's seed so that a chunked,
//! checkpointed or resumed job draws exactly the noise an uninterrupted one would: the noise of
//! step `i` depends only on the row's seed and `i`, never on what ran before.

use tch::{Device, Tensor};

/// The seed of step `step`'s noise for a batch row whose initial noise is seeded `row_seed`
/// (SplitMix64's finaliser over the row seed plus a per-step odd constant multiple, so that the
/// streams of neighbouring rows and steps do not overlap).
pub fn step_noise_seed(row_seed: u64, step: usize) -> u64 {
    let mut z = row_seed.wrapping_add(0xD1B5_4A32_D192_ED03u64.wrapping_mul(step as u64 + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard normal noise for step `step`: one `[1, shape..]` slab per row seed, stacked to
/// `[rows, shape..]` (f32, CPU).
pub fn step_noise(row_seeds: &[u64], step: usize, shape: &[i64]) -> Tensor {
    let mut row_shape = vec![1];
    row_shape.extend_from_slice(shape);
    let rows: Vec<Tensor> = row_seeds
        .iter()
        .map(|&s| seeded_noise(step_noise_seed(s, step), &row_shape))
        .collect();
    Tensor::cat(&rows, 0)
}

/// Steps of per-step noise a state draws at once and uploads in one copy.
pub const NOISE_AHEAD_STEPS: usize = 16;

/// A state's per-step noise for a window of steps, on the latent's device: drawn on the host
/// and uploaded once per window rather than once per step, so that a step on CUDA copies
/// nothing from the host and a captured step reads device memory only. The values are
/// exactly [`step_noise`]'s: a step's noise does not depend on the window it was drawn in.
#[derive(Debug)]
pub struct NoiseAhead {
    from: usize,
    /// `[steps, rows, shape..]`.
    noise: Tensor,
}

impl NoiseAhead {
    /// `step_noise(row_seeds, step, shape)` on `device`, from the window in `slot`; a window
    /// that does not hold `step` (or lives elsewhere) is replaced by steps
    /// `step..min(step + NOISE_AHEAD_STEPS, total_steps)`.
    pub fn noise(
        slot: &mut Option<NoiseAhead>,
        row_seeds: &[u64],
        step: usize,
        total_steps: usize,
        shape: &[i64],
        device: Device,
    ) -> Tensor {
        let held = slot.as_ref().is_some_and(|w| {
            step >= w.from
                && ((step - w.from) as i64) < w.noise.size()[0]
                && w.noise.device() == device
                && w.noise.size()[1..] == *row_shape(row_seeds, shape)
        });
        if !held {
            let end = total_steps.min(step + NOISE_AHEAD_STEPS).max(step + 1);
            let steps: Vec<Tensor> = (step..end)
                .map(|k| step_noise(row_seeds, k, shape))
                .collect();
            *slot = Some(NoiseAhead {
                from: step,
                noise: Tensor::stack(&steps, 0).to_device(device),
            });
        }
        let w = slot.as_ref().expect("the window was just filled");
        // A copy in fresh memory, as a step's own draw was: CPU kernels may round differently
        // on a view at another alignment (a device-to-device copy on CUDA).
        w.noise.get((step - w.from) as i64).copy()
    }

    /// Bytes the window holds.
    pub fn bytes(&self) -> usize {
        self.noise.numel() * self.noise.kind().elt_size_in_bytes()
    }
}

fn row_shape(row_seeds: &[u64], shape: &[i64]) -> Vec<i64> {
    let mut s = vec![row_seeds.len() as i64];
    s.extend_from_slice(shape);
    s
}

/// SplitMix64: a tiny, well-mixed generator. Noise is drawn with it (not libtorch's global
/// generator) so that it depends only on the seed: not on threads, batch composition or device.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Standard normal noise `[shape]` (f32, CPU) from `seed`, by Box-Muller over SplitMix64.
pub fn seeded_noise(seed: u64, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(n as usize);
    while (out.len() as i64) < n {
        let (u1, u2) = (rng.next_unit(), rng.next_unit());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((r * theta.cos()) as f32);
        if (out.len() as i64) < n {
            out.push((r * theta.sin()) as f32);
        }
    }
    Tensor::from_slice(&out).view(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_rows_draw_different_noise() {
        let a = step_noise(&[5, 6], 0, &[3, 4]);
        assert_eq!(a.size(), [2, 3, 4]);
        assert!(a.equal(&step_noise(&[5, 6], 0, &[3, 4])));
        assert!(!a.get(0).equal(&a.get(1)));
        assert!(!a.equal(&step_noise(&[5, 6], 1, &[3, 4])));
        assert_ne!(step_noise_seed(5, 0), 5);
    }

    #[test]
    fn noise_drawn_ahead_is_each_steps_own_noise() {
        let (seeds, shape) = ([5, 6], [3, 4]);
        let mut slot = None;
        for step in 0..40 {
            let got = NoiseAhead::noise(&mut slot, &seeds, step, 40, &shape, Device::Cpu);
            assert!(got.equal(&step_noise(&seeds, step, &shape)), "step {step}");
        }
        // One window per NOISE_AHEAD_STEPS steps, the last one cut at the total.
        let w = slot.as_ref().unwrap();
        assert_eq!(w.from, 32);
        assert_eq!(w.noise.size(), [8, 2, 3, 4]);
        // A resumed state (a checkpoint starts with no window) or a step out of the window
        // draws a new window from that step.
        let got = NoiseAhead::noise(&mut slot, &seeds, 3, 40, &shape, Device::Cpu);
        assert!(got.equal(&step_noise(&seeds, 3, &shape)));
        assert_eq!(slot.as_ref().unwrap().from, 3);
        // Other rows (another variation count) are not served from the window.
        let got = NoiseAhead::noise(&mut slot, &[5], 4, 40, &shape, Device::Cpu);
        assert!(got.equal(&step_noise(&[5], 4, &shape)));
    }
}
