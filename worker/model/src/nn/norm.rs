//! RMS normalisation as transformers' `Qwen3RMSNorm` (and T5's) computes it: no mean, no bias, the
//! variance and the scaling in f32, the weight applied in the weight's dtype.

use tch::{Kind, Tensor};

/// `w * (x / sqrt(mean(x^2, -1) + eps))` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let y = xf * (var + eps).rsqrt();
    w * y.to_kind(x.kind())
}
