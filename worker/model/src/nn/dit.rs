//! The denoiser: diffusers' `StableAudioDiTModel` (diffusers 0.42,
//! `models/transformers/stable_audio_transformer.py`) with the same structure and weight names, so
//! a diffusers `transformer/diffusion_pytorch_model.safetensors` loads as is.
//!
//! Differences from the Python forward, all additive: the timestep is per sample (`[B]`), and an
//! optional self-attention key mask lets latents of different lengths share a batch (padding at
//! the end; rotary positions start at the global token, so padding does not move them).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::nn::attention::Attention;
use crate::nn::rope::Rotary;

/// `StableAudioDiTModel`'s constructor arguments (`[denoiser]` in `model.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DitConfig {
    pub sample_size: i64,
    pub in_channels: i64,
    pub num_layers: i64,
    pub attention_head_dim: i64,
    pub num_attention_heads: i64,
    pub num_key_value_attention_heads: i64,
    pub out_channels: i64,
    pub cross_attention_dim: i64,
    pub time_proj_dim: i64,
    pub global_states_input_dim: i64,
    pub cross_attention_input_dim: i64,
}

impl Default for DitConfig {
    fn default() -> Self {
        Self::stable_audio_open()
    }
}

impl DitConfig {
    /// stabilityai/stable-audio-open-1.0 (diffusers' defaults).
    pub fn stable_audio_open() -> Self {
        Self {
            sample_size: 1024,
            in_channels: 64,
            num_layers: 24,
            attention_head_dim: 64,
            num_attention_heads: 24,
            num_key_value_attention_heads: 12,
            out_channels: 64,
            cross_attention_dim: 768,
            time_proj_dim: 256,
            global_states_input_dim: 1536,
            cross_attention_input_dim: 768,
        }
    }

    /// A tiny configuration for tests and tiny packs (`in_channels`, `cross_attention_input_dim`
    /// and `global_states_input_dim` must match the pack's latent and conditioning layout).
    pub fn tiny(in_channels: i64, text_dim: i64, global_dim: i64) -> Self {
        Self {
            sample_size: 256,
            in_channels,
            num_layers: 2,
            attention_head_dim: 8,
            num_attention_heads: 4,
            num_key_value_attention_heads: 2,
            out_channels: in_channels,
            cross_attention_dim: 32,
            time_proj_dim: 16,
            global_states_input_dim: global_dim,
            cross_attention_input_dim: text_dim,
        }
    }

    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// An upper estimate of the activation memory of `rows` rows of `frames` latent frames
    /// (plus the global token) and `text_tokens` cross tokens in one forward, in bytes of
    /// `elem_bytes`: the widest point of a block (the residual stream and attention
    /// projections, the 4x feed-forward, the attention probabilities as the unfused kernel
    /// holds them). The engine caps each forward's batch by the sum of these.
    pub fn activation_bytes(
        &self,
        rows: i64,
        frames: i64,
        text_tokens: i64,
        elem_bytes: usize,
    ) -> usize {
        let tokens = frames + 1;
        let inner = self.inner_dim();
        let per_token = 8 * inner + 2 * 4 * inner;
        let attention = self.num_attention_heads * tokens * (tokens + text_tokens);
        (rows * (tokens * per_token + attention) * elem_bytes as i64) as usize
    }

    /// Rotated channels per head (the pipeline's `rotary_embed_dim`).
    pub fn rotary_dim(&self) -> i64 {
        self.attention_head_dim / 2
    }

    /// Checks the divisibility constraints that the architecture relies on.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("in_channels", self.in_channels),
            ("num_layers", self.num_layers),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            (
                "num_key_value_attention_heads",
                self.num_key_value_attention_heads,
            ),
            ("out_channels", self.out_channels),
            ("cross_attention_dim", self.cross_attention_dim),
            ("time_proj_dim", self.time_proj_dim),
            ("global_states_input_dim", self.global_states_input_dim),
            ("cross_attention_input_dim", self.cross_attention_input_dim),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(format!("denoiser.{name} must be positive, got {v}"));
            }
        }
        if self.num_attention_heads % self.num_key_value_attention_heads != 0 {
            return Err(
                "denoiser.num_attention_heads must be a multiple of num_key_value_attention_heads"
                    .into(),
            );
        }
        if self.cross_attention_dim % self.attention_head_dim != 0 {
            return Err(
                "denoiser.cross_attention_dim must be a multiple of attention_head_dim".into(),
            );
        }
        if self.attention_head_dim % 4 != 0 || self.time_proj_dim % 2 != 0 {
            return Err(
                "denoiser.attention_head_dim must be a multiple of 4 and time_proj_dim even".into(),
            );
        }
        Ok(())
    }
}

/// Rotary table lengths a denoiser keeps.
const ROTARY_CACHE_LENGTHS: usize = 8;

/// `StableAudioGaussianFourierProjection(flip_sin_to_cos=True, log=False, set_W_to_weight=False)`.
#[derive(Debug)]
struct FourierProjection {
    weight: Tensor,
}

impl FourierProjection {
    fn forward(&self, t: &Tensor) -> Tensor {
        let proj = (t * (2.0 * std::f64::consts::PI))
            .unsqueeze(1)
            .matmul(&self.weight.unsqueeze(0));
        Tensor::cat(&[proj.cos(), proj.sin()], -1)
    }
}

/// `nn.Sequential(Linear, SiLU, Linear)` with keys `0` and `2`.
#[derive(Debug)]
struct Mlp {
    l0: nn::Linear,
    l2: nn::Linear,
}

impl Mlp {
    fn new(p: nn::Path, i: i64, h: i64, o: i64, bias: bool) -> Self {
        let c = nn::LinearConfig {
            bias,
            ..Default::default()
        };
        Self {
            l0: nn::linear(&p / 0, i, h, c),
            l2: nn::linear(&p / 2, h, o, c),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.l0).silu().apply(&self.l2)
    }
}

impl Mlp {
    /// The forward one batch row at a time on CPU, where a matrix multiply of a few rows is not
    /// batch-invariant (MKL's small-matrix kernels round row 0 of a 4-row product differently
    /// from the same row alone, ~1e-6); a loop over rows costs nothing next to the blocks. CUDA
    /// keeps one launch: its GEMMs are not batch-invariant at any size anyway.
    fn forward_rows(&self, x: &Tensor) -> Tensor {
        let rows = x.size()[0];
        if x.device().is_cuda() || rows <= 1 {
            return self.forward(x);
        }
        let out: Vec<Tensor> = (0..rows)
            .map(|r| self.forward(&x.narrow(0, r, 1)))
            .collect();
        Tensor::cat(&out, 0)
    }
}

/// `StableAudioDiTBlock`: pre-norm self-attention (rotary), cross-attention, SwiGLU feed-forward.
#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff_proj: nn::Linear,
    ff_out: nn::Linear,
}

impl Block {
    fn new(p: nn::Path, cfg: &DitConfig) -> Self {
        let dim = cfg.inner_dim();
        let ln = nn::LayerNormConfig {
            eps: 1e-5,
            ..Default::default()
        };
        let (h, hd) = (cfg.num_attention_heads, cfg.attention_head_dim);
        let inner = 4 * dim;
        Self {
            norm1: nn::layer_norm(&p / "norm1", vec![dim], ln),
            attn1: Attention::new(&p / "attn1", dim, None, h, h, hd),
            norm2: nn::layer_norm(&p / "norm2", vec![dim], ln),
            attn2: Attention::new(
                &p / "attn2",
                dim,
                Some(cfg.cross_attention_dim),
                h,
                cfg.num_key_value_attention_heads,
                hd,
            ),
            norm3: nn::layer_norm(&p / "norm3", vec![dim], ln),
            ff_proj: nn::linear(
                &p / "ff" / "net" / 0 / "proj",
                dim,
                2 * inner,
                Default::default(),
            ),
            ff_out: nn::linear(&p / "ff" / "net" / 2, inner, dim, Default::default()),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        self_mask: Option<&Tensor>,
        ctx: &Tensor,
        ctx_mask: Option<&Tensor>,
        rotary: &Rotary,
    ) -> Tensor {
        let x = self
            .attn1
            .forward(&x.apply(&self.norm1), None, self_mask, Some(rotary))
            + x;
        let x = self
            .attn2
            .forward(&x.apply(&self.norm2), Some(ctx), ctx_mask, None)
            + x;
        let h = x.apply(&self.norm3).apply(&self.ff_proj);
        let parts = h.chunk(2, -1);
        let h = (&parts[0] * parts[1].silu()).apply(&self.ff_out);
        h + x
    }
}

/// Inputs of one denoiser forward.
#[derive(Debug)]
pub struct DitInput<'a> {
    /// Noisy latents `[B, in_channels, T]`.
    pub hidden_states: &'a Tensor,
    /// Per-sample timesteps `[B]`.
    pub timestep: &'a Tensor,
    /// Text token states `[B, L, cross_attention_input_dim]`.
    pub encoder_hidden_states: &'a Tensor,
    /// Global conditioning `[B, 1, global_states_input_dim]` (or `[B, global_states_input_dim]`).
    pub global_hidden_states: &'a Tensor,
    /// Tables over at least `1 + T` positions (`Rotary::new(cfg.rotary_dim(), 1 + T, ..)`).
    pub rotary: &'a Rotary,
    /// Bool `[B, T]`: which latent frames are real (for batches padded to a common length).
    pub attention_mask: Option<&'a Tensor>,
    /// Bool `[B, L]`: which text tokens are real.
    pub encoder_attention_mask: Option<&'a Tensor>,
    /// Per-frame controls `[B, T, inner_dim]` added to the hidden states after `proj_in`
    /// (`frame_cond`); `None` for packs without them (the forward diffusers defines).
    pub frame_states: Option<&'a Tensor>,
}

/// `StableAudioDiTModel`.
#[derive(Debug)]
pub struct StableAudioDit {
    cfg: DitConfig,
    time_proj: FourierProjection,
    timestep_proj: Mlp,
    global_proj: Mlp,
    cross_attention_proj: Mlp,
    preprocess_conv: nn::Conv1D,
    proj_in: nn::Linear,
    blocks: Vec<Block>,
    proj_out: nn::Linear,
    postprocess_conv: nn::Conv1D,
    /// Rotary tables by latent frames and device, made once: a step reads them from device
    /// memory rather than building them on the host and copying them each time (and a captured
    /// CUDA graph needs them at a fixed address).
    rotary_cache: Mutex<HashMap<(i64, Device), Rotary>>,
}

impl StableAudioDit {
    pub fn new(p: nn::Path, cfg: &DitConfig) -> Self {
        let inner = cfg.inner_dim();
        let nb = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        let conv = nn::ConvConfig {
            bias: false,
            ..Default::default()
        };
        let weight = (&p / "time_proj").var(
            "weight",
            &[cfg.time_proj_dim / 2],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        Self {
            cfg: cfg.clone(),
            time_proj: FourierProjection { weight },
            timestep_proj: Mlp::new(&p / "timestep_proj", cfg.time_proj_dim, inner, inner, true),
            global_proj: Mlp::new(
                &p / "global_proj",
                cfg.global_states_input_dim,
                inner,
                inner,
                false,
            ),
            cross_attention_proj: Mlp::new(
                &p / "cross_attention_proj",
                cfg.cross_attention_input_dim,
                cfg.cross_attention_dim,
                cfg.cross_attention_dim,
                false,
            ),
            preprocess_conv: nn::conv1d(
                &p / "preprocess_conv",
                cfg.in_channels,
                cfg.in_channels,
                1,
                conv,
            ),
            proj_in: nn::linear(&p / "proj_in", cfg.in_channels, inner, nb),
            blocks: (0..cfg.num_layers)
                .map(|i| Block::new(&p / "transformer_blocks" / i, cfg))
                .collect(),
            proj_out: nn::linear(&p / "proj_out", inner, cfg.out_channels, nb),
            postprocess_conv: nn::conv1d(
                &p / "postprocess_conv",
                cfg.out_channels,
                cfg.out_channels,
                1,
                conv,
            ),
            rotary_cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// The rotary tables the pipeline passes for latents of `frames` frames (cached per length
    /// and device; the values are [`Rotary::new`]'s).
    pub fn rotary(&self, frames: i64, device: Device) -> Rotary {
        // Tables are never mutated in place, so a poisoned lock still holds good ones.
        let mut cache = self.rotary_cache.lock().unwrap_or_else(|e| e.into_inner());
        // A family with ragged lengths (mel) would otherwise keep a table per length ever seen;
        // a Stable Audio pack has one length. Exact lengths only: a longer table's first rows
        // need not be the same bits as a table made for the length (vectorised cos/sin tails).
        if cache.len() >= ROTARY_CACHE_LENGTHS && !cache.contains_key(&(frames, device)) {
            cache.clear();
        }
        cache
            .entry((frames, device))
            .or_insert_with(|| Rotary::new(self.cfg.rotary_dim(), frames + 1, device))
            .shallow_clone()
    }

    /// The forward pass; returns `[B, out_channels, T]` in the input's dtype. Run it under
    /// `tch::no_grad_guard()` for inference.
    pub fn forward(&self, input: &DitInput<'_>) -> Tensor {
        let kind = self.time_proj.weight.kind();
        let x = input.hidden_states.to_kind(kind);
        let ctx = self
            .cross_attention_proj
            .forward(&input.encoder_hidden_states.to_kind(kind));
        let mut global = input.global_hidden_states.to_kind(kind);
        if global.dim() == 2 {
            global = global.unsqueeze(1);
        }
        // One vector per batch row: row-wise, so that a row's result does not depend on the
        // batch (the blocks' multiplies have rows x frames rows and are batch-invariant).
        let global = self.global_proj.forward_rows(&global);
        let time = self
            .timestep_proj
            .forward_rows(&self.time_proj.forward(&input.timestep.to_kind(kind)));
        let global = global + time.unsqueeze(1);
        let x = x.apply(&self.preprocess_conv) + &x;
        let mut x = x.transpose(1, 2).apply(&self.proj_in);
        if let Some(f) = input.frame_states {
            x += f.to_kind(kind);
        }
        let mut x = Tensor::cat(&[&global, &x], -2);
        let self_mask = input.attention_mask.map(|m| {
            let m = m.to_kind(Kind::Bool);
            let ones = Tensor::ones([m.size()[0], 1], (Kind::Bool, m.device()));
            Tensor::cat(&[&ones, &m], -1)
        });
        let ctx_mask = input.encoder_attention_mask.map(|m| m.to_kind(Kind::Bool));
        for block in &self.blocks {
            x = block.forward(
                &x,
                self_mask.as_ref(),
                &ctx,
                ctx_mask.as_ref(),
                input.rotary,
            );
        }
        let x = x.apply(&self.proj_out).transpose(1, 2);
        let frames = x.size()[2];
        let x = x.narrow(2, 1, frames - 1);
        (x.apply(&self.postprocess_conv) + &x).to_kind(input.hidden_states.kind())
    }
}
