//! The stable-audio-tools layout that Stable Audio Open Small ships: `model_config.json` and one
//! `model.safetensors` holding the DiT (`model.model.*`), the number conditioners
//! (`conditioner.conditioners.<id>.*`) and the Oobleck VAE (`pretransform.model.*`). This module
//! reads the config into the runtime's (diffusers-named) configs and renames the checkpoint's keys
//! to diffusers' names, so the same modules load both layouts:
//!
//! - DiT: `to_timestep_embed`→`timestep_proj`, `to_cond_embed`→`cross_attention_proj`,
//!   `to_global_embed`→`global_proj`, `transformer.project_{in,out}`→`proj_{in,out}`,
//!   `transformer.layers.N`→`transformer_blocks.N` with `pre_norm`/`cross_attend_norm`/`ff_norm`
//!   →`norm1/2/3` (`gamma`/`beta`→`weight`/`bias`), `self_attn`→`attn1` (`to_qkv` split in three),
//!   `cross_attn`→`attn2` (`to_kv` split in two), `to_out`→`to_out.0`, `ff.ff`→`ff.net`;
//!   `timestep_features.weight [n, 1]`→`time_proj.weight [n]`; the rotary `inv_freq` buffer dropped.
//! - `seconds_total`'s `embedder.embedding.*`→`end_number_conditioner.time_positional_embedding.*`.
//! - VAE `layers.K` (a `Sequential`) → `conv1`, `block.K-1.*`, `snake1`, `conv2`; Snake `[C]`→`[1, C, 1]`.
//!
//! The T5 is not in the checkpoint (stable-audio-tools loads it from `t5_model_name`); the caller
//! names a t5-base folder.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use tch::Tensor;

use crate::decoders::oobleck::OobleckConfig;
use crate::families::stable_audio::projection::ProjectionConfig;
use crate::nn::dit::DitConfig;
use crate::weights::source::read_json;
use crate::{ModelError, Result};

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: String,
    sample_size: i64,
    sample_rate: i64,
    model: RawModel,
}

#[derive(Debug, Deserialize)]
struct RawModel {
    pretransform: RawPretransform,
    conditioning: RawConditioning,
    diffusion: RawDiffusion,
}

#[derive(Debug, Deserialize)]
struct RawPretransform {
    config: RawAutoencoder,
}

#[derive(Debug, Deserialize)]
struct RawAutoencoder {
    encoder: RawCoder,
    decoder: RawCoder,
    latent_dim: i64,
}

#[derive(Debug, Deserialize)]
struct RawCoder {
    #[serde(rename = "type")]
    kind: String,
    config: RawOobleck,
}

#[derive(Debug, Deserialize)]
struct RawOobleck {
    channels: i64,
    c_mults: Vec<i64>,
    strides: Vec<i64>,
    latent_dim: i64,
    #[serde(default)]
    in_channels: Option<i64>,
    #[serde(default)]
    out_channels: Option<i64>,
    #[serde(default = "yes")]
    use_snake: bool,
    #[serde(default)]
    final_tanh: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct RawConditioning {
    configs: Vec<RawConditioner>,
    cond_dim: i64,
}

#[derive(Debug, Deserialize)]
struct RawConditioner {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    config: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct RawDiffusion {
    #[serde(rename = "type")]
    kind: String,
    diffusion_objective: String,
    #[serde(default)]
    cross_attention_cond_ids: Vec<String>,
    #[serde(default)]
    global_cond_ids: Vec<String>,
    config: RawDit,
}

#[derive(Debug, Deserialize)]
struct RawDit {
    io_channels: i64,
    embed_dim: i64,
    depth: i64,
    num_heads: i64,
    cond_token_dim: i64,
    global_cond_dim: i64,
    #[serde(default = "yes")]
    project_cond_tokens: bool,
    #[serde(default = "yes")]
    project_global_cond: bool,
    #[serde(default)]
    patch_size: Option<i64>,
    #[serde(default)]
    attn_kwargs: Option<serde_json::Value>,
}

/// What a stable-audio-tools `model_config.json` of the SAO Small kind says, in the runtime's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct SatConfig {
    pub dit: DitConfig,
    pub vae: OobleckConfig,
    pub projection: ProjectionConfig,
    /// The T5 tokenizer's fixed length (the prompt conditioner's `max_length`).
    pub text_max_length: usize,
    /// Audio samples of the model's window (`sample_size`).
    pub sample_size: i64,
}

fn bad(path: &Path, message: String) -> ModelError {
    ModelError::Pack {
        path: path.display().to_string(),
        message,
    }
}

impl SatConfig {
    /// Reads `model_config.json`; what tutti cannot run (another model type, objective, DiT
    /// option or conditioner) is an error naming the field.
    pub fn load(path: &Path) -> Result<Self> {
        let raw: RawConfig = read_json(path, "stable-audio-tools model config")?;
        let e = |m: String| bad(path, m);
        if raw.model_type != "diffusion_cond" {
            return Err(e(format!(
                "model_type {:?} is not supported (diffusion_cond only)",
                raw.model_type
            )));
        }
        let d = &raw.model.diffusion;
        if d.kind != "dit" {
            return Err(e(format!("model.diffusion.type {:?} is not dit", d.kind)));
        }
        if !matches!(
            d.diffusion_objective.as_str(),
            "rf_denoiser" | "rectified_flow"
        ) {
            return Err(e(format!(
                "model.diffusion.diffusion_objective {:?} is not supported (rf_denoiser, rectified_flow)",
                d.diffusion_objective
            )));
        }
        let c = &d.config;
        if c.patch_size.unwrap_or(1) != 1 || !c.project_global_cond {
            return Err(e(
                "model.diffusion.config: patch_size must be 1 and project_global_cond true".into(),
            ));
        }
        if let Some(a) = &c.attn_kwargs {
            if a.get("qk_norm")
                .and_then(|v| v.as_str())
                .is_some_and(|v| v != "none")
            {
                return Err(e(
                    "model.diffusion.config.attn_kwargs.qk_norm is not supported yet".into(),
                ));
            }
        }
        if c.num_heads <= 0 || c.embed_dim % c.num_heads != 0 {
            return Err(e(
                "model.diffusion.config: embed_dim must be a multiple of num_heads".into(),
            ));
        }
        // Conditioning: a T5 prompt and seconds_total, cross-attended in that order, and
        // seconds_total as the global condition (SAO Small).
        let want = ["prompt", "seconds_total"];
        if d.cross_attention_cond_ids != want || d.global_cond_ids != ["seconds_total"] {
            return Err(e(format!(
                "conditioning ids: cross {:?} and global {:?} are not supported (cross [prompt, seconds_total], global [seconds_total])",
                d.cross_attention_cond_ids, d.global_cond_ids
            )));
        }
        let cond = |id: &str| raw.model.conditioning.configs.iter().find(|c| c.id == id);
        let prompt = cond("prompt")
            .filter(|c| c.kind == "t5")
            .ok_or_else(|| e("model.conditioning: no t5 conditioner with id prompt".into()))?;
        let total = cond("seconds_total")
            .filter(|c| c.kind == "number")
            .ok_or_else(|| e("model.conditioning: no number conditioner seconds_total".into()))?;
        let text_max_length = prompt
            .config
            .get("max_length")
            .and_then(|v| v.as_u64())
            .unwrap_or(128) as usize;
        let num = |k: &str, default: f64| {
            total
                .config
                .get(k)
                .and_then(|v| v.as_f64())
                .unwrap_or(default)
        };
        let cond_dim = raw.model.conditioning.cond_dim;
        let head = c.embed_dim / c.num_heads;
        let dit = DitConfig {
            sample_size: raw.sample_size / raw.model.pretransform.config.downsampling(),
            in_channels: c.io_channels,
            num_layers: c.depth,
            attention_head_dim: head,
            num_attention_heads: c.num_heads,
            num_key_value_attention_heads: c.num_heads,
            out_channels: c.io_channels,
            cross_attention_dim: if c.project_cond_tokens {
                c.embed_dim
            } else {
                c.cond_token_dim
            },
            time_proj_dim: 256,
            global_states_input_dim: c.global_cond_dim,
            cross_attention_input_dim: c.cond_token_dim,
        };
        dit.validate().map_err(e)?;
        let ae = &raw.model.pretransform.config;
        let (enc, dec) = (&ae.encoder.config, &ae.decoder.config);
        if ae.encoder.kind != "oobleck" || ae.decoder.kind != "oobleck" {
            return Err(e(
                "model.pretransform: oobleck encoder and decoder only".into()
            ));
        }
        if !enc.use_snake || !dec.use_snake || dec.final_tanh {
            return Err(e(
                "model.pretransform: snake activations and no final tanh only".into(),
            ));
        }
        if enc.strides != dec.strides || enc.c_mults != dec.c_mults {
            return Err(e(
                "model.pretransform: encoder and decoder strides and c_mults must match".into(),
            ));
        }
        let vae = OobleckConfig {
            encoder_hidden_size: enc.channels,
            downsampling_ratios: enc.strides.clone(),
            channel_multiples: enc.c_mults.clone(),
            decoder_channels: dec.channels,
            decoder_input_channels: dec.latent_dim,
            audio_channels: dec.out_channels.or(enc.in_channels).unwrap_or(2),
            sampling_rate: raw.sample_rate,
        };
        if enc.latent_dim != 2 * dec.latent_dim || ae.latent_dim != dec.latent_dim {
            return Err(e("model.pretransform: a vae bottleneck (encoder latent_dim = 2 x decoder latent_dim)".into()));
        }
        if enc.channels != vae.encoder_hidden_size
            || enc.latent_dim != 2 * vae.decoder_input_channels
        {
            return Err(e("model.pretransform: encoder channels must equal 2 x latent_dim (diffusers' layout)".into()));
        }
        Ok(Self {
            dit,
            vae,
            projection: ProjectionConfig {
                text_encoder_dim: cond_dim,
                conditioning_dim: cond_dim,
                min_value: num("min_val", 0.0),
                max_value: num("max_val", 1.0),
            },
            text_max_length,
            sample_size: raw.sample_size,
        })
    }
}

impl RawAutoencoder {
    fn downsampling(&self) -> i64 {
        self.encoder.config.strides.iter().product::<i64>().max(1)
    }
}

/// Which runtime component a checkpoint tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Dit,
    Projection,
    Vae,
}

/// One tensor of the runtime made from a checkpoint tensor: `rows` of dim 0 (a fused
/// projection's part), reshaped to `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Renamed {
    pub component: Component,
    pub name: String,
    pub rows: Option<(i64, i64)>,
    pub shape: Vec<i64>,
}

/// What the checkpoint tensor `key` of shape `shape` becomes under diffusers' names: nothing for
/// the rotary buffer, several tensors for fused projections, `None` for a key tutti does not map.
pub fn rename(key: &str, shape: &[i64], vae_blocks: usize) -> Option<Vec<Renamed>> {
    let one = |component, name: String, shape: Vec<i64>| {
        Some(vec![Renamed {
            component,
            name,
            rows: None,
            shape,
        }])
    };
    if let Some(k) = key.strip_prefix("model.model.") {
        return dit_key(k, shape);
    }
    if let Some(k) = key.strip_prefix("conditioner.conditioners.seconds_total.embedder.embedding.")
    {
        return one(
            Component::Projection,
            format!("end_number_conditioner.time_positional_embedding.{k}"),
            shape.to_vec(),
        );
    }
    let k = key.strip_prefix("pretransform.model.")?;
    let name = vae_key(k, vae_blocks)?;
    let shape = if name.ends_with(".alpha") || name.ends_with(".beta") {
        vec![1, shape.iter().product(), 1]
    } else {
        shape.to_vec()
    };
    one(Component::Vae, name, shape)
}

/// The checkpoint's tensors under diffusers' names, per component.
#[derive(Debug, Default)]
pub struct SatTensors {
    /// `StableAudioDiTModel` keys.
    pub dit: BTreeMap<String, Tensor>,
    /// `StableAudioProjectionModel` keys (the end conditioner only).
    pub projection: BTreeMap<String, Tensor>,
    /// `AutoencoderOobleck` keys.
    pub vae: BTreeMap<String, Tensor>,
}

fn unknown(key: &str, source: &str) -> ModelError {
    ModelError::Weights {
        key: key.to_string(),
        message: format!(
            "unexpected in {source} (not a DiT, seconds_total or VAE weight tutti maps)"
        ),
    }
}

/// Renames a stable-audio-tools checkpoint (`source` names it in errors); a key of no known
/// component is an error.
pub fn split_checkpoint(
    tensors: BTreeMap<String, Tensor>,
    vae_blocks: usize,
    source: &str,
) -> Result<SatTensors> {
    let mut out = SatTensors::default();
    for (key, t) in tensors {
        let parts = rename(&key, &t.size(), vae_blocks).ok_or_else(|| unknown(&key, source))?;
        for r in parts {
            let part = match r.rows {
                Some((start, len)) => t.narrow(0, start, len),
                None => t.shallow_clone(),
            };
            let part = part.reshape(r.shape.as_slice()).contiguous();
            let map = match r.component {
                Component::Dit => &mut out.dit,
                Component::Projection => &mut out.projection,
                Component::Vae => &mut out.vae,
            };
            map.insert(r.name, part);
        }
    }
    Ok(out)
}

/// The names and shapes per component of a checkpoint header (see [`rename`]).
pub fn split_shapes(
    shapes: &BTreeMap<String, Vec<i64>>,
    vae_blocks: usize,
    source: &str,
) -> Result<[BTreeMap<String, Vec<i64>>; 3]> {
    let mut out: [BTreeMap<String, Vec<i64>>; 3] = Default::default();
    for (key, shape) in shapes {
        for r in rename(key, shape, vae_blocks).ok_or_else(|| unknown(key, source))? {
            out[r.component as usize].insert(r.name, r.shape);
        }
    }
    Ok(out)
}

fn dit_key(k: &str, shape: &[i64]) -> Option<Vec<Renamed>> {
    let r = |name: String, rows, shape: Vec<i64>| Renamed {
        component: Component::Dit,
        name,
        rows,
        shape,
    };
    if k == "transformer.rotary_pos_emb.inv_freq" {
        return Some(vec![]);
    }
    if k == "timestep_features.weight" {
        return Some(vec![r("time_proj.weight".into(), None, vec![shape[0]])]);
    }
    let mut k = k.to_string();
    for (from, to) in [
        ("to_timestep_embed", "timestep_proj"),
        ("to_cond_embed", "cross_attention_proj"),
        ("to_global_embed", "global_proj"),
        ("transformer.project_in", "proj_in"),
        ("transformer.project_out", "proj_out"),
        ("transformer.layers", "transformer_blocks"),
        ("pre_norm", "norm1"),
        ("cross_attend_norm", "norm2"),
        ("ff_norm", "norm3"),
        (".gamma", ".weight"),
        (".beta", ".bias"),
        ("self_attn", "attn1"),
        ("cross_attn", "attn2"),
        ("ff.ff.", "ff.net."),
        ("to_out.weight", "to_out.0.weight"),
    ] {
        k = k.replace(from, to);
    }
    let split = |names: &[&str], fused: &str| {
        let n = names.len() as i64;
        let rows = shape[0] / n;
        let mut part = shape.to_vec();
        part[0] = rows;
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                r(
                    k.replace(fused, name),
                    Some((i as i64 * rows, rows)),
                    part.clone(),
                )
            })
            .collect()
    };
    Some(if k.ends_with("to_qkv.weight") && shape[0] % 3 == 0 {
        split(&["to_q", "to_k", "to_v"], "to_qkv")
    } else if k.ends_with("to_kv.weight") && shape[0] % 2 == 0 {
        split(&["to_k", "to_v"], "to_kv")
    } else {
        vec![r(k, None, shape.to_vec())]
    })
}

/// `encoder.layers.K...` / `decoder.layers.K...` to diffusers' names; None for an unknown layout.
fn vae_key(k: &str, blocks: usize) -> Option<String> {
    let (part, rest) = k.split_once(".layers.")?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let (idx, leaf) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let name = match idx {
        0 => format!("conv1.{leaf}"),
        i if i == blocks + 1 => format!("snake1.{leaf}"),
        i if i == blocks + 2 => format!("conv2.{leaf}"),
        i if i <= blocks => {
            let (j, inner) = leaf.strip_prefix("layers.")?.split_once('.')?;
            let j: usize = j.parse().ok()?;
            let sub = match (part, j) {
                ("decoder", 0) | ("encoder", 3) => format!("snake1.{inner}"),
                ("decoder", 1) => format!("conv_t1.{inner}"),
                ("encoder", 4) => format!("conv1.{inner}"),
                ("decoder", 2..=4) | ("encoder", 0..=2) => {
                    let unit = if part == "decoder" { j - 1 } else { j + 1 };
                    let (u, leaf2) = inner.strip_prefix("layers.")?.split_once('.')?;
                    let sub = match u {
                        "0" => "snake1",
                        "1" => "conv1",
                        "2" => "snake2",
                        "3" => "conv2",
                        _ => return None,
                    };
                    format!("res_unit{unit}.{sub}.{leaf2}")
                }
                _ => return None,
            };
            format!("block.{}.{sub}", i - 1)
        }
        _ => return None,
    };
    Some(format!("{part}.{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_keys_map_to_diffusers_names() {
        let m = |k: &str| vae_key(k, 2);
        assert_eq!(
            m("decoder.layers.0.weight_v").as_deref(),
            Some("decoder.conv1.weight_v")
        );
        assert_eq!(
            m("decoder.layers.1.layers.1.bias").as_deref(),
            Some("decoder.block.0.conv_t1.bias")
        );
        assert_eq!(
            m("decoder.layers.2.layers.4.layers.3.weight_g").as_deref(),
            Some("decoder.block.1.res_unit3.conv2.weight_g")
        );
        assert_eq!(
            m("encoder.layers.1.layers.0.layers.0.alpha").as_deref(),
            Some("encoder.block.0.res_unit1.snake1.alpha")
        );
        assert_eq!(
            m("encoder.layers.2.layers.4.weight_v").as_deref(),
            Some("encoder.block.1.conv1.weight_v")
        );
        assert_eq!(
            m("decoder.layers.3.beta").as_deref(),
            Some("decoder.snake1.beta")
        );
        assert_eq!(
            m("decoder.layers.4.weight_v").as_deref(),
            Some("decoder.conv2.weight_v")
        );
        assert_eq!(m("decoder.layers.5.weight_v"), None);
        assert_eq!(m("bottleneck.layers.0.x"), None);
        let r = rename("pretransform.model.decoder.layers.3.alpha", &[3], 2).unwrap();
        assert_eq!(
            (r[0].component, r[0].shape.clone()),
            (Component::Vae, vec![1, 3, 1])
        );
        let r = rename(
            "model.model.transformer.layers.0.self_attn.to_qkv.weight",
            &[6, 2],
            2,
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[2].rows, r[2].shape.clone()), (Some((4, 2)), vec![2, 2]));
        assert!(
            rename("model.model.transformer.rotary_pos_emb.inv_freq", &[4], 2)
                .unwrap()
                .is_empty()
        );
    }
}
