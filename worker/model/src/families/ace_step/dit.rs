//! ACE-Step 1.5's diffusion transformer (diffusers `AceStepTransformer1DModel`): the noisy latent
//! beside its context (source latents and chunk mask) patchified by a stride-`patch` convolution,
//! blocks of AdaLN self-attention (sliding-window and full layers alternating, rotary positions),
//! cross-attention to the packed condition and an AdaLN SwiGLU MLP, then the transposed
//! convolution back to latent frames. It predicts the flow velocity (noise minus clean latent).
//!
//! Two timestep paths (`time_embed` for `t`, `time_embed_r` for `t - r`, the mean-flow interval)
//! are summed; inference passes `r = t`, so the second always sees 0 but still adds its biases.

use tch::{Kind, Tensor};

use super::config::{DitConfig, LayerKind};
use super::layers::{band_mask, banded, Attention, Mlp};
use crate::nn::norm::rms_norm;
use crate::nn::rope::Rotary;
use crate::weights::source::TensorSource;
use crate::{ModelError, Result};

/// Sinusoid channels of a timestep.
const TIME_CHANNELS: i64 = 256;

/// A timestep's embedding `temb` `[B, H]` and its six AdaLN vectors `[B, 6, H]`.
#[derive(Debug)]
struct TimeEmbed {
    l1: (Tensor, Tensor),
    l2: (Tensor, Tensor),
    proj: (Tensor, Tensor),
}

impl TimeEmbed {
    fn load(src: &mut TensorSource, prefix: &str, h: i64) -> Result<Self> {
        let mut lin = |name: &str, out: i64, inp: i64| -> Result<(Tensor, Tensor)> {
            Ok((
                src.take(&format!("{prefix}.{name}.weight"), &[out, inp])?,
                src.take(&format!("{prefix}.{name}.bias"), &[out])?,
            ))
        };
        Ok(Self {
            l1: lin("linear_1", h, TIME_CHANNELS)?,
            l2: lin("linear_2", h, h)?,
            proj: lin("time_proj", 6 * h, h)?,
        })
    }

    /// `t` `[B]` in the model's kind: scaled by 1000 in that kind (so bf16 rounds it as the
    /// reference does), the sinusoid `[cos, sin]` in f32, then back to the kind.
    fn forward(&self, t: &Tensor) -> (Tensor, Tensor) {
        let kind = t.kind();
        let half = TIME_CHANNELS / 2;
        let freqs = (Tensor::arange(half, (Kind::Float, t.device()))
            * (-(10_000f64.ln()) / half as f64))
            .exp();
        let x = (t * 1000.0).to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
        let sinusoid = Tensor::cat(&[x.cos(), x.sin()], 1).to_kind(kind);
        let temb = sinusoid
            .linear(&self.l1.0, Some(&self.l1.1))
            .silu()
            .linear(&self.l2.0, Some(&self.l2.1));
        let proj = temb.silu().linear(&self.proj.0, Some(&self.proj.1));
        let b = t.size()[0];
        (temb, proj.view([b, 6, -1]))
    }
}

#[derive(Debug)]
struct Block {
    kind: LayerKind,
    self_norm: Tensor,
    self_attn: Attention,
    cross_norm: Tensor,
    cross_attn: Attention,
    mlp_norm: Tensor,
    mlp: Mlp,
    /// `[1, 6, H]`: shift, scale, gate of the attention, then of the MLP.
    scale_shift: Tensor,
}

#[derive(Debug)]
pub struct Dit {
    cfg: DitConfig,
    time: TimeEmbed,
    time_r: TimeEmbed,
    proj_in: (Tensor, Tensor),
    condition: (Tensor, Tensor),
    blocks: Vec<Block>,
    norm_out: Tensor,
    proj_out: (Tensor, Tensor),
    scale_shift: Tensor,
}

impl Dit {
    /// Loads diffusers' `transformer/` folder.
    pub fn load(dir: &std::path::Path, device: tch::Device, kind: Kind) -> Result<Self> {
        let cfg = DitConfig::parse(&super::folder::config_text(dir)?)?;
        let mut src = super::folder::weights(dir, device, kind)?;
        let model = Self::from_source(&cfg, &mut src)?;
        src.finish()?;
        Ok(model)
    }

    /// Takes the transformer's weights from `src`; the caller finishes it.
    pub fn from_source(cfg: &DitConfig, src: &mut TensorSource) -> Result<Self> {
        let s = &cfg.stack;
        let h = s.hidden;
        let mut blocks = Vec::with_capacity(cfg.layers.len());
        for (i, kind) in cfg.layers.iter().enumerate() {
            let p = format!("layers.{i}");
            blocks.push(Block {
                kind: *kind,
                self_norm: src.take(&format!("{p}.self_attn_norm.weight"), &[h])?,
                self_attn: Attention::load(src, &format!("{p}.self_attn"), s, h)?,
                cross_norm: src.take(&format!("{p}.cross_attn_norm.weight"), &[h])?,
                cross_attn: Attention::load(src, &format!("{p}.cross_attn"), s, h)?,
                mlp_norm: src.take(&format!("{p}.mlp_norm.weight"), &[h])?,
                mlp: Mlp::load(src, &format!("{p}.mlp"), s)?,
                scale_shift: src.take(&format!("{p}.scale_shift_table"), &[1, 6, h])?,
            });
        }
        let c = cfg.latent_channels;
        Ok(Self {
            time: TimeEmbed::load(src, "time_embed", h)?,
            time_r: TimeEmbed::load(src, "time_embed_r", h)?,
            proj_in: (
                src.take("proj_in_conv.weight", &[h, cfg.in_channels, cfg.patch])?,
                src.take("proj_in_conv.bias", &[h])?,
            ),
            condition: (
                src.take("condition_embedder.weight", &[h, cfg.encoder_hidden])?,
                src.take("condition_embedder.bias", &[h])?,
            ),
            blocks,
            norm_out: src.take("norm_out.weight", &[h])?,
            proj_out: (
                src.take("proj_out_conv.weight", &[h, c, cfg.patch])?,
                src.take("proj_out_conv.bias", &[c])?,
            ),
            scale_shift: src.take("scale_shift_table", &[1, 2, h])?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// The weights' kind (timesteps are passed in it).
    pub fn kind(&self) -> Kind {
        self.norm_out.kind()
    }

    /// The condition in the DiT's width (`condition_embedder`): the same for every step of a
    /// job, so a caller may compute it once.
    pub fn embed_condition(&self, encoder_states: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        encoder_states
            .to_kind(self.kind())
            .linear(&self.condition.0, Some(&self.condition.1))
    }

    /// The velocity `[B, T, C]` for latents `x` `[B, T, C]` at flow times `t` `[B]` (1 = noise),
    /// given the embedded condition `cond` `[B, Lc, H]` (from [`Dit::embed_condition`]) and the
    /// context `[B, T, 2C]` (source latents, chunk mask).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let (b, frames, c) = x.size3().map_err(|_| {
            ModelError::Input("ace-step latents must be [batch, frames, channels]".into())
        })?;
        if c != self.cfg.latent_channels
            || context.size() != [b, frames, 2 * c]
            || t.size() != [b]
            || cond.size().len() != 3
            || cond.size()[0] != b
            || cond.size()[2] != self.cfg.stack.hidden
        {
            return Err(ModelError::Input(format!(
                "ace-step dit inputs: latents {:?}, timesteps {:?}, condition {:?}, context {:?} \
                 do not fit {c} latent channels",
                x.size(),
                t.size(),
                cond.size(),
                context.size()
            )));
        }
        let kind = self.kind();
        let t = t.to_kind(kind);
        let (temb_t, proj_t) = self.time.forward(&t);
        // `t - r` with `r = t`: zeros (the reference computes the subtraction; the same values).
        let (temb_r, proj_r) = self.time_r.forward(&t.zeros_like());
        let temb = temb_t + temb_r;
        let proj = proj_t + proj_r;

        // [context | latents], padded to whole patches, patchified: [B, L, H].
        let mut h = Tensor::cat(&[&context.to_kind(kind), &x.to_kind(kind)], -1);
        let patch = self.cfg.patch;
        let rem = frames % patch;
        if rem != 0 {
            h = h.constant_pad_nd([0, 0, 0, patch - rem]);
        }
        let mut h = h
            .transpose(1, 2)
            .conv1d(&self.proj_in.0, Some(&self.proj_in.1), [patch], [0], [1], 1)
            .transpose(1, 2);
        let len = h.size()[1];
        let s = &self.cfg.stack;
        let rotary = Rotary::with_theta(s.head_dim, len, s.rope_theta, h.device());
        // Sliding layers see a band; full layers see everything.
        let window = s.sliding_window;
        let by_blocks = banded(len, window);
        let band = (len > window + 1 && !by_blocks).then(|| band_mask(len, window, h.device()));
        for blk in &self.blocks {
            let ada = (&blk.scale_shift + &proj).chunk(6, 1);
            let (shift, scale, gate) = (&ada[0], &ada[1], &ada[2]);
            let (c_shift, c_scale, c_gate) = (&ada[3], &ada[4], &ada[5]);
            let n = rms_norm(&h, &blk.self_norm, s.eps) * (scale + 1.0) + shift;
            let attended = match blk.kind {
                LayerKind::Sliding if by_blocks => blk.self_attn.forward_band(&n, window, &rotary),
                LayerKind::Sliding => blk
                    .self_attn
                    .forward(&n, None, band.as_ref(), Some(&rotary)),
                LayerKind::Full => blk.self_attn.forward(&n, None, None, Some(&rotary)),
            };
            h = &h + attended * gate;
            let n = rms_norm(&h, &blk.cross_norm, s.eps);
            h = &h + blk.cross_attn.forward(&n, Some(cond), None, None);
            let n = rms_norm(&h, &blk.mlp_norm, s.eps) * (c_scale + 1.0) + c_shift;
            h = &h + blk.mlp.forward(&n) * c_gate;
        }
        let out = (&self.scale_shift + temb.unsqueeze(1)).chunk(2, 1);
        let (shift, scale) = (&out[0], &out[1]);
        let h = rms_norm(&h, &self.norm_out, s.eps) * (scale + 1.0) + shift;
        let v = h
            .transpose(1, 2)
            .conv_transpose1d(
                &self.proj_out.0,
                Some(&self.proj_out.1),
                [patch],
                [0],
                [0],
                1,
                [1],
            )
            .transpose(1, 2);
        Ok(v.narrow(1, 0, frames))
    }
}
