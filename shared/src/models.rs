//! What the coordinator needs to know of a model pack: its family, name, version, audio layout,
//! defaults and limits, read from the top level and the `[model]`, `[defaults]` and `[limits]`
//! tables of its `model.toml` (the header every family shares). The file is parsed once: the
//! parsed document stays in [`ModelInfo::toml`], where the worker's model runtime reads the
//! family's own tables; they are ignored here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::job::SamplerKind;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
}

/// How a pack turns a denoised latent into audio (`family` in `model.toml`; none: `mel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    /// latent -> log-mel -> vocoder, mono (tutti-mini and the packs `tutti train` makes).
    #[default]
    Mel,
    /// Stable Audio Open 1.0 and Small: T5, seconds conditioning, DiT, Oobleck VAE to stereo.
    StableAudio,
}

impl ModelFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::Mel => "mel",
            ModelFamily::StableAudio => "stable_audio",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct PackToml {
    #[serde(default)]
    family: ModelFamily,
    model: ModelTable,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    limits: Limits,
}

#[derive(Debug, Clone, Deserialize)]
struct ModelTable {
    name: String,
    version: String,
    sample_rate: u32,
    #[serde(default = "mono")]
    channels: u16,
}

fn mono() -> u16 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Defaults {
    pub sampler: SamplerKind,
    pub steps: u32,
    pub guidance_scale: f32,
    pub chunk_steps: u32,
    pub duration_s: f32,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::FlowEuler,
            steps: 50,
            guidance_scale: 4.0,
            chunk_steps: 10,
            duration_s: 10.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_steps: u32,
    pub max_duration_s: f32,
    pub max_prompt_tokens: usize,
    /// The samplers the pack's schedule runs (none listed: every deterministic one).
    pub samplers: Option<Vec<SamplerKind>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: 200,
            max_duration_s: 30.0,
            max_prompt_tokens: 128,
            samplers: None,
        }
    }
}

/// One pack found on disk.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub family: ModelFamily,
    pub name: String,
    pub version: String,
    pub sample_rate: u32,
    /// Audio channels of its outputs (1: mono, 2: stereo).
    pub channels: u16,
    pub defaults: Defaults,
    pub limits: Limits,
    pub dir: PathBuf,
    /// The whole `model.toml`, parsed: the family's runtime reads its own tables from it.
    pub toml: toml::Table,
}

impl ModelInfo {
    pub fn read(dir: &Path) -> Result<Self, ModelsError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let parse_err = |e: toml::de::Error| ModelsError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(parse_err)?;
        let t: PackToml = toml::Value::Table(table.clone())
            .try_into()
            .map_err(parse_err)?;
        Ok(Self {
            family: t.family,
            name: t.model.name,
            version: t.model.version,
            sample_rate: t.model.sample_rate,
            channels: t.model.channels,
            defaults: t.defaults,
            limits: t.limits,
            dir: dir.to_path_buf(),
            toml: table,
        })
    }

    /// Whether the pack runs `sampler`: one it lists, or without a list any deterministic one
    /// (the stochastic ones draw per-step noise that only the Stable Audio runtime draws).
    pub fn supports(&self, sampler: SamplerKind) -> bool {
        match &self.limits.samplers {
            Some(list) => list.contains(&sampler),
            None => !sampler.is_stochastic(),
        }
    }

    /// The samplers it runs, for error messages.
    pub fn samplers(&self) -> Vec<SamplerKind> {
        SamplerKind::ALL
            .iter()
            .copied()
            .filter(|s| self.supports(*s))
            .collect()
    }

    /// The pack's tokenizer, wherever the pack keeps it, for the prompt-length rule. None for
    /// the Stable Audio family: its T5 tokenizer truncates to the model's fixed length, as the
    /// reference pipelines do, so a long prompt is not an error there.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        if self.family == ModelFamily::StableAudio {
            return None;
        }
        ["text_encoder/tokenizer.json", "tokenizer.json"]
            .iter()
            .map(|p| self.dir.join(p))
            .find(|p| p.is_file())
    }
}

/// Packs under a folder: the folder itself if it holds `model.toml`, else each subfolder (one
/// level, or two for a `<name>/<version>/` layout) that does.
#[derive(Debug, Clone, Default)]
pub struct ModelRegistry {
    by_name: BTreeMap<String, BTreeMap<String, ModelInfo>>,
}

impl ModelRegistry {
    pub fn scan(root: &Path) -> Result<Self, ModelsError> {
        let mut reg = Self::default();
        let mut dirs = vec![root.to_path_buf()];
        for depth in 0..3 {
            let mut next = Vec::new();
            for d in dirs {
                if d.join("model.toml").is_file() {
                    reg.insert(ModelInfo::read(&d)?);
                } else if depth < 2 {
                    let entries = std::fs::read_dir(&d).map_err(|source| ModelsError::Read {
                        path: d.display().to_string(),
                        source,
                    })?;
                    next.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
            }
            dirs = next;
        }
        Ok(reg)
    }

    pub fn insert(&mut self, info: ModelInfo) {
        self.by_name
            .entry(info.name.clone())
            .or_default()
            .insert(info.version.clone(), info);
    }

    /// A model by name and version; an empty version picks the newest (sorted as numbers where
    /// the versions are numbers, else as text).
    pub fn resolve(&self, name: &str, version: &str) -> Option<&ModelInfo> {
        let versions = self.by_name.get(name)?;
        if version.is_empty() {
            versions
                .values()
                .max_by(|a, b| version_cmp(&a.version, &b.version))
        } else {
            versions.get(version)
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn all(&self) -> impl Iterator<Item = &ModelInfo> {
        self.by_name.values().flat_map(|v| v.values())
    }
}

fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| -> Option<Vec<u64>> { s.split('.').map(|p| p.parse().ok()).collect() };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}
