//! ACE-Step's condition encoder (diffusers `AceStepConditionEncoder`): the text states
//! projected, the lyric embeddings through the lyric encoder, the reference latents through the
//! timbre encoder, packed into the one sequence the DiT cross-attends to; and what guidance and a
//! request without reference audio need: the learned null condition and the encoded silence.
//!
//! Keys under the folder's `condition_encoder/diffusion_pytorch_model.safetensors`:
//! `text_projector.weight`, `lyric_encoder.{embed_tokens, layers.N.*, norm}`,
//! `timbre_encoder.{embed_tokens, special_token, layers.N.*, norm}`, `null_condition_emb`,
//! `silence_latent`.

use tch::{Kind, Tensor};

use super::config::{ConditionConfig, LayerKind};
use super::layers::{EncoderLayer, StackMasks};
use crate::nn::norm::rms_norm;
use crate::nn::rope::Rotary;
use crate::weights::source::TensorSource;
use crate::{ModelError, Result};

/// A Linear-in, pre-norm layers, final-norm encoder (the lyric and the timbre encoders).
#[derive(Debug)]
struct Stack {
    embed_w: Tensor,
    embed_b: Tensor,
    layers: Vec<(LayerKind, EncoderLayer)>,
    norm: Tensor,
}

impl Stack {
    fn load(
        src: &mut TensorSource,
        prefix: &str,
        cfg: &ConditionConfig,
        in_dim: i64,
        kinds: &[LayerKind],
    ) -> Result<Self> {
        let s = &cfg.stack;
        let embed_w = src.take(
            &format!("{prefix}.embed_tokens.weight"),
            &[s.hidden, in_dim],
        )?;
        let embed_b = src.take(&format!("{prefix}.embed_tokens.bias"), &[s.hidden])?;
        let layers = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Ok((
                    *k,
                    EncoderLayer::load(src, &format!("{prefix}.layers.{i}"), s)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = src.take(&format!("{prefix}.norm.weight"), &[s.hidden])?;
        Ok(Self {
            embed_w,
            embed_b,
            layers,
            norm,
        })
    }

    /// `x` `[B, L, in]`, `keys` bool `[B, L]` (padding) -> `[B, L, hidden]`.
    fn forward(&self, x: &Tensor, keys: Option<&Tensor>, cfg: &ConditionConfig) -> Tensor {
        let s = &cfg.stack;
        let len = x.size()[1];
        let mut h = x.linear(&self.embed_w, Some(&self.embed_b));
        let rotary = Rotary::with_theta(s.head_dim, len, s.rope_theta, h.device());
        let masks = StackMasks::new(len, s.sliding_window, keys, h.device());
        for (kind, layer) in &self.layers {
            h = layer.forward(&h, masks.of(*kind), &rotary);
        }
        rms_norm(&h, &self.norm, s.eps)
    }
}

/// What the encoder turns into the DiT's cross-attention sequence.
#[derive(Debug)]
pub struct ConditionInputs<'a> {
    /// The text encoder's last hidden states `[B, Lt, text_hidden]` and their mask `[B, Lt]`.
    pub text: &'a Tensor,
    pub text_mask: &'a Tensor,
    /// The lyric tokens' embedding rows `[B, Ll, text_hidden]` and their mask `[B, Ll]`.
    pub lyrics: &'a Tensor,
    pub lyric_mask: &'a Tensor,
    /// One reference per item: latents `[B, frames, timbre_hidden]` (the encoded silence when a
    /// request brings no reference audio).
    pub reference: &'a Tensor,
}

#[derive(Debug)]
pub struct ConditionEncoder {
    cfg: ConditionConfig,
    text_projector: Tensor,
    lyric: Stack,
    timbre: Stack,
    null: Tensor,
    silence: Tensor,
}

impl ConditionEncoder {
    /// Loads diffusers' `condition_encoder/` folder.
    pub fn load(dir: &std::path::Path, device: tch::Device, kind: Kind) -> Result<Self> {
        let cfg = ConditionConfig::parse(&super::folder::config_text(dir)?)?;
        let mut src = super::folder::weights(dir, device, kind)?;
        let model = Self::from_source(&cfg, &mut src)?;
        src.finish()?;
        Ok(model)
    }

    /// Takes the encoder's weights from `src`; the caller finishes it.
    pub fn from_source(cfg: &ConditionConfig, src: &mut TensorSource) -> Result<Self> {
        let h = cfg.stack.hidden;
        let text_projector = src.take("text_projector.weight", &[h, cfg.text_hidden])?;
        let lyric = Stack::load(
            src,
            "lyric_encoder",
            cfg,
            cfg.text_hidden,
            &cfg.lyric_layers,
        )?;
        let timbre = Stack::load(
            src,
            "timbre_encoder",
            cfg,
            cfg.timbre_hidden,
            &cfg.timbre_layers,
        )?;
        // Defined by the checkpoint but never read, here or upstream.
        drop(src.take("timbre_encoder.special_token", &[1, 1, h])?);
        let null = src.take("null_condition_emb", &[1, 1, h])?;
        let silence = src.take_any("silence_latent")?;
        let ss = silence.size();
        if ss.len() != 3 || ss[0] != 1 || ss[2] != cfg.timbre_hidden || ss[1] < 1 {
            return Err(ModelError::Weights {
                key: "silence_latent".into(),
                message: format!("expected [1, frames, {}], found {ss:?}", cfg.timbre_hidden),
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            text_projector,
            lyric,
            timbre,
            null,
            silence,
        })
    }

    pub fn config(&self) -> &ConditionConfig {
        &self.cfg
    }

    /// The learned null condition `[1, 1, hidden]`, broadcast over a sequence for guidance.
    pub fn null_condition(&self) -> &Tensor {
        &self.null
    }

    /// The first `frames` frames of the encoded silence `[1, frames, timbre_hidden]`, repeated
    /// when more are asked than the checkpoint holds (as diffusers does).
    pub fn silence(&self, frames: i64) -> Tensor {
        let have = self.silence.size()[1];
        let s = if frames > have {
            self.silence.repeat([1, (frames + have - 1) / have, 1])
        } else {
            self.silence.shallow_clone()
        };
        s.narrow(1, 0, frames)
    }

    /// The packed condition `[B, Ll + 1 + Lt, hidden]` and its mask: valid lyric tokens, the
    /// timbre token, valid text tokens, then the padded lyric and text positions (diffusers'
    /// `_pack_sequences` twice). The DiT attends to all of it, padding too, as the reference does.
    pub fn forward(&self, x: &ConditionInputs<'_>) -> Result<(Tensor, Tensor)> {
        let _guard = tch::no_grad_guard();
        let b = x.text.size()[0];
        for (what, t, mask) in [
            ("text", x.text, Some(x.text_mask)),
            ("lyrics", x.lyrics, Some(x.lyric_mask)),
            ("reference", x.reference, None),
        ] {
            let s = t.size();
            let want = if what == "reference" {
                self.cfg.timbre_hidden
            } else {
                self.cfg.text_hidden
            };
            if s.len() != 3 || s[0] != b || s[2] != want || s[1] < 1 {
                return Err(ModelError::Input(format!(
                    "ace-step condition {what}: expected [{b}, len, {want}], found {s:?}"
                )));
            }
            if let Some(m) = mask {
                if m.size() != [b, s[1]] {
                    return Err(ModelError::Input(format!(
                        "ace-step condition {what} mask: expected [{b}, {}], found {:?}",
                        s[1],
                        m.size()
                    )));
                }
            }
        }
        let dev = self.null.device();
        let kind = self.null.kind();
        let text_mask = x.text_mask.to_device(dev).to_kind(Kind::Bool);
        let lyric_mask = x.lyric_mask.to_device(dev).to_kind(Kind::Bool);
        let text = x
            .text
            .to_device(dev)
            .to_kind(kind)
            .linear::<Tensor>(&self.text_projector, None);
        // A mask that keeps every key masks nothing: without it, long lyrics run by blocks.
        let padded = lyric_mask.logical_not().any().int64_value(&[]) != 0;
        let lyrics = self.lyric.forward(
            &x.lyrics.to_device(dev).to_kind(kind),
            padded.then_some(&lyric_mask),
            &self.cfg,
        );
        // The timbre embedding is the encoded reference's first frame.
        let timbre = self
            .timbre
            .forward(&x.reference.to_device(dev).to_kind(kind), None, &self.cfg)
            .narrow(1, 0, 1);
        let timbre_mask = Tensor::ones([b, 1], (Kind::Bool, dev));
        let (h, m) = pack(&lyrics, &timbre, &lyric_mask, &timbre_mask);
        Ok(pack(&h, &text, &m, &text_mask))
    }
}

/// Concatenates two masked sequences and moves each row's valid positions first, in order
/// (a stable sort on the mask); the new mask is the first `valid` positions.
fn pack(a: &Tensor, b: &Tensor, mask_a: &Tensor, mask_b: &Tensor) -> (Tensor, Tensor) {
    let h = Tensor::cat(&[a, b], 1);
    let m = Tensor::cat(&[mask_a, mask_b], 1).to_kind(Kind::Int64);
    let (n, len, d) = h.size3().expect("packed sequence is [B, L, D]");
    let order = m.argsort_stable(true, 1, true);
    let packed = h.gather(1, &order.unsqueeze(-1).expand([n, len, d], false), false);
    let valid = m.sum_dim_intlist(1, false, Kind::Int64).unsqueeze(1);
    let mask = Tensor::arange(len, (Kind::Int64, h.device()))
        .unsqueeze(0)
        .lt_tensor(&valid);
    (packed, mask)
}
