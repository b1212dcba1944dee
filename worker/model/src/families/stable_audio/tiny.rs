//! Tiny random Stable Audio folders that make real-rate audio (44.1 kHz stereo), for the tests of
//! the farm path and of `tutti generate`: the committed parity fixtures (`sao-tiny`, diffusers
//! layout; `sao-small-tiny`, stable-audio-tools layout) keep their T5, tokenizer, conditioners
//! and DiT, and get a VAE with the real models' strides (hop 2048) and deterministic random
//! weights, so that a window of a few dozen latent frames holds over a second of audio. The
//! folders are what the importer reads, so a test imports them as a user would.

use std::path::Path;

use serde_json::{json, Value};
use tch::Tensor;

use crate::decoders::oobleck::OobleckConfig;
use crate::families::stable_audio::layout;
use crate::families::stable_audio::sat;
use crate::state::seeded_noise;
use crate::{weights, ModelError, Result};

/// The real models' strides (hop 2048) and rate, with a handful of channels.
pub fn tiny_vae(latent_channels: i64) -> OobleckConfig {
    OobleckConfig {
        encoder_hidden_size: 2 * latent_channels,
        downsampling_ratios: vec![2, 4, 4, 8, 8],
        channel_multiples: vec![1, 2, 2, 2, 2],
        decoder_channels: 4,
        decoder_input_channels: latent_channels,
        audio_channels: 2,
        sampling_rate: 44100,
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Pack {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    serde_json::from_str(&text).map_err(|e| io(path, e))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io(path, e))?;
    std::fs::write(path, text).map_err(|e| io(path, e))
}

fn write_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let bytes = weights::to_safetensors_bytes(&tensors, None)?;
    std::fs::write(path, bytes).map_err(|e| io(path, e))
}

fn link(target: &Path, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at).map_err(|e| io(at, e))
}

/// Random weights for every VAE tensor (diffusers' names): weight-norm magnitudes near 1,
/// small biases, Snake's log-scale alpha and beta around 0, so that the audio is finite and not
/// silent. Seeded by the tensor's position, so the folder is the same at every run.
fn vae_weights(cfg: &OobleckConfig) -> Vec<(String, Tensor)> {
    layout::oobleck(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let noise = seeded_noise(0x5A0 + i as u64, &shape);
            let t = if name.ends_with(".weight_g") {
                noise * 0.1 + 1.0
            } else if name.ends_with(".bias") {
                noise * 0.01
            } else if name.ends_with(".alpha") || name.ends_with(".beta") {
                noise * 0.3
            } else {
                noise
            };
            (name, t)
        })
        .collect()
}

/// A diffusers-layout folder at `out` (SAO 1.0's layout) from `fixture` (`sao-tiny`), with
/// `frames` latent frames in the DiT's window.
pub fn diffusers_folder(fixture: &Path, out: &Path, frames: i64) -> Result<()> {
    std::fs::create_dir_all(out.join("transformer")).map_err(|e| io(out, e))?;
    std::fs::create_dir_all(out.join("vae")).map_err(|e| io(out, e))?;
    for entry in [
        "model_index.json",
        "text_encoder",
        "tokenizer",
        "projection_model",
        "scheduler",
    ] {
        link(&fixture.join(entry), &out.join(entry))?;
    }
    link(
        &fixture.join("transformer/diffusion_pytorch_model.safetensors"),
        &out.join("transformer/diffusion_pytorch_model.safetensors"),
    )?;
    // The DiT has no weight that depends on its window: only the config changes.
    let mut dit = read_json(&fixture.join("transformer/config.json"))?;
    dit["sample_size"] = json!(frames);
    write_json(&out.join("transformer/config.json"), &dit)?;
    let latent = dit["in_channels"].as_i64().unwrap_or(4);
    let vae = tiny_vae(latent);
    let mut v = serde_json::to_value(&vae).map_err(|e| io(out, e))?;
    v["_class_name"] = json!("AutoencoderOobleck");
    write_json(&out.join("vae/config.json"), &v)?;
    write_tensors(
        &out.join("vae/diffusion_pytorch_model.safetensors"),
        vae_weights(&vae),
    )
}

/// A stable-audio-tools folder at `out` (SAO Small's layout) from `fixture` (`sao-small-tiny`),
/// with `frames` latent frames in its window; its T5 comes from a separate folder, as Small's.
pub fn sat_folder(fixture: &Path, out: &Path, frames: i64) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut cfg = read_json(&fixture.join("model_config.json"))?;
    let latent = cfg["model"]["io_channels"].as_i64().unwrap_or(4);
    let vae = tiny_vae(latent);
    let hop: i64 = vae.downsampling_ratios.iter().product();
    cfg["sample_rate"] = json!(vae.sampling_rate);
    cfg["sample_size"] = json!(frames * hop);
    let pt = &mut cfg["model"]["pretransform"]["config"];
    for (coder, channels) in [
        ("encoder", vae.encoder_hidden_size),
        ("decoder", vae.decoder_channels),
    ] {
        let c = &mut pt[coder]["config"];
        c["channels"] = json!(channels);
        c["c_mults"] = json!(vae.channel_multiples);
        c["strides"] = json!(vae.downsampling_ratios);
    }
    pt["downsampling_ratio"] = json!(hop);
    write_json(&out.join("model_config.json"), &cfg)?;

    let src = fixture.join("model.safetensors");
    let file = weights::read_safetensors(&src)?;
    let mut tensors: Vec<(String, Tensor)> = file
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("pretransform."))
        .collect();
    let blocks = vae.downsampling_ratios.len();
    for (name, t) in vae_weights(&vae) {
        let key = sat_vae_key(&name, blocks)
            .ok_or_else(|| io(&src, format!("no sat name for {name}")))?;
        // The inverse must map back, or the importer would refuse the folder.
        let back =
            sat::rename(&key, &t.size(), blocks).and_then(|r| r.first().map(|r| r.name.clone()));
        if back.as_deref() != Some(name.as_str()) {
            return Err(io(&src, format!("{key} maps back to {back:?}, not {name}")));
        }
        // stable-audio-tools keeps Snake's parameters as [C].
        let t = if name.ends_with(".alpha") || name.ends_with(".beta") {
            t.flatten(0, -1)
        } else {
            t
        };
        tensors.push((key, t));
    }
    write_tensors(&out.join("model.safetensors"), tensors)
}

/// diffusers' VAE tensor name → stable-audio-tools' (`pretransform.model.*`), the inverse of
/// the importer's renaming.
fn sat_vae_key(name: &str, blocks: usize) -> Option<String> {
    let (part, rest) = name.split_once('.')?;
    let leaf_of = |p: &str| rest.strip_prefix(p).map(str::to_string);
    let inner = if let Some(l) = leaf_of("conv1.") {
        format!("0.{l}")
    } else if let Some(l) = leaf_of("snake1.") {
        format!("{}.{l}", blocks + 1)
    } else if let Some(l) = leaf_of("conv2.") {
        format!("{}.{l}", blocks + 2)
    } else {
        let (b, sub) = rest.strip_prefix("block.")?.split_once('.')?;
        let b: usize = b.parse().ok()?;
        let (j, leaf) = match (part, sub.split_once('.')?) {
            ("decoder", ("snake1", l)) => (0, l.to_string()),
            ("decoder", ("conv_t1", l)) => (1, l.to_string()),
            ("encoder", ("snake1", l)) => (3, l.to_string()),
            ("encoder", ("conv1", l)) => (4, l.to_string()),
            (_, (unit, l)) => {
                let u: usize = unit.strip_prefix("res_unit")?.parse().ok()?;
                let (x, leaf2) = l.split_once('.')?;
                let k = ["snake1", "conv1", "snake2", "conv2"]
                    .iter()
                    .position(|s| *s == x)?;
                let j = if part == "decoder" { u + 1 } else { u - 1 };
                (j, format!("layers.{k}.{leaf2}"))
            }
        };
        format!("{}.layers.{j}.{leaf}", b + 1)
    };
    Some(format!("pretransform.model.{part}.layers.{inner}"))
}

/// A t5-base-style folder (weights, config and tokenizer side by side, as Small's users have
/// t5-base) at `out`, linking `sao-tiny`'s T5 and tokenizer.
pub fn t5_folder(sao_tiny: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    for (dir, f) in [
        ("text_encoder", "config.json"),
        ("text_encoder", "model.safetensors"),
        ("tokenizer", "tokenizer.json"),
        ("tokenizer", "tokenizer_config.json"),
    ] {
        link(&sao_tiny.join(dir).join(f), &out.join(f))?;
    }
    Ok(())
}
