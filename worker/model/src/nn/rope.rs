//! Rotary position embedding as Stable Audio uses it: diffusers' `get_1d_rotary_pos_embed` with
//! `use_real=True, repeat_interleave_real=False` (cos/sin laid out as `[f_0..f_{d/2}, f_0..f_{d/2}]`)
//! and `apply_rotary_emb(.., use_real_unbind_dim=-2)` (rotate-half: the first half of the rotated
//! channels pairs with the second half), applied to the first `dim` channels of each head only.

use tch::{Device, Kind, Tensor};

/// cos and sin tables, f32 `[positions, dim]`.
#[derive(Debug)]
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rotary {
    /// Tables for positions `0..positions` over `dim` rotated channels (`theta` = 10000).
    pub fn new(dim: i64, positions: i64, device: Device) -> Self {
        Self::with_theta(dim, positions, 10000.0, device)
    }

    pub fn with_theta(dim: i64, positions: i64, theta: f64, device: Device) -> Self {
        assert!(dim % 2 == 0, "rotary dimension must be even");
        let exponent =
            Tensor::arange_start_step(0, dim, 2, (Kind::Float, Device::Cpu)) / dim as f64;
        let freqs = Tensor::pow_scalar(theta, &exponent).reciprocal();
        let pos = Tensor::arange(positions, (Kind::Float, Device::Cpu));
        let angles = pos.outer(&freqs);
        let angles = Tensor::cat(&[&angles, &angles], -1);
        Self {
            cos: angles.cos().to_device(device),
            sin: angles.sin().to_device(device),
        }
    }

    /// The same tables (no copy).
    pub fn shallow_clone(&self) -> Self {
        Self {
            cos: self.cos.shallow_clone(),
            sin: self.sin.shallow_clone(),
        }
    }

    /// Number of rotated channels per head.
    pub fn dim(&self) -> i64 {
        self.cos.size()[1]
    }

    /// Applies the rotation to `x` `[B, H, S, D]` (D >= dim; channels past `dim` are untouched),
    /// computing in f32 and returning `x`'s dtype.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let d = self.dim();
        let s = x.size()[2];
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let rot = xf.narrow(-1, 0, d);
        let rest = xf.narrow(-1, d, x.size()[3] - d);
        let x1 = rot.narrow(-1, 0, d / 2);
        let x2 = rot.narrow(-1, d / 2, d / 2);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        let cos = self.cos.narrow(0, 0, s).view([1, 1, s, d]);
        let sin = self.sin.narrow(0, 0, s).view([1, 1, s, d]);
        let out = &rot * cos + rotated * sin;
        Tensor::cat(&[&out, &rest], -1).to_kind(kind)
    }
}
