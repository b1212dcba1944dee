//! The Qwen3 text encoder (transformers' `Qwen3Model`), as ACE-Step 1.5 uses Qwen3-Embedding-0.6B:
//! the decoder stack run once over the prompt, its `last_hidden_state` (after the final norm) the
//! text conditioning.
//!
//! Loads a Hugging Face folder: `config.json` and `model.safetensors` with `Qwen3Model`'s key
//! names (`embed_tokens.weight`, `layers.N.self_attn.q_proj.weight`, ...; a `Qwen3ForCausalLM`
//! checkpoint's `model.` prefix is accepted and its `lm_head.weight` ignored). Pre-norm blocks:
//! RMSNorm, grouped-query self-attention with a per-head RMSNorm on queries and keys before the
//! rotary embedding (rotate-half, the config's theta), a causal mask; RMSNorm, SwiGLU MLP. No
//! biases, no sliding window (configs asking for either are rejected rather than run wrong).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::nn::norm::rms_norm;
use crate::nn::rope::Rotary;
use crate::weights::source::{read_json, TensorSource};
use crate::{ModelError, Result};

/// The subset of a Hugging Face Qwen3 `config.json` that the encoder uses. Reads both the
/// transformers 4 layout (`rope_theta` at the top) and the 5 one (`rope_parameters.rope_theta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawQwen3Config")]
pub struct Qwen3Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: i64,
}

impl Qwen3Config {
    /// Qwen3-Embedding-0.6B, the text encoder ACE-Step 1.5 bundles.
    pub fn qwen3_embedding_0_6b() -> Self {
        Self {
            vocab_size: 151_669,
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 32_768,
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(ModelError::Input(format!(
                    "qwen3 {name} must be positive, got {v}"
                )));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ModelError::Input(format!(
                "qwen3 num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::Input(format!(
                "qwen3 head_dim must be even for the rotary embedding, got {}",
                self.head_dim
            )));
        }
        if !(self.rope_theta > 0.0 && self.rms_norm_eps > 0.0) {
            return Err(ModelError::Input(
                "qwen3 rope_theta and rms_norm_eps must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl Default for Qwen3Config {
    fn default() -> Self {
        Self::qwen3_embedding_0_6b()
    }
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// `config.json` as written, before the optional and moved fields are settled.
#[derive(Debug, Deserialize)]
struct RawQwen3Config {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    /// transformers 4's name for non-default rotary variants.
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: i64,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_sliding_window: bool,
    model_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> i64 {
    32_768
}

impl TryFrom<RawQwen3Config> for Qwen3Config {
    type Error = String;

    fn try_from(r: RawQwen3Config) -> Result<Self, String> {
        if let Some(t) = r.model_type.as_deref().filter(|t| *t != "qwen3") {
            return Err(format!("model_type {t:?} is not qwen3"));
        }
        if r.attention_bias {
            return Err("attention_bias = true is not supported (Qwen3 has none)".into());
        }
        if r.use_sliding_window {
            return Err("use_sliding_window = true is not supported".into());
        }
        let rope_type = r.rope_parameters.as_ref().and_then(|p| p.rope_type.clone());
        if rope_type.as_deref().is_some_and(|t| t != "default")
            || r.rope_scaling.as_ref().is_some_and(|v| !v.is_null())
        {
            return Err("only the default rotary embedding is supported (no rope scaling)".into());
        }
        let rope_theta = r
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(r.rope_theta)
            .unwrap_or(10_000.0);
        let head_dim = match r.head_dim {
            Some(d) => d,
            None if r.num_attention_heads > 0 => r.hidden_size / r.num_attention_heads,
            None => 0,
        };
        Ok(Self {
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            num_key_value_heads: r.num_key_value_heads.unwrap_or(r.num_attention_heads),
            head_dim,
            rms_norm_eps: r.rms_norm_eps,
            rope_theta,
            max_position_embeddings: r.max_position_embeddings,
        })
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// `Qwen3Model` without the tokenizer.
///
/// The attention is written here rather than with `nn::attention::Attention`: that one is
/// diffusers' module (its `to_q`/`to_out.0` keys, no query/key norm), while Qwen3 normalises each
/// head before the rotation and needs a causal mask. The rotation itself is `nn::rope::Rotary`
/// (the same rotate-half layout), built per forward with the config's theta.
#[derive(Debug)]
pub struct Qwen3Encoder {
    cfg: Qwen3Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
}

impl Qwen3Encoder {
    /// Loads `config.json` and `model.safetensors` from `dir`, the weights as `kind` on `device`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg: Qwen3Config = read_json(&dir.join("config.json"), "qwen3 config")?;
        let mut src = TensorSource::read(&dir.join("model.safetensors"), device, kind)?;
        let model = Self::from_source(&cfg, &mut src)?;
        src.finish()?;
        Ok(model)
    }

    /// Takes the encoder's weights from `src` (`Qwen3Model` names, optionally under `model.`);
    /// the caller finishes `src`.
    pub fn from_source(cfg: &Qwen3Config, src: &mut TensorSource) -> Result<Self> {
        cfg.validate()?;
        let pre = if src.contains("model.embed_tokens.weight") {
            "model."
        } else {
            ""
        };
        // A causal-LM checkpoint's output head; the encoder stops before it.
        if src.contains("lm_head.weight") {
            drop(src.take_any("lm_head.weight")?);
        }
        let d = cfg.hidden_size;
        let (h, kv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let ff = cfg.intermediate_size;
        let embed = src.take(&format!("{pre}embed_tokens.weight"), &[cfg.vocab_size, d])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("{pre}layers.{i}");
            let mut w = |name: &str, shape: &[i64]| src.take(&format!("{p}.{name}.weight"), shape);
            layers.push(Layer {
                input_norm: w("input_layernorm", &[d])?,
                q: w("self_attn.q_proj", &[h * hd, d])?,
                k: w("self_attn.k_proj", &[kv * hd, d])?,
                v: w("self_attn.v_proj", &[kv * hd, d])?,
                o: w("self_attn.o_proj", &[d, h * hd])?,
                q_norm: w("self_attn.q_norm", &[hd])?,
                k_norm: w("self_attn.k_norm", &[hd])?,
                post_norm: w("post_attention_layernorm", &[d])?,
                gate: w("mlp.gate_proj", &[ff, d])?,
                up: w("mlp.up_proj", &[ff, d])?,
                down: w("mlp.down_proj", &[d, ff])?,
            });
        }
        let norm = src.take(&format!("{pre}norm.weight"), &[d])?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
        })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }

    /// The token-embedding rows of `input_ids` (any shape) with no layers: how ACE-Step embeds
    /// lyrics.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = self.check_ids(input_ids)?;
        let mut shape = ids.size();
        shape.push(self.cfg.hidden_size);
        Ok(self
            .embed
            .index_select(0, &ids.reshape([-1]))
            .view(shape.as_slice()))
    }

    /// `input_ids` int64 `[B, L]`; `attention_mask` `[B, L]` (1 = token, 0 = padding) or `None`
    /// (causal only, as ACE-Step runs it). Positions are `0..L` whatever the mask, as
    /// transformers does. Returns `last_hidden_state` `[B, L, hidden]` in the weights' kind.
    ///
    /// With a mask, a padded position also attends to itself, so that no row of the attention is
    /// empty (an all-masked softmax is NaN); the outputs at padded positions are therefore not
    /// transformers' (which are themselves meaningless), while every real position is.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let dev = self.embed.device();
        let ids = self.check_ids(input_ids)?;
        let (b, l) = ids
            .size2()
            .map_err(|_| ModelError::Input("qwen3 input ids must be [batch, length]".into()))?;
        if l > self.cfg.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "qwen3 input of {l} tokens exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            )));
        }
        let mask = match attention_mask {
            None => None,
            Some(m) => {
                if m.size() != [b, l] {
                    return Err(ModelError::Input(format!(
                        "qwen3 attention mask {:?} does not match input ids [{b}, {l}]",
                        m.size()
                    )));
                }
                let causal = Tensor::ones([l, l], (Kind::Bool, dev)).tril(0);
                let diag = Tensor::eye(l, (Kind::Bool, dev));
                let keys = m.to_device(dev).to_kind(Kind::Bool).view([b, 1, 1, l]);
                Some(causal.logical_and(&keys).logical_or(&diag))
            }
        };
        let (h, kv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let eps = self.cfg.rms_norm_eps;
        let rotary = Rotary::with_theta(hd, l, self.cfg.rope_theta, dev);
        let mut x = self
            .embed
            .index_select(0, &ids.reshape([-1]))
            .view([b, l, -1]);
        for layer in &self.layers {
            let n = rms_norm(&x, &layer.input_norm, eps);
            // [B, L, heads, hd] -> per-head norm -> [B, heads, L, hd] -> rotation.
            let q = n.linear::<Tensor>(&layer.q, None).view([b, l, h, hd]);
            let q = rotary.apply(&rms_norm(&q, &layer.q_norm, eps).transpose(1, 2));
            let k = n.linear::<Tensor>(&layer.k, None).view([b, l, kv, hd]);
            let mut k = rotary.apply(&rms_norm(&k, &layer.k_norm, eps).transpose(1, 2));
            let mut v = n
                .linear::<Tensor>(&layer.v, None)
                .view([b, l, kv, hd])
                .transpose(1, 2);
            if kv != h {
                // Each key/value head serves `h / kv` consecutive query heads (transformers'
                // `repeat_kv`).
                k = k.repeat_interleave_self_int(h / kv, 1, None);
                v = v.repeat_interleave_self_int(h / kv, 1, None);
            }
            let ctx = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask.as_ref(),
                0.0,
                mask.is_none(),
                None,
                false,
            );
            let ctx = ctx.transpose(1, 2).reshape([b, l, h * hd]);
            // In place: `x` is this forward's own tensor (index_select copies the rows).
            x += ctx.linear::<Tensor>(&layer.o, None);
            let n = rms_norm(&x, &layer.post_norm, eps);
            let gated =
                n.linear::<Tensor>(&layer.gate, None).silu() * n.linear::<Tensor>(&layer.up, None);
            x += gated.linear::<Tensor>(&layer.down, None);
        }
        Ok(rms_norm(&x, &self.norm, eps))
    }

    /// `input_ids` as int64 on the weights' device, every id inside the vocabulary.
    fn check_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = input_ids
            .to_device(self.embed.device())
            .to_kind(Kind::Int64);
        if ids.numel() > 0 {
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= self.cfg.vocab_size {
                return Err(ModelError::Input(format!(
                    "qwen3 token ids must be in 0..{}, found {lo}..={hi}",
                    self.cfg.vocab_size
                )));
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_both_transformers_layouts() {
        let v5 = r#"{"model_type":"qwen3","vocab_size":512,"hidden_size":64,
            "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"head_dim":16,"rms_norm_eps":1e-6,
            "rope_parameters":{"rope_theta":1000.0,"rope_type":"default"},
            "max_position_embeddings":128}"#;
        let c: Qwen3Config = serde_json::from_str(v5).unwrap();
        assert_eq!(
            (c.rope_theta, c.head_dim, c.num_key_value_heads),
            (1000.0, 16, 2)
        );
        let real = r#"{"architectures":["Qwen3Model"],"attention_bias":false,"head_dim":128,
            "hidden_act":"silu","hidden_size":1024,"intermediate_size":3072,
            "max_position_embeddings":32768,"model_type":"qwen3","num_attention_heads":16,
            "num_hidden_layers":28,"num_key_value_heads":8,"rms_norm_eps":1e-6,
            "rope_scaling":null,"rope_theta":1000000,"sliding_window":null,
            "tie_word_embeddings":true,"use_sliding_window":false,"vocab_size":151669}"#;
        let c: Qwen3Config = serde_json::from_str(real).unwrap();
        assert_eq!(c, Qwen3Config::qwen3_embedding_0_6b());
        // What the config serialises to reads back the same.
        let back: Qwen3Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let bias = real.replace(r#""attention_bias":false"#, r#""attention_bias":true"#);
        let e = serde_json::from_str::<Qwen3Config>(&bias)
            .unwrap_err()
            .to_string();
        assert!(e.contains("attention_bias"), "{e}");
    }
}
