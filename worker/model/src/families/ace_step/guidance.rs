//! Adaptive projected guidance (APG), as ACE-Step's base and SFT models run it (diffusers
//! `normalized_guidance` with a momentum buffer of -0.75, a norm threshold of 2.5, eta 0 and
//! the original formulation): the conditional-minus-unconditional difference is averaged with
//! momentum over the guided steps, its norm over time capped, and only its part orthogonal to
//! the conditional prediction is added, `guidance - 1` times. The momentum is per-step memory,
//! kept in the state's sampler state so a chunked or resumed job guides as a one-shot one.

use tch::{Kind, Tensor};

/// Weight of the previous running average.
const MOMENTUM: f64 = -0.75;
/// Largest norm over time of the (averaged) difference.
const NORM_THRESHOLD: f64 = 2.5;
/// The sampler-state name of the running average.
pub const MOMENTUM_KEY: &str = "apg_momentum";

/// The guided prediction from `cond` and `uncond` (f32, time along `time_dim`) with guidance
/// `scale`, and the new running average (`previous`: the last guided step's, none at first).
pub fn apg(
    cond: &Tensor,
    uncond: &Tensor,
    scale: f64,
    previous: Option<&Tensor>,
    time_dim: i64,
) -> (Tensor, Tensor) {
    let diff = cond - uncond;
    let average = match previous {
        Some(p) => &diff + p * MOMENTUM,
        None => diff,
    };
    let norm = average.norm_scalaropt_dim(2, [time_dim], true);
    // A zero norm gives an infinite ratio, capped to 1 as torch.minimum does.
    let capped = &average * (norm.reciprocal() * NORM_THRESHOLD).clamp_max(1.0);
    let v0 = capped.to_kind(Kind::Double);
    let v1 = cond.to_kind(Kind::Double);
    let v1 = &v1 / v1.norm_scalaropt_dim(2, [time_dim], true).clamp_min(1e-12);
    let parallel = (&v0 * &v1).sum_dim_intlist(&[time_dim][..], true, Kind::Double) * &v1;
    let orthogonal = (v0 - parallel).to_kind(cond.kind());
    (cond + orthogonal * (scale - 1.0), average)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apg_adds_only_the_part_orthogonal_to_the_prediction() {
        tch::manual_seed(3);
        let cond = Tensor::randn([1, 4, 16], (Kind::Float, tch::Device::Cpu));
        // A difference parallel to the prediction changes nothing.
        let uncond = &cond * 0.5;
        let (g, m) = apg(&cond, &uncond, 7.0, None, 2);
        assert!((&g - &cond).abs().max().double_value(&[]) < 1e-5);
        assert!(m.equal(&(&cond * 0.5)));
        // A large orthogonal one is capped to the threshold's norm.
        let ortho = Tensor::randn([1, 4, 16], (Kind::Float, tch::Device::Cpu)) * 100.0;
        let (g, _) = apg(&cond, &(&cond - &ortho), 2.0, Some(&m), 2);
        let added = (&g - &cond).norm_scalaropt_dim(2, [2], false);
        assert!(added.max().double_value(&[]) <= NORM_THRESHOLD + 1e-4);
    }
}
