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
        let (q, k, v) = self.project(x, context, rotary);
        // SDPA's own grouped-query path: no copies of the key/value heads.
        let gqa = self.kv_heads != self.heads;
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, gqa);
        self.output(&out)
    }

    /// Self-attention of each position over the `window` positions on each side, in blocks
    /// of `window` queries against their `3 * window` keys: memory grows with the length times
    /// the window rather than with the length squared (a 10-minute song is 7,500 DiT tokens).
    /// The same attention as [`Attention::forward`] with [`band_mask`]; not bit-identical to it
    /// (the softmax sums over other lengths).
    pub(crate) fn forward_band(&self, x: &Tensor, window: i64, rotary: &Rotary) -> Tensor {
        let (q, k, v) = self.project(x, None, Some(rotary));
        let out = band_attention(&q, &k, &v, window, self.kv_heads != self.heads);
        self.output(&out)
    }

    /// Queries `[B, heads, L, hd]`, keys and values `[B, kv_heads, Lk, hd]`.
    fn project(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rotary: Option<&Rotary>,
    ) -> (Tensor, Tensor, Tensor) {
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
        match (context, rotary) {
            (None, Some(r)) => (r.apply(&q), r.apply(&k), v),
            _ => (q, k, v),
        }
    }

    /// `[B, heads, L, hd]` -> `[B, L, D]`.
    fn output(&self, out: &Tensor) -> Tensor {
        let (b, l) = (out.size()[0], out.size()[2]);
        out.transpose(1, 2)
            .reshape([b, l, self.heads * self.head_dim])
            .linear::<Tensor>(&self.o, None)
    }
}

/// Whether a sliding layer over `len` positions runs block by block ([`band_attention`]): once
/// the band is a small part of the sequence; shorter sequences take one masked attention.
pub(crate) fn banded(len: i64, window: i64) -> bool {
    len >= 4 * window
}

/// Scaled dot-product attention of each query over the keys within `window` positions of it,
/// computed in blocks of `window` queries: `q` `[B, H, L, D]`, `k`/`v` `[B, Hk, L, D]`.
fn band_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: i64, gqa: bool) -> Tensor {
    let (b, h, l, d) = q.size4().expect("queries are [B, H, L, D]");
    let hk = k.size()[1];
    let blocks = (l + window - 1) / window;
    let padded = blocks * window;
    let span = 3 * window;
    let dev = q.device();
    // Queries in blocks: [B, blocks, H, window, D] (heads third from the end for grouped SDPA).
    let qb = q
        .constant_pad_nd([0, 0, 0, padded - l])
        .view([b, h, blocks, window, d])
        .permute([0, 2, 1, 3, 4]);
    // Each block's keys: `window` before it, its own, `window` after: [B, blocks, Hk, 3w, D].
    let windows = |t: &Tensor| {
        t.constant_pad_nd([0, 0, window, padded - l + window])
            .unfold(2, span, window)
            .permute([0, 2, 1, 4, 3])
    };
    let (kb, vb) = (windows(k), windows(v));
    debug_assert_eq!(kb.size(), [b, blocks, hk, span, d]);
    // Query `a` of block `i` is position i*w + a; key `c` is i*w - w + c: in the band when
    // 0 <= c - a <= 2w, and a real key when 0 <= i*w - w + c < L.
    let a = Tensor::arange(window, (Kind::Int64, dev)).view([1, window, 1]);
    let c = Tensor::arange(span, (Kind::Int64, dev)).view([1, 1, span]);
    let i = Tensor::arange(blocks, (Kind::Int64, dev)).view([blocks, 1, 1]);
    let diff = &c - &a;
    let key = &i * window - window + &c;
    let mask = diff
        .ge(0)
        .logical_and(&diff.le(2 * window))
        .logical_and(&key.ge(0))
        .logical_and(&key.lt(l))
        .view([1, blocks, 1, window, span]);
    let out =
        Tensor::scaled_dot_product_attention(&qb, &kb, &vb, Some(&mask), 0.0, false, None, gqa);
    out.permute([0, 2, 1, 3, 4])
        .reshape([b, h, padded, d])
        .narrow(2, 0, l)
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

/// What a self-attention layer attends.
pub(crate) enum Span<'a> {
    /// The positions a boolean mask keeps (`None`: every one).
    Masked(Option<&'a Tensor>),
    /// Each position's band of this many positions on each side, block by block.
    Band(i64),
}

/// The masks of an encoder stack: for each layer kind, what it attends (`None`: everything).
/// `keys` bool `[B, L]` masks padded keys on every layer.
pub(crate) struct StackMasks {
    sliding: Option<Tensor>,
    full: Option<Tensor>,
    /// Sliding layers run block by block (long sequences without padding).
    band: Option<i64>,
}

impl StackMasks {
    pub(crate) fn new(len: i64, window: i64, keys: Option<&Tensor>, device: Device) -> Self {
        if keys.is_none() && banded(len, window) {
            return Self {
                sliding: None,
                full: None,
                band: Some(window),
            };
        }
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
            band: None,
        }
    }

    pub(crate) fn of(&self, kind: LayerKind) -> Span<'_> {
        match (kind, self.band) {
            (LayerKind::Sliding, Some(w)) => Span::Band(w),
            (LayerKind::Sliding, None) => Span::Masked(self.sliding.as_ref()),
            (LayerKind::Full, _) => Span::Masked(self.full.as_ref()),
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

    pub(crate) fn forward(&self, x: &Tensor, span: Span<'_>, rotary: &Rotary) -> Tensor {
        let n = rms_norm(x, &self.input_norm, self.eps);
        let attended = match span {
            Span::Masked(mask) => self.attn.forward(&n, None, mask, Some(rotary)),
            Span::Band(w) => self.attn.forward_band(&n, w, rotary),
        };
        let x = x + attended;
        let n = rms_norm(&x, &self.post_norm, self.eps);
        &x + self.mlp.forward(&n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_by_blocks_equals_the_masked_band() {
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        // Two query heads per key/value head; a length that is not a whole number of blocks.
        for (len, window) in [(37, 4), (130, 8), (64, 16)] {
            let q = Tensor::randn([2, 4, len, 8], opts);
            let k = Tensor::randn([2, 2, len, 8], opts);
            let v = Tensor::randn([2, 2, len, 8], opts);
            let mask = band_mask(len, window, Device::Cpu);
            let whole = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                0.0,
                false,
                None,
                true,
            );
            let blocks = band_attention(&q, &k, &v, window, true);
            let diff = (&whole - &blocks).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "len {len} window {window}: {diff}");
        }
    }
}
