//! The parts ACE-Step's DiT and condition encoder share (diffusers `AceStepAttention`,
//! `AceStepMLP`, `AceStepEncoderLayer`): bias-free grouped-query attention with a per-head
//! RMSNorm on queries and keys, rotary embedding (rotate-half, Qwen layout) on self-attention
//! only; a SwiGLU MLP; the encoders' pre-norm block.
//!
//! Masks are boolean (true = attend) rather than diffusers' additive `finfo.min` ones: the same
//! coverage, and no row here is ever fully masked (padding masks keys only, and every sequence
//! has a real token).

use tch::{Device, Kind, Tensor};

use super::config::{LayerKind, StackShape};
use crate::nn::norm::rms_norm;
use crate::nn::rope::Rotary;
use crate::weights::source::TensorSource;
use crate::Result;

/// `AceStepAttention`'s weights under `prefix` (`to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`,
/// `norm_k`).
#[derive(Debug)]
pub(crate) struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    norm_q: Tensor,
    norm_k: Tensor,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    eps: f64,
}

impl Attention {
    /// `kv_in`: the width keys and values are projected from (the context's for
    /// cross-attention).
    pub(crate) fn load(
        src: &mut TensorSource,
        prefix: &str,
        s: &StackShape,
        kv_in: i64,
    ) -> Result<Self> {
        let (h, kv, hd) = (s.heads, s.kv_heads, s.head_dim);
        let mut w = |name: &str, shape: &[i64]| src.take(&format!("{prefix}.{name}"), shape);
        Ok(Self {
            q: w("to_q.weight", &[h * hd, s.hidden])?,
            k: w("to_k.weight", &[kv * hd, kv_in])?,
            v: w("to_v.weight", &[kv * hd, kv_in])?,
            o: w("to_out.0.weight", &[s.hidden, h * hd])?,
            norm_q: w("norm_q.weight", &[hd])?,
            norm_k: w("norm_k.weight", &[hd])?,
            heads: h,
            kv_heads: kv,
            head_dim: hd,
            eps: s.eps,
        })
    }

    /// `x` `[B, L, D]`; `context` `[B, Lc, Dc]` for cross-attention (no rotation), else
    /// self-attention rotated by `rotary`; `mask` bool, broadcastable to `[B, heads, L, Lk]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        rotary: Option<&Rotary>,
    ) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let kv_src = context.unwrap_or(x);
        let lk = kv_src.size()[1];
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        // [B, L, heads, hd] -> per-head norm -> [B, heads, L, hd].
        let q = rms_norm(
            &x.linear::<Tensor>(&self.q, None).view([b, l, h, hd]),
            &self.norm_q,
            self.eps,
        )
        .transpose(1, 2);
        let k = rms_norm(
            &kv_src.linear::<Tensor>(&self.k, None).view([b, lk, kv, hd]),
            &self.norm_k,
            self.eps,
        )
        .transpose(1, 2);
        let v = kv_src
            .linear::<Tensor>(&self.v, None)
            .view([b, lk, kv, hd])
            .transpose(1, 2);
        let (q, k) = match (context, rotary) {
            (None, Some(r)) => (r.apply(&q), r.apply(&k)),
            _ => (q, k),
        };
        // SDPA's own grouped-query path: no copies of the key/value heads.
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, kv != h);
        out.transpose(1, 2)
            .reshape([b, l, h * hd])
            .linear::<Tensor>(&self.o, None)
    }
}

/// `down(silu(gate(x)) * up(x))`, bias-free.
#[derive(Debug)]
pub(crate) struct Mlp {
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

impl Mlp {
    pub(crate) fn load(src: &mut TensorSource, prefix: &str, s: &StackShape) -> Result<Self> {
        let (d, ff) = (s.hidden, s.intermediate);
        Ok(Self {
            gate: src.take(&format!("{prefix}.gate_proj.weight"), &[ff, d])?,
            up: src.take(&format!("{prefix}.up_proj.weight"), &[ff, d])?,
            down: src.take(&format!("{prefix}.down_proj.weight"), &[d, ff])?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let gated =
            x.linear::<Tensor>(&self.gate, None).silu() * x.linear::<Tensor>(&self.up, None);
        gated.linear::<Tensor>(&self.down, None)
    }
}

/// The band mask of a sliding layer: `|i - j| <= window`, bool `[L, L]`.
pub(crate) fn band_mask(len: i64, window: i64, device: Device) -> Tensor {
    let i = Tensor::arange(len, (Kind::Int64, device));
    let diff = i.unsqueeze(1) - i.unsqueeze(0);
    diff.abs().le(window)
}

/// The masks of an encoder stack: for each layer kind, what it attends (`None`: everything).
/// `keys` bool `[B, L]` masks padded keys on every layer.
pub(crate) struct StackMasks {
    sliding: Option<Tensor>,
    full: Option<Tensor>,
}

impl StackMasks {
    pub(crate) fn new(len: i64, window: i64, keys: Option<&Tensor>, device: Device) -> Self {
        let keys = keys.map(|k| {
            let b = k.size()[0];
            k.to_kind(Kind::Bool).view([b, 1, 1, len])
        });
        // A band as wide as the sequence masks nothing.
        let band = (len > window + 1).then(|| band_mask(len, window, device));
        let sliding = match (&band, &keys) {
            (Some(b), Some(k)) => Some(b.logical_and(k)),
            (Some(b), None) => Some(b.shallow_clone()),
            (None, Some(k)) => Some(k.shallow_clone()),
            (None, None) => None,
        };
        Self {
            sliding,
            full: keys,
        }
    }

    pub(crate) fn of(&self, kind: LayerKind) -> Option<&Tensor> {
        match kind {
            LayerKind::Sliding => self.sliding.as_ref(),
            LayerKind::Full => self.full.as_ref(),
        }
    }
}

/// `AceStepEncoderLayer`: pre-norm self-attention and MLP, each with a residual.
#[derive(Debug)]
pub(crate) struct EncoderLayer {
    input_norm: Tensor,
    attn: Attention,
    post_norm: Tensor,
    mlp: Mlp,
    eps: f64,
}

impl EncoderLayer {
    pub(crate) fn load(src: &mut TensorSource, prefix: &str, s: &StackShape) -> Result<Self> {
        Ok(Self {
            input_norm: src.take(&format!("{prefix}.input_layernorm.weight"), &[s.hidden])?,
            attn: Attention::load(src, &format!("{prefix}.self_attn"), s, s.hidden)?,
            post_norm: src.take(
                &format!("{prefix}.post_attention_layernorm.weight"),
                &[s.hidden],
            )?,
            mlp: Mlp::load(src, &format!("{prefix}.mlp"), s)?,
            eps: s.eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mask: Option<&Tensor>, rotary: &Rotary) -> Tensor {
        let n = rms_norm(x, &self.input_norm, self.eps);
        let x = x + self.attn.forward(&n, None, mask, Some(rotary));
        let n = rms_norm(&x, &self.post_norm, self.eps);
        &x + self.mlp.forward(&n)
    }
}
