//! The T5 encoder (transformers' `T5EncoderModel`) and its tokenizer, as Stable Audio Open uses them.
//!
//! Loads a Hugging Face folder: `config.json` and `model.safetensors` with transformers' key names
//! (`shared.weight`; older folders also carry `encoder.embed_tokens.weight`, the same tensor, read
//! as an alias). Pre-norm blocks of self-attention and a feed-forward (ReLU for t5-base v1.0,
//! gated GELU for v1.1 and flan-t5), RMS layer norms computed in f32, and a relative position bias
//! (bidirectional log buckets) that block 0 owns and every block adds. Attention scores are not
//! scaled by 1/sqrt(d). Run it in f32: T5 activations overflow fp16.
//!
//! The tokenizer pads every prompt to a fixed `max_length` (Stable Audio attends to the padding,
//! so the text length is part of the model, not of the batch).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::weights::source::{read_json, TensorSource};
use crate::{ModelError, Result};

/// The subset of a Hugging Face T5 `config.json` that the encoder uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu`, `gelu`, `gated-gelu`, `gated-relu`, `gated-silu`, ...
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_buckets() -> i64 {
    32
}
fn default_max_distance() -> i64 {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn default_model_type() -> String {
    "t5".into()
}

impl T5Config {
    /// google-t5/t5-base (the text encoder of Stable Audio Open 1.0 and Small).
    pub fn t5_base() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 768,
            d_kv: 64,
            d_ff: 3072,
            num_layers: 12,
            num_heads: 12,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            model_type: "t5".into(),
        }
    }

    /// The feed-forward variant `feed_forward_proj` names (transformers' T5Config rules).
    pub fn feed_forward(&self) -> Result<FeedForward> {
        let (gated, act) = match self.feed_forward_proj.split_once('-') {
            Some(("gated", act)) => (true, act),
            None => (false, self.feed_forward_proj.as_str()),
            Some(_) => return Err(self.bad_ff()),
        };
        let act = match act {
            "relu" => Activation::Relu,
            // transformers maps "gated-gelu" to the tanh approximation ("gelu_new").
            "gelu" if gated => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "silu" => Activation::Silu,
            _ => return Err(self.bad_ff()),
        };
        Ok(FeedForward { gated, act })
    }

    fn bad_ff(&self) -> ModelError {
        ModelError::Input(format!(
            "t5 feed_forward_proj {:?} is not supported (relu, gelu, silu, optionally gated-)",
            self.feed_forward_proj
        ))
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(ModelError::Input(format!(
                    "t5 {name} must be positive, got {v}"
                )));
            }
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(ModelError::Input(
                "t5 relative_attention_num_buckets must be at least 4".into(),
            ));
        }
        self.feed_forward().map(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
    GeluTanh,
    Silu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Relu => x.relu(),
            Self::Gelu => x.gelu("none"),
            Self::GeluTanh => x.gelu("tanh"),
            Self::Silu => x.silu(),
        }
    }
}

/// `DenseReluDense` (`wi`, `wo`) or `DenseGatedActDense` (`wi_0`, `wi_1`, `wo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForward {
    pub gated: bool,
    pub act: Activation,
}

/// T5's RMS norm: no mean, no bias, the variance in f32.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let var = x
        .to_kind(Kind::Float)
        .pow_tensor_scalar(2)
        .mean_dim(-1, true, Kind::Float);
    let y = x * (var + eps).rsqrt();
    w * y.to_kind(w.kind())
}

#[derive(Debug)]
struct Block {
    norm1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    norm2: Tensor,
    /// `wi` or `wi_0`; `wi_1` when gated.
    wi: Tensor,
    wi_gate: Option<Tensor>,
    wo: Tensor,
}

/// `T5EncoderModel` without the tokenizer.
#[derive(Debug)]
pub struct T5Encoder {
    cfg: T5Config,
    ff: FeedForward,
    shared: Tensor,
    /// `[buckets, heads]`, owned by block 0 and shared by all blocks.
    relative_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
}

impl T5Encoder {
    /// Loads `config.json` and `model.safetensors` from `dir` (f32 on `device`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg: T5Config = read_json(&dir.join("config.json"), "t5 config")?;
        if cfg.model_type != "t5" {
            return Err(ModelError::Pack {
                path: dir.join("config.json").display().to_string(),
                message: format!("text encoder model_type {:?} is not t5", cfg.model_type),
            });
        }
        let mut src = TensorSource::read(&dir.join("model.safetensors"), device, Kind::Float)?;
        let model = Self::from_source(&cfg, &mut src)?;
        src.finish()?;
        Ok(model)
    }

    /// Takes the encoder's weights from `src` (transformers' names); the caller finishes `src`.
    pub fn from_source(cfg: &T5Config, src: &mut TensorSource) -> Result<Self> {
        cfg.validate()?;
        let ff = cfg.feed_forward()?;
        src.alias("encoder.embed_tokens.weight", "shared.weight")?;
        let (d, inner, dff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
        let shared = src.take("shared.weight", &[cfg.vocab_size, d])?;
        let relative_bias = src.take(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[cfg.relative_attention_num_buckets, cfg.num_heads],
        )?;
        let mut blocks = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}.layer");
            let a = format!("{p}.0.SelfAttention");
            let f = format!("{p}.1.DenseReluDense");
            let (wi, wi_gate) = if ff.gated {
                (
                    src.take(&format!("{f}.wi_0.weight"), &[dff, d])?,
                    Some(src.take(&format!("{f}.wi_1.weight"), &[dff, d])?),
                )
            } else {
                (src.take(&format!("{f}.wi.weight"), &[dff, d])?, None)
            };
            blocks.push(Block {
                norm1: src.take(&format!("{p}.0.layer_norm.weight"), &[d])?,
                q: src.take(&format!("{a}.q.weight"), &[inner, d])?,
                k: src.take(&format!("{a}.k.weight"), &[inner, d])?,
                v: src.take(&format!("{a}.v.weight"), &[inner, d])?,
                o: src.take(&format!("{a}.o.weight"), &[d, inner])?,
                norm2: src.take(&format!("{p}.1.layer_norm.weight"), &[d])?,
                wi,
                wi_gate,
                wo: src.take(&format!("{f}.wo.weight"), &[d, dff])?,
            });
        }
        let final_norm = src.take("encoder.final_layer_norm.weight", &[d])?;
        Ok(Self {
            cfg: cfg.clone(),
            ff,
            shared,
            relative_bias,
            blocks,
            final_norm,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// Bucket indices `[q, k]` of relative positions `k - q`, bidirectional. The log bucket uses
    /// the same f32 libtorch ops as transformers: at distances where it lands exactly on an
    /// integer, f64 arithmetic could round to the other bucket.
    pub fn relative_buckets(&self, len: i64, device: Device) -> Tensor {
        let pos = Tensor::arange(len, (Kind::Int64, device));
        let rel = pos.unsqueeze(0) - pos.unsqueeze(1);
        let half = self.cfg.relative_attention_num_buckets / 2;
        let max_exact = half / 2;
        let sign = rel.gt(0).to_kind(Kind::Int64) * half;
        let n = rel.abs();
        let is_small = n.lt(max_exact);
        let large = (n.to_kind(Kind::Float) / max_exact as f64).log()
            / (self.cfg.relative_attention_max_distance as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64;
        let large = (large.to_kind(Kind::Int64) + max_exact).clamp_max(half - 1);
        sign + n.where_self(&is_small, &large)
    }

    /// `input_ids`, `attention_mask`: int64 `[B, L]`. Returns the last hidden states `[B, L, d]`
    /// (f32). Run under `tch::no_grad_guard()`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let dev = self.shared.device();
        let ids = input_ids.to_device(dev);
        let (b, l) = ids.size2().expect("t5 input ids are [B, L]");
        let (h, dk) = (self.cfg.num_heads, self.cfg.d_kv);
        let eps = self.cfg.layer_norm_epsilon;
        // [1, H, L, L] position bias plus the additive key mask [B, 1, 1, L].
        let bias = self
            .relative_bias
            .index_select(0, &self.relative_buckets(l, dev).reshape([-1]))
            .view([l, l, h])
            .permute([2, 0, 1])
            .unsqueeze(0);
        let keep = attention_mask
            .to_device(dev)
            .to_kind(Kind::Bool)
            .view([b, 1, 1, l]);
        let neg = Tensor::full([1], f32::MIN as f64, (Kind::Float, dev));
        let mask = Tensor::zeros([1], (Kind::Float, dev)).where_self(&keep, &neg);
        let bias = bias + mask;
        let mut x = self
            .shared
            .index_select(0, &ids.reshape([-1]))
            .view([b, l, -1]);
        let heads = |t: Tensor| t.view([b, l, h, dk]).transpose(1, 2);
        for blk in &self.blocks {
            let n = rms_norm(&x, &blk.norm1, eps);
            let (q, k, v) = (
                heads(n.linear::<Tensor>(&blk.q, None)),
                heads(n.linear::<Tensor>(&blk.k, None)),
                heads(n.linear::<Tensor>(&blk.v, None)),
            );
            let scores = q.matmul(&k.transpose(2, 3)) + &bias;
            let ctx = scores.softmax(-1, Kind::Float).matmul(&v);
            let ctx = ctx.transpose(1, 2).reshape([b, l, h * dk]);
            // In place: `x` is this forward's own tensor.
            x += ctx.linear::<Tensor>(&blk.o, None);
            let n = rms_norm(&x, &blk.norm2, eps);
            let mut inner = self.ff.act.apply(&n.linear::<Tensor>(&blk.wi, None));
            if let Some(g) = &blk.wi_gate {
                inner *= n.linear::<Tensor>(g, None);
            }
            x += inner.linear::<Tensor>(&blk.wo, None);
        }
        rms_norm(&x, &self.final_norm, eps)
    }
}

/// `tokenizer_config.json` fields the tokenizer needs.
#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

/// A tokenizer that pads and truncates every prompt to `max_length` tokens (`</s>` included).
#[derive(Debug, Clone)]
pub struct FixedTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
}

impl FixedTokenizer {
    /// Reads `dir/tokenizer.json`; the length is `max_length` if given, else `model_max_length`
    /// of `dir/tokenizer_config.json`.
    pub fn load(dir: &Path, max_length: Option<usize>) -> Result<Self> {
        let max_length = match max_length {
            Some(n) => n,
            None => {
                let path = dir.join("tokenizer_config.json");
                let cfg: TokenizerConfig = read_json(&path, "tokenizer config")?;
                match cfg.model_max_length {
                    Some(n) if (1.0..=1e6).contains(&n) => n as usize,
                    _ => {
                        return Err(ModelError::Pack {
                            path: path.display().to_string(),
                            message: "model_max_length must be set (1..=1e6)".into(),
                        })
                    }
                }
            }
        };
        if max_length < 2 {
            return Err(ModelError::Input(format!(
                "tokenizer max_length must be at least 2, got {max_length}"
            )));
        }
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let pad_id = tokenizer.token_to_id("<pad>").unwrap_or(0);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            pad_id,
            pad_token: "<pad>".into(),
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self {
            tokenizer,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Token ids and attention mask, int64 `[B, max_length]` on CPU.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let enc = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let (b, l) = (enc.len() as i64, self.max_length as i64);
        let mut ids = Vec::with_capacity((b * l) as usize);
        let mut mask = Vec::with_capacity((b * l) as usize);
        for e in &enc {
            if e.get_ids().len() != self.max_length {
                return Err(ModelError::Tokenizer(format!(
                    "a prompt encoded to {} tokens, not the fixed {}",
                    e.get_ids().len(),
                    self.max_length
                )));
            }
            ids.extend(e.get_ids().iter().map(|&i| i as i64));
            mask.extend(e.get_attention_mask().iter().map(|&m| m as i64));
        }
        Ok((
            Tensor::from_slice(&ids).view([b, l]),
            Tensor::from_slice(&mask).view([b, l]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_forward_variants() {
        let mut c = T5Config::t5_base();
        assert_eq!(
            c.feed_forward().unwrap(),
            FeedForward {
                gated: false,
                act: Activation::Relu
            }
        );
        c.feed_forward_proj = "gated-gelu".into();
        assert_eq!(
            c.feed_forward().unwrap(),
            FeedForward {
                gated: true,
                act: Activation::GeluTanh
            }
        );
        c.feed_forward_proj = "swish-gated".into();
        assert!(c.feed_forward().is_err());
    }
}
