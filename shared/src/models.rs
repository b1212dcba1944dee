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
    /// ACE-Step 1.5: songs with lyrics; Qwen3 text, lyric and timbre encoders, DiT, Oobleck VAE
    /// to stereo 48 kHz.
    AceStep,
}

impl ModelFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::Mel => "mel",
            ModelFamily::StableAudio => "stable_audio",
            ModelFamily::AceStep => "ace_step",
        }
    }
}

/// A request field that only some models take. The catalogue lists a model's
/// (`ModelInfo::inputs`), the request rules read the same answer (`ModelInfo::takes`), and the
/// list grows with the families: song models add lyrics, a vocal language and repaint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelInput {
    /// `negative_prompt`: what guidance steers away from.
    NegativePrompt,
    /// `guidance_scale`: classifier-free guidance.
    Guidance,
    /// A tempo control: the structured prompt's tempo, or "75 BPM" in the text, conditions the
    /// model as a number (elsewhere the model reads it in the text only).
    Tempo,
    /// A key and mode control ("in A minor"), as for the tempo.
    Key,
    /// `init_audio` and `init_strength`: audio-to-audio from a clip (waveform-VAE models).
    InitAudio,
    /// Lyrics sung by the model, and a time signature (song models).
    Lyrics,
    /// The language of the vocals (song models).
    VocalLanguage,
    /// Regenerating a time span of a given clip (`init_audio` with `repaint_start_seconds`),
    /// the rest kept (song models).
    Repaint,
}

impl ModelInput {
    pub const ALL: &'static [ModelInput] = &[
        ModelInput::NegativePrompt,
        ModelInput::Guidance,
        ModelInput::Tempo,
        ModelInput::Key,
        ModelInput::InitAudio,
        ModelInput::Lyrics,
        ModelInput::VocalLanguage,
        ModelInput::Repaint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelInput::NegativePrompt => "negative_prompt",
            ModelInput::Guidance => "guidance",
            ModelInput::Tempo => "tempo",
            ModelInput::Key => "key",
            ModelInput::InitAudio => "init_audio",
            ModelInput::Lyrics => "lyrics",
            ModelInput::VocalLanguage => "vocal_language",
            ModelInput::Repaint => "repaint",
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
    /// The mel family's numeric conditioners (absent: all of them, as the runtime reads it).
    #[serde(default)]
    conditioners: Option<ConditionersTable>,
    #[serde(default)]
    schedule: ScheduleTable,
    /// ACE-Step's own table: whether guidance is distilled into the weights.
    #[serde(default)]
    ace_step: Option<AceStepTable>,
}

/// What of `[ace_step]` decides the request fields: a turbo model runs without guidance.
#[derive(Debug, Clone, Deserialize)]
struct AceStepTable {
    #[serde(default)]
    turbo: bool,
}

/// What of `[schedule]` decides the samplers a pack without a list runs: its prediction
/// (`flow`, the runtime's default, or a diffusion one such as `epsilon` or `v`).
#[derive(Debug, Clone, Default, Deserialize)]
struct ScheduleTable {
    #[serde(default)]
    prediction: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ModelTable {
    name: String,
    version: String,
    sample_rate: u32,
    #[serde(default = "mono")]
    channels: u16,
    #[serde(default)]
    description: String,
}

/// What of `[conditioners]` says which controls a mel pack takes: a `tempo` range, and the
/// `key` and `mode` flags (absent: on, as the runtime's defaults have them).
#[derive(Debug, Clone, Deserialize)]
struct ConditionersTable {
    #[serde(default)]
    tempo: Option<toml::Value>,
    #[serde(default = "yes")]
    key: bool,
    #[serde(default = "yes")]
    mode: bool,
}

fn yes() -> bool {
    true
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
    /// A mel pack's `[defaults.mode_tonics]` as written: the tonics a request naming a mode
    /// and no tonic is served in (the mel runtime validates and applies it; the catalogue
    /// shows it).
    pub mode_tonics: ModeTonicNames,
    /// How far a tonic the mode's list lacks is moved to a listed one and played back in the
    /// asked key (0: every key as asked).
    pub varispeed_semitones: u32,
}

/// `[defaults.mode_tonics]`: pitch names ("E", "Bb") per mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ModeTonicNames {
    pub major: Vec<String>,
    pub minor: Vec<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::FlowEuler,
            steps: 50,
            guidance_scale: 4.0,
            chunk_steps: 10,
            duration_s: 10.0,
            mode_tonics: ModeTonicNames::default(),
            varispeed_semitones: 0,
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
    /// `[model] description`, when the pack has one.
    pub description: String,
    /// The request fields it takes beyond the ones every model takes (see `ModelInput`).
    pub inputs: Vec<ModelInput>,
    /// Its denoiser predicts a rectified-flow velocity (`[schedule] prediction = "flow"`, the
    /// default): only the flow samplers run it; otherwise only the diffusion ones.
    pub flow: bool,
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
        let turbo = t.ace_step.as_ref().is_some_and(|a| a.turbo);
        let inputs = family_inputs(t.family, t.conditioners.as_ref(), turbo);
        let flow = t.schedule.prediction.as_deref().is_none_or(|p| p == "flow");
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
            description: t.model.description,
            inputs,
            flow,
        })
    }

    /// Whether the model takes `input` (the request rules and the catalogue both ask here).
    pub fn takes(&self, input: ModelInput) -> bool {
        self.inputs.contains(&input)
    }

    /// Whether the pack runs `sampler`: one it lists, or without a list any deterministic one
    /// made for its prediction (the stochastic ones draw per-step noise that only the Stable
    /// Audio runtime draws; flow Euler needs a flow denoiser, DDIM and the DPM-Solvers a
    /// diffusion one, as the runtime's sampler factory checks).
    pub fn supports(&self, sampler: SamplerKind) -> bool {
        match &self.limits.samplers {
            Some(list) => list.contains(&sampler),
            None => !sampler.is_stochastic() && (sampler == SamplerKind::FlowEuler) == self.flow,
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

/// The request fields a family's packs take: mel and Stable Audio packs take a negative prompt
/// and guidance; a mel pack takes the tempo and key controls it declares; a Stable Audio pack
/// has the waveform VAE that audio-to-audio needs; an ACE-Step pack reads tempo and key in its
/// metadata block, sings lyrics in a language, and guides with its learned null condition
/// (never a negative prompt) unless it is a turbo model.
fn family_inputs(
    family: ModelFamily,
    cond: Option<&ConditionersTable>,
    turbo: bool,
) -> Vec<ModelInput> {
    let mut inputs = Vec::new();
    match family {
        ModelFamily::Mel => {
            inputs.extend([ModelInput::NegativePrompt, ModelInput::Guidance]);
            if cond.is_none_or(|c| c.tempo.is_some()) {
                inputs.push(ModelInput::Tempo);
            }
            if cond.is_none_or(|c| c.key || c.mode) {
                inputs.push(ModelInput::Key);
            }
        }
        ModelFamily::StableAudio => inputs.extend([
            ModelInput::NegativePrompt,
            ModelInput::Guidance,
            ModelInput::InitAudio,
        ]),
        ModelFamily::AceStep => {
            if !turbo {
                inputs.push(ModelInput::Guidance);
            }
            inputs.extend([
                ModelInput::Tempo,
                ModelInput::Key,
                ModelInput::Lyrics,
                ModelInput::VocalLanguage,
                ModelInput::Repaint,
            ]);
        }
    }
    inputs
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

    /// Every version of a model, newest first (the order `resolve` picks by).
    pub fn versions(&self, name: &str) -> Vec<&ModelInfo> {
        let mut v: Vec<&ModelInfo> = self
            .by_name
            .get(name)
            .map(|v| v.values().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| version_cmp(&b.version, &a.version));
        v
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(toml: &str) -> ModelInfo {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("model.toml"), toml).expect("write model.toml");
        ModelInfo::read(dir.path()).expect("read")
    }

    const HEAD: &str = "[model]\nname = \"m\"\nversion = \"1\"\nsample_rate = 16000\n";

    #[test]
    fn the_inputs_follow_the_family_and_its_conditioners() {
        use ModelInput::*;
        // A mel pack without [conditioners] has every control, as the runtime reads it.
        assert_eq!(pack(HEAD).inputs, [NegativePrompt, Guidance, Tempo, Key]);
        let bare = pack(&format!(
            "{HEAD}[conditioners]\nembed_dim = 8\nkey = false\nmode = false\n[conditioners.duration]\nmin = 0.0\nmax = 30.0\n"
        ));
        assert_eq!(bare.inputs, [NegativePrompt, Guidance]);
        assert!(!bare.takes(Tempo) && !bare.takes(InitAudio));
        let tempo = pack(&format!(
            "{HEAD}[conditioners]\n[conditioners.tempo]\nmin = 40.0\nmax = 240.0\n"
        ));
        assert_eq!(tempo.inputs, [NegativePrompt, Guidance, Tempo, Key]);
        // The samplers of a pack without a list follow its prediction.
        assert_eq!(tempo.samplers(), [SamplerKind::FlowEuler]);
        let v = pack(&format!("{HEAD}[schedule]\nprediction = \"v\"\n"));
        assert_eq!(
            v.samplers(),
            [
                SamplerKind::Ddim,
                SamplerKind::DpmSolverPp2m,
                SamplerKind::CosineDpmSolverPp2m
            ]
        );
        let sao = pack(&format!(
            "family = \"stable_audio\"\n{HEAD}channels = 2\ndescription = \"d\"\n"
        ));
        assert_eq!(sao.inputs, [NegativePrompt, Guidance, InitAudio]);
        assert_eq!((sao.channels, sao.description.as_str()), (2, "d"));
        assert!(sao.takes(InitAudio) && !sao.takes(Lyrics));
    }

    #[test]
    fn the_key_serving_defaults_are_read_as_written() {
        let bare = pack(HEAD);
        assert_eq!(bare.defaults.mode_tonics, ModeTonicNames::default());
        assert_eq!(bare.defaults.varispeed_semitones, 0);
        let served = pack(&format!(
            "{HEAD}[defaults]\nsteps = 50\nvarispeed_semitones = 1\n[defaults.mode_tonics]\nminor = [\"C\", \"Bb\"]\n"
        ));
        assert_eq!(served.defaults.mode_tonics.minor, ["C", "Bb"]);
        assert!(served.defaults.mode_tonics.major.is_empty());
        assert_eq!(
            (served.defaults.steps, served.defaults.varispeed_semitones),
            (50, 1)
        );
    }
}
