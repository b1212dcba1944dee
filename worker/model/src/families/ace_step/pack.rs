//! An ACE-Step pack: a `model.toml` beside a link (`source`) to the published diffusers folder
//! (`model_index.json`, `transformer/`, `condition_encoder/`, `text_encoder/`, `tokenizer/`,
//! `vae/`). `tutti model import` checks the folder and writes the pack; the farm's registry
//! (`tutti_shared::models`) reads the same `model.toml`, so the coordinator applies the model's
//! rules (steps, duration, guidance, the song fields) before a worker sees a request.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::{ConditionConfig, DitConfig};
use super::folder;
use crate::decoders::oobleck::OobleckConfig;
use crate::samplers::SamplerKind;
use crate::text::qwen3::Qwen3Config;
use crate::text::qwen3_tokenizer::Qwen3Tokenizer;
use crate::weights::source::read_json;
use crate::{ModelError, Result};

/// `family` of an ACE-Step pack's `model.toml`.
pub const FAMILY: &str = "ace_step";
const CONFIG_FILE: &str = "model.toml";
const SOURCE_LINK: &str = "source";
/// The components the pipeline needs (the audio tokenizer and detokenizer, for cover from
/// audio, are optional in the published folders and not used).
const COMPONENTS: [&str; 5] = [
    "transformer",
    "condition_encoder",
    "text_encoder",
    "tokenizer",
    "vae",
];
/// Longest song ACE-Step makes (its encoded silence covers exactly this).
pub const MAX_DURATION_S: f64 = 600.0;
/// Tokens of the caption text and of the lyric text the pipeline reads (more are cut).
pub const MAX_TEXT_TOKENS: usize = 256;
pub const MAX_LYRIC_TOKENS: usize = 2048;

fn pack_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Pack {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackModel {
    pub name: String,
    pub version: String,
    pub sample_rate: u32,
    pub channels: u16,
    #[serde(default)]
    pub description: String,
}

/// `[defaults]`: what a request that names nothing gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    pub sampler: SamplerKind,
    pub steps: usize,
    pub guidance_scale: f64,
    pub chunk_steps: usize,
    pub duration_s: f64,
}

/// `[limits]`: what a request may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_steps: usize,
    pub max_duration_s: f64,
    pub samplers: Vec<SamplerKind>,
}

/// `[ace_step]`: the variant's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AceTable {
    /// Guidance distilled into the weights: no classifier-free guidance.
    pub turbo: bool,
    /// The schedule's shift (`s t / (1 + (s - 1) t)`; the pipeline's default 3).
    pub shift: f64,
}

/// A parsed ACE-Step `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AceStepPack {
    pub family: String,
    pub model: PackModel,
    pub defaults: Defaults,
    pub limits: Limits,
    pub ace_step: AceTable,
}

/// The configs of a folder's components.
#[derive(Debug, Clone)]
pub struct AceStepConfig {
    pub dit: DitConfig,
    pub condition: ConditionConfig,
    pub text: Qwen3Config,
    pub vae: OobleckConfig,
}

impl AceStepConfig {
    /// Reads and cross-checks the component configs under `root`.
    pub fn read(root: &Path) -> Result<Self> {
        let model_index = root.join("model_index.json");
        let index: serde_json::Value = read_json(&model_index, "model index")?;
        let class = index.get("_class_name").and_then(|v| v.as_str());
        if class != Some("AceStepPipeline") {
            return Err(pack_err(
                &model_index,
                format!("_class_name {class:?} is not AceStepPipeline"),
            ));
        }
        for c in COMPONENTS {
            if !root.join(c).is_dir() {
                return Err(pack_err(root, format!("no {c}/ folder")));
            }
        }
        let cfg = Self {
            dit: DitConfig::parse(&folder::config_text(&root.join("transformer"))?)?,
            condition: ConditionConfig::parse(&folder::config_text(
                &root.join("condition_encoder"),
            )?)?,
            text: read_json(
                &root.join("text_encoder/config.json"),
                "text encoder config",
            )?,
            vae: read_json(&root.join("vae/config.json"), "vae config")?,
        };
        let mismatch = |m: String| Err(pack_err(root, m));
        if cfg.dit.encoder_hidden != cfg.condition.stack.hidden {
            return mismatch(format!(
                "the transformer reads a {}-wide condition, the condition encoder makes {}",
                cfg.dit.encoder_hidden, cfg.condition.stack.hidden
            ));
        }
        if cfg.condition.text_hidden != cfg.text.hidden_size {
            return mismatch(format!(
                "the condition encoder reads {}-wide text states, the text encoder makes {}",
                cfg.condition.text_hidden, cfg.text.hidden_size
            ));
        }
        if cfg.vae.decoder_input_channels != cfg.dit.latent_channels
            || cfg.condition.timbre_hidden != cfg.dit.latent_channels
        {
            return mismatch(format!(
                "latent channels differ: transformer {}, vae {}, timbre encoder {}",
                cfg.dit.latent_channels,
                cfg.vae.decoder_input_channels,
                cfg.condition.timbre_hidden
            ));
        }
        Ok(cfg)
    }

    /// Latent frames per second of audio (the real VAE: 48000 / 1920 = 25).
    pub fn latents_per_second(&self) -> f64 {
        self.vae.sampling_rate as f64 / self.vae.hop_length() as f64
    }

    /// Latent frames of `duration_s` seconds (the pipeline rounds up).
    pub fn frames(&self, duration_s: f64) -> i64 {
        (duration_s * self.latents_per_second()).ceil() as i64
    }

    /// Frames of the encoded silence the timbre encoder reads without reference audio (30 s).
    pub fn timbre_frames(&self) -> i64 {
        self.frames(30.0)
    }
}

/// `tutti model import` options.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub name: Option<String>,
    pub version: Option<String>,
}

impl AceStepPack {
    /// `name@version`.
    pub fn model_id(&self) -> String {
        format!("{}@{}", self.model.name, self.model.version)
    }

    /// The pack for a folder of `cfg`: turbo runs the pipeline's 8 steps without guidance (up
    /// to 20, as the XL turbo allows); base and SFT 32 guided steps (the reference UI's
    /// default; the model card says 32-64), up to 200. Both at shift 3.
    pub fn for_config(cfg: &AceStepConfig, opts: &ImportOptions) -> Self {
        let turbo = cfg.dit.is_turbo;
        let xl = cfg.dit.stack.hidden > cfg.dit.encoder_hidden;
        let default_name = match (turbo, xl) {
            (true, false) => "acestep-v15-turbo",
            (true, true) => "acestep-v15-xl-turbo",
            (false, false) => "acestep-v15-base",
            (false, true) => "acestep-v15-xl-base",
        };
        let (steps, guidance_scale, chunk_steps, max_steps) = if turbo {
            (8, 1.0, 2, 20)
        } else {
            (32, 7.0, 8, 200)
        };
        Self {
            family: FAMILY.into(),
            model: PackModel {
                name: opts.name.clone().unwrap_or_else(|| default_name.into()),
                version: opts.version.clone().unwrap_or_else(|| "1.5".into()),
                sample_rate: cfg.vae.sampling_rate as u32,
                channels: cfg.vae.audio_channels as u16,
                description:
                    "ACE-Step 1.5: songs with lyrics and vocals in 50+ languages, up to 10 minutes"
                        .into(),
            },
            defaults: Defaults {
                sampler: SamplerKind::FlowEuler,
                steps,
                guidance_scale,
                chunk_steps,
                duration_s: 60.0,
            },
            limits: Limits {
                max_steps,
                max_duration_s: MAX_DURATION_S,
                samplers: vec![SamplerKind::FlowEuler],
            },
            ace_step: AceTable { turbo, shift: 3.0 },
        }
    }

    /// From the parsed `model.toml` of the pack at `dir`, with the linked folder's configs.
    pub fn from_table(table: &toml::Table, dir: &Path) -> Result<(Self, AceStepConfig)> {
        let path = dir.join(CONFIG_FILE);
        let pack: Self = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e| pack_err(&path, format!("invalid: {e}")))?;
        if pack.family != FAMILY {
            return Err(pack_err(
                &path,
                format!("family {:?} is not {FAMILY}", pack.family),
            ));
        }
        let cfg = AceStepConfig::read(&pack.root(dir))?;
        Ok((pack, cfg))
    }

    /// The linked diffusers folder.
    pub fn root(&self, dir: &Path) -> PathBuf {
        dir.join(SOURCE_LINK)
    }
}

/// Whether `dir` is an ACE-Step diffusers folder (what `tutti model import` asks first).
pub fn is_ace_step_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("model_index.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("_class_name").and_then(|c| c.as_str()) == Some("AceStepPipeline"))
}

/// Checks a published folder (configs, tokenizer, a weights file per network) and writes a pack
/// at `out` that links to it.
pub fn import(dir: &Path, out: &Path, opts: &ImportOptions) -> Result<AceStepPack> {
    let dir = dir
        .canonicalize()
        .map_err(|e| pack_err(dir, format!("cannot resolve: {e}")))?;
    let cfg = AceStepConfig::read(&dir)?;
    Qwen3Tokenizer::load(&dir.join("tokenizer/tokenizer.json"), MAX_TEXT_TOKENS)?;
    for c in ["transformer", "condition_encoder", "text_encoder", "vae"] {
        folder::check_weights(&dir.join(c))?;
    }
    let pack = AceStepPack::for_config(&cfg, opts);
    std::fs::create_dir_all(out).map_err(|e| pack_err(out, format!("cannot create: {e}")))?;
    if out.join(CONFIG_FILE).exists() {
        return Err(pack_err(out, "already holds a model.toml"));
    }
    crate::families::common::link_source(&dir, &out.join(SOURCE_LINK))?;
    let text = toml::to_string(&pack).map_err(|e| pack_err(out, format!("cannot write: {e}")))?;
    std::fs::write(out.join(CONFIG_FILE), text)
        .map_err(|e| pack_err(out, format!("cannot write model.toml: {e}")))?;
    Ok(pack)
}
