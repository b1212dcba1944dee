//! Tiny random packs: the full architecture at toy size, for the farm's tests and benchmarks.
//!
//! A tiny BERT (hidden 32, 2 layers) with the real MiniLM vocabulary and tokenizer, a 2-layer DiT
//! (4 heads of 8, grouped-query cross-attention), all four numeric conditioners, the identity
//! decoder (the latent is the log-mel) and a Griffin-Lim vocoder with few iterations. Two seconds
//! with 8 steps take a fraction of a second on one CPU core. Weights come from SplitMix64 noise
//! keyed by (seed, tensor name), so a pack depends only on its seed.

use std::path::Path;

use tch::{nn, Device, Tensor};

use crate::decoders::mel::MelConfig;
use crate::decoders::mel_decoder::{self, DecoderConfig};
use crate::decoders::vocoder::{self, GriffinLimConfig, VocoderConfig};
use crate::families::mel::conditioners::{ConditionerConfig, Conditioners};
use crate::families::mel::pack::{self, Defaults, Limits, ModelInfo, PackConfig};
use crate::nn::dit::{DitConfig, StableAudioDit};
use crate::samplers::{SamplerKind, ScheduleConfig};
use crate::state::seeded_noise;
use crate::text::bert::{Bert, TextEncoderConfig};
use crate::{weights, ModelError, Result};

/// The MiniLM (BERT uncased WordPiece) tokenizer.
pub const TOKENIZER_JSON: &[u8] = include_bytes!("../../../../assets/tokenizer.json");

/// The configuration of the tiny pack.
pub fn tiny_config() -> PackConfig {
    let mel = MelConfig {
        sample_rate: 16000,
        n_fft: 512,
        hop_length: 256,
        win_length: 512,
        n_mels: 32,
        ..Default::default()
    };
    let text = TextEncoderConfig::tiny();
    let conditioners = ConditionerConfig::builtin(8, 8, 30.0);
    let global = text.hidden_size + conditioners.output_dim();
    let latent_channels = mel.n_mels as i64;
    PackConfig {
        text_encoder: "text_encoder".into(),
        model: ModelInfo {
            name: "tiny".into(),
            version: "1".into(),
            description: "tiny random pack for tests (makes noise, not music)".into(),
            sample_rate: mel.sample_rate,
            max_duration_s: 30.0,
            latent_channels,
            latent_frames_per_second: mel.sample_rate as f64 / mel.hop_length as f64,
            latent_scale: 1.0,
            latent_shift: 0.0,
        },
        denoiser: DitConfig::tiny(latent_channels, text.hidden_size, global),
        conditioners,
        frame_conditioning: None,
        schedule: ScheduleConfig::default(),
        decoder: DecoderConfig::Identity {
            scale: 1.0,
            shift: -4.0,
        },
        vocoder: VocoderConfig::GriffinLim(GriffinLimConfig {
            iters: 4,
            ..Default::default()
        }),
        defaults: Defaults {
            sampler: SamplerKind::FlowEuler,
            steps: 8,
            guidance_scale: 3.0,
            chunk_steps: 4,
            guided_controls: Vec::new(),
            mode_tonics: Default::default(),
            varispeed_semitones: 0,
        },
        limits: Limits {
            max_steps: 200,
            max_duration_s: 30.0,
        },
        mel,
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Overwrites every variable of `vs` with deterministic values suited to its role.
fn randomize(vs: &nn::VarStore, seed: u64) {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let size = var.size();
        let noise = seeded_noise(seed ^ fnv1a(&name), &size);
        let leaf = name.rsplit('.').next().unwrap_or("");
        let value: Tensor =
            if name.contains("LayerNorm.weight") || (name.contains("norm") && leaf == "weight") {
                noise * 0.02 + 1.0
            } else if leaf == "bias" || leaf == "unknown" {
                noise * 0.02
            } else if name.contains("embeddings") {
                noise * 0.05
            } else if leaf == "fourier" || name == "time_proj.weight" || leaf == "table" {
                noise
            } else {
                let fan_in: i64 = size.iter().skip(1).product::<i64>().max(1);
                noise / (fan_in as f64).sqrt()
            };
        var.copy_(&value.to_kind(var.kind()));
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Pack {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes a complete tiny pack into `dir` (created if needed).
pub fn write_tiny_pack(dir: &Path, seed: u64) -> Result<()> {
    write_pack_with(dir, seed, &tiny_config(), &TextEncoderConfig::tiny())
}

/// Writes a random pack of any configuration (`text` must match `cfg`'s text width).
pub fn write_pack_with(
    dir: &Path,
    seed: u64,
    cfg: &PackConfig,
    text: &TextEncoderConfig,
) -> Result<()> {
    cfg.validate()
        .map_err(|m| err(&dir.join(pack::CONFIG_FILE), m))?;
    let te_dir = dir.join(&cfg.text_encoder);
    std::fs::create_dir_all(&te_dir).map_err(|e| err(&te_dir, e))?;
    std::fs::write(dir.join(pack::CONFIG_FILE), cfg.to_toml()?)?;

    let json = serde_json::to_string_pretty(text).map_err(|e| err(&te_dir, e))?;
    std::fs::write(te_dir.join("config.json"), json)?;
    std::fs::write(te_dir.join("tokenizer.json"), TOKENIZER_JSON)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _bert = Bert::new(vs.root(), text);
    randomize(&vs, seed ^ 0x7465_7874);
    weights::save_var_store(&vs, &te_dir.join("model.safetensors"))?;

    let vs = nn::VarStore::new(Device::Cpu);
    let _dit = StableAudioDit::new(vs.root(), &cfg.denoiser);
    randomize(&vs, seed ^ 0x0064_6974);
    weights::save_var_store(&vs, &dir.join(pack::DENOISER_FILE))?;

    let vs = nn::VarStore::new(Device::Cpu);
    let _cond = Conditioners::new(vs.root(), &cfg.conditioners);
    let _frames = cfg
        .frame_conditioning
        .as_ref()
        .map(|f| crate::families::mel::frame_cond::FrameConditioner::new(vs.root() / "frames", f));
    randomize(&vs, seed ^ 0x636f_6e64);
    weights::save_var_store(&vs, &dir.join(pack::CONDITIONERS_FILE))?;

    let vs = nn::VarStore::new(Device::Cpu);
    let _dec = mel_decoder::build(&cfg.decoder, vs.root(), &cfg.mel)?;
    if !vs.variables().is_empty() {
        randomize(&vs, seed ^ 0x0064_6563);
        weights::save_var_store(&vs, &dir.join(pack::DECODER_FILE))?;
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _voc = vocoder::build(&cfg.vocoder, &cfg.mel, vs.root())?;
    if !vs.variables().is_empty() {
        randomize(&vs, seed ^ 0x0076_6f63);
        weights::save_var_store(&vs, &dir.join(pack::VOCODER_FILE))?;
    }
    Ok(())
}
