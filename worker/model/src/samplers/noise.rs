//! Per-step noise of the stochastic samplers, drawn from the job's seed so that a chunked,
//! checkpointed or resumed job draws exactly the noise an uninterrupted one would: the noise of
//! step `i` depends only on the row's seed and `i`, never on what ran before.

use tch::Tensor;

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
}
