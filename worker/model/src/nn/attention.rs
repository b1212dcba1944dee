//! diffusers' `Attention` with `StableAudioAttnProcessor2_0`: bias-free projections, grouped-query
//! key/value heads (each key/value head serves `heads / kv_heads` consecutive query heads), partial
//! rotary embedding on queries and (self-attention only) keys, scaled dot-product attention.

use tch::{nn, Kind, Tensor};

use crate::nn::rope::Rotary;

#[derive(Debug)]
pub struct Attention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    is_cross: bool,
}

impl Attention {
    /// `cross_dim`: the width of the context for cross-attention, `None` for self-attention.
    pub fn new(
        p: nn::Path,
        query_dim: i64,
        cross_dim: Option<i64>,
        heads: i64,
        kv_heads: i64,
        head_dim: i64,
    ) -> Self {
        let nb = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        let kv_in = cross_dim.unwrap_or(query_dim);
        Self {
            to_q: nn::linear(&p / "to_q", query_dim, heads * head_dim, nb),
            to_k: nn::linear(&p / "to_k", kv_in, kv_heads * head_dim, nb),
            to_v: nn::linear(&p / "to_v", kv_in, kv_heads * head_dim, nb),
            to_out: nn::linear(&p / "to_out" / 0, heads * head_dim, query_dim, nb),
            heads,
            kv_heads,
            head_dim,
            is_cross: cross_dim.is_some(),
        }
    }

    /// `x` [B, S, D]; `context` [B, Sk, Dc] for cross-attention; `key_mask` bool [B, Sk]
    /// (true = attend); `rotary` for self-attention positions.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        key_mask: Option<&Tensor>,
        rotary: Option<&Rotary>,
    ) -> Tensor {
        let (b, s, _) = x.size3().expect("attention input is [B, S, D]");
        let ctx = context.unwrap_or(x);
        let sk = ctx.size()[1];
        let q = x
            .apply(&self.to_q)
            .view([b, s, self.heads, self.head_dim])
            .transpose(1, 2);
        let mut k = ctx
            .apply(&self.to_k)
            .view([b, sk, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        let mut v = ctx
            .apply(&self.to_v)
            .view([b, sk, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        if self.kv_heads != self.heads {
            // Each key/value head serves `rep` consecutive query heads: `repeat_interleave` on
            // dim 1, spelled as a broadcast and one copy so that no repeat count is read back
            // from the device (a captured CUDA graph allows no host synchronisation).
            let rep = self.heads / self.kv_heads;
            let repeat = |t: &Tensor| {
                t.unsqueeze(2)
                    .expand([b, self.kv_heads, rep, sk, self.head_dim], false)
                    .reshape([b, self.heads, sk, self.head_dim])
            };
            k = repeat(&k);
            v = repeat(&v);
        }
        let (q, k) = match rotary {
            Some(r) => {
                let q = r.apply(&q);
                let k = if self.is_cross { k } else { r.apply(&k) };
                (q, k)
            }
            None => (q, k),
        };
        let mask = key_mask.map(|m| m.to_kind(Kind::Bool).view([b, 1, 1, sk]));
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, false);
        out.transpose(1, 2)
            .reshape([b, s, self.heads * self.head_dim])
            .apply(&self.to_out)
    }
}
