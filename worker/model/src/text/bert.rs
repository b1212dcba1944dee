//! The text encoder: a BERT (the all-MiniLM-L6-v2 layout) and its WordPiece tokenizer.
//!
//! Loads a Hugging Face folder: `config.json`, `model.safetensors` (keys with or without a `bert.`
//! prefix; `pooler.*` and `embeddings.position_ids` are accepted and ignored) and `tokenizer.json`.
//! Outputs the last hidden states, the attention mask and the sentence embedding that
//! sentence-transformers computes for this model: the mask-weighted mean of the token states,
//! L2-normalised.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{weights, ModelError, Result};

/// The subset of a Hugging Face BERT `config.json` that the encoder uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: i64,
    /// Prompts are truncated to this many tokens (special tokens included). Not a HF field;
    /// defaults to 128 (and never more than `max_position_embeddings`).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_max_length() -> usize {
    128
}
fn default_model_type() -> String {
    "bert".into()
}

impl TextEncoderConfig {
    /// sentence-transformers/all-MiniLM-L6-v2.
    pub fn minilm_l6() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            pad_token_id: 0,
            max_length: 128,
            model_type: "bert".into(),
        }
    }

    /// A tiny BERT with the MiniLM vocabulary, for tests and tiny packs.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 64,
            max_position_embeddings: 128,
            ..Self::minilm_l6()
        }
    }

    fn max_tokens(&self) -> usize {
        self.max_length
            .min(self.max_position_embeddings as usize)
            .max(2)
    }
}

impl Default for TextEncoderConfig {
    fn default() -> Self {
        Self::minilm_l6()
    }
}

#[derive(Debug)]
struct SelfAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    heads: i64,
}

#[derive(Debug)]
struct Layer {
    attention: SelfAttention,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
    act: String,
}

impl Layer {
    fn new(p: nn::Path, cfg: &TextEncoderConfig) -> Self {
        let h = cfg.hidden_size;
        let ln = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        let att = &p / "attention";
        let s = &att / "self";
        Self {
            attention: SelfAttention {
                query: nn::linear(&s / "query", h, h, Default::default()),
                key: nn::linear(&s / "key", h, h, Default::default()),
                value: nn::linear(&s / "value", h, h, Default::default()),
                heads: cfg.num_attention_heads,
            },
            attn_out: nn::linear(&att / "output" / "dense", h, h, Default::default()),
            attn_norm: nn::layer_norm(&att / "output" / "LayerNorm", vec![h], ln),
            intermediate: nn::linear(
                &p / "intermediate" / "dense",
                h,
                cfg.intermediate_size,
                Default::default(),
            ),
            output: nn::linear(
                &p / "output" / "dense",
                cfg.intermediate_size,
                h,
                Default::default(),
            ),
            out_norm: nn::layer_norm(&p / "output" / "LayerNorm", vec![h], ln),
            act: cfg.hidden_act.clone(),
        }
    }

    /// `x` [B, L, H]; `mask` bool [B, 1, 1, L] (true = attend).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, l, h) = x.size3().expect("bert hidden states are [B, L, H]");
        let a = &self.attention;
        let hd = h / a.heads;
        let split = |t: Tensor| t.view([b, l, a.heads, hd]).transpose(1, 2);
        let q = split(x.apply(&a.query));
        let k = split(x.apply(&a.key));
        let v = split(x.apply(&a.value));
        let ctx =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).reshape([b, l, h]);
        let x = (ctx.apply(&self.attn_out) + x).apply(&self.attn_norm);
        let inner = x.apply(&self.intermediate);
        let inner = match self.act.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" => inner.gelu("tanh"),
            "relu" => inner.relu(),
            _ => inner.gelu("none"),
        };
        (inner.apply(&self.output) + x).apply(&self.out_norm)
    }
}

/// BERT without the pooler.
#[derive(Debug)]
pub struct Bert {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    norm: nn::LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    pub fn new(p: nn::Path, cfg: &TextEncoderConfig) -> Self {
        let e = &p / "embeddings";
        let h = cfg.hidden_size;
        let ln = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        Self {
            word_embeddings: nn::embedding(
                &e / "word_embeddings",
                cfg.vocab_size,
                h,
                Default::default(),
            ),
            position_embeddings: nn::embedding(
                &e / "position_embeddings",
                cfg.max_position_embeddings,
                h,
                Default::default(),
            ),
            token_type_embeddings: nn::embedding(
                &e / "token_type_embeddings",
                cfg.type_vocab_size,
                h,
                Default::default(),
            ),
            norm: nn::layer_norm(&e / "LayerNorm", vec![h], ln),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::new(&p / "encoder" / "layer" / i, cfg))
                .collect(),
        }
    }

    /// `input_ids`, `attention_mask`: int64 [B, L]. Returns the last hidden states [B, L, H].
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let (_, l) = input_ids.size2().expect("input ids are [B, L]");
        let positions = Tensor::arange(l, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let types = input_ids.zeros_like();
        let mut x = (self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(&positions)
            + self.token_type_embeddings.forward(&types))
        .apply(&self.norm);
        let mask = attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
        for layer in &self.layers {
            x = layer.forward(&x, &mask);
        }
        x
    }
}

/// The encoder's output for a batch of prompts.
#[derive(Debug)]
pub struct TextEncoding {
    /// Last hidden states [B, L, H] (f32). Rows past a prompt's length are padding.
    pub token_states: Tensor,
    /// 1 for real tokens, 0 for padding: f32 [B, L].
    pub mask: Tensor,
    /// Mean-pooled, L2-normalised sentence embedding [B, H] (f32).
    pub pooled: Tensor,
}

/// A loaded tokenizer and BERT on one device.
#[derive(Debug)]
pub struct TextEncoder {
    cfg: TextEncoderConfig,
    tokenizer: Tokenizer,
    model: Bert,
    _vs: nn::VarStore,
    device: Device,
}

fn strip_prefix(key: &str) -> &str {
    key.strip_prefix("bert.").unwrap_or(key)
}

/// Keys of a HF BERT checkpoint that the encoder does not use.
fn ignored_key(key: &str) -> bool {
    key.starts_with("pooler.") || key == "embeddings.position_ids"
}

/// Reads `tokenizer.json` and configures truncation to `max_len` and padding to the longest prompt.
pub fn load_tokenizer(path: &Path, max_len: usize) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_file(path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tok)
}

impl TextEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Pack {
            path: cfg_path.display().to_string(),
            message: format!("cannot read text encoder config: {e}"),
        })?;
        let cfg: TextEncoderConfig = serde_json::from_str(&text).map_err(|e| ModelError::Pack {
            path: cfg_path.display().to_string(),
            message: format!("invalid text encoder config: {e}"),
        })?;
        if cfg.model_type != "bert" {
            return Err(ModelError::Pack {
                path: cfg_path.display().to_string(),
                message: format!(
                    "text encoder model_type {:?} is not supported (bert only)",
                    cfg.model_type
                ),
            });
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), cfg.max_tokens())?;
        let vs = nn::VarStore::new(device);
        let model = Bert::new(vs.root(), &cfg);
        let weights_path = dir.join("model.safetensors");
        let file = weights::read_safetensors(&weights_path)?;
        let tensors = file
            .tensors
            .into_iter()
            .map(|(k, v)| (strip_prefix(&k).to_string(), v))
            .collect();
        weights::load_strict(
            &vs,
            &tensors,
            &weights_path.display().to_string(),
            &ignored_key,
        )?;
        Ok(Self {
            cfg,
            tokenizer,
            model,
            _vs: vs,
            device,
        })
    }

    pub fn config(&self) -> &TextEncoderConfig {
        &self.cfg
    }

    pub fn hidden_size(&self) -> i64 {
        self.cfg.hidden_size
    }

    /// Token ids and attention mask (int64 [B, L], padded to the longest prompt, on CPU).
    pub fn tokenize(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let enc = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let b = enc.len() as i64;
        let l = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(0) as i64;
        let ids: Vec<i64> = enc
            .iter()
            .flat_map(|e| e.get_ids().iter().map(|&i| i as i64))
            .collect();
        let mask: Vec<i64> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().iter().map(|&i| i as i64))
            .collect();
        Ok((
            Tensor::from_slice(&ids).view([b, l]),
            Tensor::from_slice(&mask).view([b, l]),
        ))
    }

    /// Runs the encoder on given token ids and mask (int64 [B, L]).
    pub fn encode_ids(&self, input_ids: &Tensor, attention_mask: &Tensor) -> TextEncoding {
        let _guard = tch::no_grad_guard();
        let ids = input_ids.to_device(self.device);
        let mask = attention_mask.to_device(self.device);
        let token_states = self.model.forward(&ids, &mask).to_kind(Kind::Float);
        let maskf = mask.to_kind(Kind::Float);
        let summed = (&token_states * maskf.unsqueeze(-1)).sum_dim_intlist(1, false, Kind::Float);
        let counts = maskf.sum_dim_intlist(1, true, Kind::Float).clamp_min(1e-9);
        let mean = summed / counts;
        let norm = mean.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12);
        TextEncoding {
            token_states,
            mask: maskf,
            pooled: mean / norm,
        }
    }

    /// Tokenizes and encodes a batch of prompts.
    pub fn encode(&self, prompts: &[&str]) -> Result<TextEncoding> {
        if prompts.is_empty() {
            return Err(ModelError::Input("no prompts to encode".into()));
        }
        let (ids, mask) = self.tokenize(prompts)?;
        Ok(self.encode_ids(&ids, &mask))
    }
}
