//! Model packs: a folder with `model.toml` and the weights of every component.
//!
//! ```text
//! model.toml               [model] [mel] [denoiser] [conditioners] [schedule] [decoder] [vocoder]
//!                          [defaults] [limits], text_encoder = "text_encoder"
//! text_encoder/            config.json, model.safetensors, tokenizer.json (Hugging Face BERT)
//! denoiser.safetensors     StableAudioDiTModel keys, exactly as diffusers names them
//! conditioners.safetensors see conditioners.rs
//! decoder.safetensors      optional: required only when the decoder has weights
//! vocoder.safetensors      optional: required only when the vocoder has weights
//! ```
//!
//! Loading is strict: a missing file, a missing key, an unknown key or a wrong shape is an error
//! that names the file and the key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind};
use tutti_shared::prompt::{self, Controls, Mode};

use crate::decoders::mel::MelConfig;
use crate::decoders::mel_decoder::{self, Decoder, DecoderConfig};
use crate::decoders::vocoder::{self, Vocoder, VocoderConfig};
use crate::families::mel::conditioners::{ConditionerConfig, Conditioners};
use crate::families::mel::frame_cond::{FrameCondConfig, FrameConditioner};
use crate::nn::dit::{DitConfig, StableAudioDit};
use crate::samplers::{SamplerKind, ScheduleConfig};
use crate::text::bert::{TextEncoder, TextEncoderConfig};
use crate::{weights, ModelError, Result};

pub const CONFIG_FILE: &str = "model.toml";
pub const DENOISER_FILE: &str = "denoiser.safetensors";
pub const CONDITIONERS_FILE: &str = "conditioners.safetensors";
pub const DECODER_FILE: &str = "decoder.safetensors";
pub const VOCODER_FILE: &str = "vocoder.safetensors";

/// `[model]`: identity, audio format and latent layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub sample_rate: u32,
    pub max_duration_s: f32,
    /// Channels of the latent (= the denoiser's `in_channels`).
    pub latent_channels: i64,
    /// Latent frames per second of audio; a job of `d` seconds has `ceil(d * fps)` frames.
    pub latent_frames_per_second: f64,
    /// The denoiser works on `(raw - latent_shift) * latent_scale`; the decoder gets `raw`.
    #[serde(default = "one")]
    pub latent_scale: f64,
    #[serde(default)]
    pub latent_shift: f64,
}

fn one() -> f64 {
    1.0
}

/// `[defaults]`: what a request that names nothing gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    pub sampler: SamplerKind,
    pub steps: usize,
    pub guidance_scale: f64,
    /// Steps per denoise task (the farm's chunk size).
    pub chunk_steps: usize,
    /// The numeric controls guidance steers by as well as the text: the unconditional half
    /// leaves them unknown (as training's control dropout does), so `guidance_scale` amplifies
    /// them too. Empty: both halves carry every control, and guidance steers by the text alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guided_controls: Vec<GuidedControl>,
    /// The tonics the model renders each mode in best. A request that names a mode but no
    /// tonic ("in a minor key") is served in one the seed picks, rather than as a mode alone,
    /// which the model learns far less well (measured: minor heard in 1 of 16 mode-only
    /// requests, 12 of 20 with a tonic). Empty: the mode goes alone.
    #[serde(default, skip_serializing_if = "ModeTonics::is_empty")]
    pub mode_tonics: ModeTonics,
    /// A request whose tonic `mode_tonics` does not list for its mode is rendered in the
    /// nearest listed tonic at most this many semitones away and played back at the speed
    /// that restores the asked key, tempo and length (`crate::varispeed`). 0: every key as asked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub varispeed_semitones: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// `[defaults.mode_tonics]`: the tonics the seed picks from, per mode (pitch names: "E", "Bb").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModeTonics {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub major: Vec<Tonic>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub minor: Vec<Tonic>,
}

impl ModeTonics {
    pub fn is_empty(&self) -> bool {
        self.major.is_empty() && self.minor.is_empty()
    }

    /// `controls` with the tonic `seed` picks when they name a mode without one; otherwise
    /// (a tonic named, no mode, or no list for the mode) unchanged.
    pub fn resolve(&self, controls: &Controls, seed: u64) -> Controls {
        let mut c = *controls;
        let list = match c.mode {
            Some(Mode::Major) => &self.major,
            Some(Mode::Minor) => &self.minor,
            None => return c,
        };
        if c.key.is_none() && !list.is_empty() {
            c.key = Some(list[(seed % list.len() as u64) as usize].0);
        }
        c
    }
}

/// A tonic pitch class (0 = C ... 11 = B), written as its name in `model.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tonic(pub u8);

impl Serialize for Tonic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&prompt::key_name(self.0, None))
    }
}

impl<'de> Deserialize<'de> for Tonic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match prompt::parse_key(&name) {
            Some((pc, None)) => Ok(Tonic(pc)),
            _ => Err(serde::de::Error::custom(format!(
                "{name:?} is not a pitch name such as \"E\" or \"Bb\""
            ))),
        }
    }
}

/// A numeric control classifier-free guidance can steer by (see [`Defaults::guided_controls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuidedControl {
    /// The tempo (its embedding and the beat grid).
    Tempo,
    /// The tonic (its embedding and the key profile).
    Key,
    /// The mode (its embedding and the key profile).
    Mode,
    /// The instrument families the prompt names (a per-frame input).
    Instruments,
}

impl GuidedControl {
    /// `controls` as the unconditional half of guidance sees them: every control in `guided`
    /// unknown. (Instruments are read from the prompt, not carried in `Controls`: the pipeline
    /// leaves them out of the unconditional half's frame inputs itself.)
    pub fn unconditional(controls: &Controls, guided: &[GuidedControl]) -> Controls {
        let mut c = *controls;
        for g in guided {
            match g {
                GuidedControl::Tempo => c.bpm = None,
                GuidedControl::Key => c.key = None,
                GuidedControl::Mode => c.mode = None,
                GuidedControl::Instruments => {}
            }
        }
        c
    }
}

/// `[limits]`: what a request may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_steps: usize,
    pub max_duration_s: f32,
}

/// A parsed `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackConfig {
    /// Folder of the text encoder, relative to the pack.
    #[serde(default = "default_text_encoder")]
    pub text_encoder: String,
    pub model: ModelInfo,
    pub mel: MelConfig,
    pub denoiser: DitConfig,
    #[serde(default)]
    pub conditioners: ConditionerConfig,
    /// Per-frame controls (beat grid, key profile, instruments); absent in packs made before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_conditioning: Option<FrameCondConfig>,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub decoder: DecoderConfig,
    #[serde(default)]
    pub vocoder: VocoderConfig,
    pub defaults: Defaults,
    pub limits: Limits,
}

fn default_text_encoder() -> String {
    "text_encoder".into()
}

fn pack_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Pack {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl PackConfig {
    /// Reads and validates `dir/model.toml`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| pack_err(&path, format!("cannot read: {e}")))?;
        let cfg: PackConfig =
            toml::from_str(&text).map_err(|e| pack_err(&path, format!("invalid: {e}")))?;
        cfg.validate().map_err(|m| pack_err(&path, m))?;
        Ok(cfg)
    }

    /// From the parsed `model.toml` of the pack at `dir` (the farm's registry parsed it once).
    pub fn from_table(table: &toml::Table, dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let cfg: PackConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e| pack_err(&path, format!("invalid: {e}")))?;
        cfg.validate().map_err(|m| pack_err(&path, m))?;
        Ok(cfg)
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| ModelError::Input(format!("cannot serialise model.toml: {e}")))
    }

    /// Latent frames for a duration.
    pub fn latent_frames(&self, duration_s: f32) -> i64 {
        ((duration_s as f64 * self.model.latent_frames_per_second).ceil() as i64).max(1)
    }

    /// Output samples for a duration.
    pub fn samples(&self, duration_s: f32) -> usize {
        (duration_s as f64 * self.model.sample_rate as f64).round() as usize
    }

    /// The numeric controls the pack is conditioned on, each of which guidance could steer by.
    pub fn controls(&self) -> Vec<GuidedControl> {
        [
            GuidedControl::Tempo,
            GuidedControl::Key,
            GuidedControl::Mode,
            GuidedControl::Instruments,
        ]
        .into_iter()
        .filter(|c| self.has_control(*c))
        .collect()
    }

    /// Whether the pack is conditioned on `control` (a global embedding or a per-frame input).
    fn has_control(&self, control: GuidedControl) -> bool {
        let (c, f) = (&self.conditioners, self.frame_conditioning.as_ref());
        match control {
            GuidedControl::Tempo => c.tempo.is_some() || f.is_some_and(|f| f.beat_grid),
            GuidedControl::Key => c.key || f.is_some_and(|f| f.key_profile),
            GuidedControl::Mode => c.mode || f.is_some_and(|f| f.key_profile),
            GuidedControl::Instruments => f.is_some_and(|f| f.instruments),
        }
    }

    /// Consistency checks that need no weights (the text encoder's width is checked at load).
    pub fn validate(&self) -> Result<(), String> {
        let m = &self.model;
        if m.name.is_empty() || m.version.is_empty() {
            return Err("model.name and model.version must not be empty".into());
        }
        if m.sample_rate != self.mel.sample_rate {
            return Err(format!(
                "model.sample_rate {} differs from mel.sample_rate {}",
                m.sample_rate, self.mel.sample_rate
            ));
        }
        if m.latent_frames_per_second.is_nan()
            || m.latent_frames_per_second <= 0.0
            || m.latent_scale == 0.0
            || !m.latent_scale.is_finite()
        {
            return Err(
                "model.latent_frames_per_second must be positive and latent_scale non-zero".into(),
            );
        }
        self.denoiser.validate()?;
        self.conditioners.validate()?;
        if let Some(f) = &self.frame_conditioning {
            f.validate(self.denoiser.inner_dim())?;
        }
        let d = &self.denoiser;
        if d.in_channels != m.latent_channels || d.out_channels != m.latent_channels {
            return Err(format!(
                "denoiser in/out channels ({}, {}) must equal model.latent_channels {}",
                d.in_channels, d.out_channels, m.latent_channels
            ));
        }
        if d.global_states_input_dim <= self.conditioners.output_dim() {
            return Err(format!(
                "denoiser.global_states_input_dim {} leaves no room for the pooled text embedding after {} conditioner dims",
                d.global_states_input_dim,
                self.conditioners.output_dim()
            ));
        }
        let (df, l) = (&self.defaults, &self.limits);
        if let Some(g) = df.guided_controls.iter().find(|g| !self.has_control(**g)) {
            return Err(format!(
                "defaults.guided_controls names {g:?}, a control this pack does not take"
            ));
        }
        if !df.mode_tonics.is_empty() && !self.has_control(GuidedControl::Key) {
            return Err("defaults.mode_tonics needs a pack conditioned on the key".into());
        }
        if df.varispeed_semitones > 6 {
            return Err("defaults.varispeed_semitones must be at most 6 (a tritone)".into());
        }
        if df.varispeed_semitones > 0 && df.mode_tonics.is_empty() {
            return Err(
                "defaults.varispeed_semitones needs defaults.mode_tonics (the tonics to render in)"
                    .into(),
            );
        }
        if df.steps == 0 || df.steps > l.max_steps || df.chunk_steps == 0 {
            return Err(
                "defaults.steps must be in 1..=limits.max_steps and defaults.chunk_steps positive"
                    .into(),
            );
        }
        if l.max_duration_s.is_nan()
            || l.max_duration_s <= 0.0
            || l.max_duration_s > m.max_duration_s
        {
            return Err(
                "limits.max_duration_s must be positive and at most model.max_duration_s".into(),
            );
        }
        if !df.guidance_scale.is_finite() {
            return Err("defaults.guidance_scale must be finite".into());
        }
        Ok(())
    }
}

/// Every component of a pack, loaded on one device.
pub struct LoadedPack {
    pub dir: PathBuf,
    pub config: PackConfig,
    pub text_encoder: TextEncoder,
    pub conditioners: Conditioners,
    /// Per-frame controls, when the pack declares them.
    pub frames: Option<FrameConditioner>,
    pub denoiser: StableAudioDit,
    pub decoder: Box<dyn Decoder>,
    pub vocoder: Box<dyn Vocoder>,
    // Variable stores own the weights the modules refer to.
    _stores: Vec<nn::VarStore>,
}

impl std::fmt::Debug for LoadedPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPack")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Loads weights into a store: the file must exist when the module has variables; an existing file
/// must match exactly.
fn load_component(vs: &nn::VarStore, path: &Path, required: bool) -> Result<()> {
    if !path.exists() {
        if required && !vs.variables().is_empty() {
            return Err(pack_err(path, "weights file is missing"));
        }
        return Ok(());
    }
    weights::load_file_strict(vs, path, &|_| false)
}

impl LoadedPack {
    /// Loads a pack, its denoiser in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load_config(dir, PackConfig::read(dir)?, device, kind)
    }

    /// Loads the pack at `dir` whose `model.toml` is `config`.
    pub fn load_config(dir: &Path, config: PackConfig, device: Device, kind: Kind) -> Result<Self> {
        let te_dir = dir.join(&config.text_encoder);
        let text_encoder = TextEncoder::load(&te_dir, device)?;
        let text_dim = text_encoder.hidden_size();
        let d = &config.denoiser;
        let cfg_path = dir.join(CONFIG_FILE);
        if d.cross_attention_input_dim != text_dim {
            return Err(pack_err(
                &cfg_path,
                format!("denoiser.cross_attention_input_dim {} differs from the text encoder's hidden size {text_dim}", d.cross_attention_input_dim),
            ));
        }
        let expected_global = text_dim + config.conditioners.output_dim();
        if d.global_states_input_dim != expected_global {
            return Err(pack_err(
                &cfg_path,
                format!(
                    "denoiser.global_states_input_dim {} must be text hidden size {text_dim} + conditioners {} = {expected_global}",
                    d.global_states_input_dim,
                    config.conditioners.output_dim()
                ),
            ));
        }

        let cond_vs = nn::VarStore::new(device);
        let conditioners = Conditioners::new(cond_vs.root(), &config.conditioners);
        let frames = config
            .frame_conditioning
            .as_ref()
            .map(|f| FrameConditioner::new(cond_vs.root() / "frames", f));
        load_component(&cond_vs, &dir.join(CONDITIONERS_FILE), true)?;

        let mut dit_vs = nn::VarStore::new(device);
        let denoiser = StableAudioDit::new(dit_vs.root(), &config.denoiser);
        let dit_path = dir.join(DENOISER_FILE);
        if !dit_path.exists() {
            return Err(pack_err(&dit_path, "weights file is missing"));
        }
        weights::load_file_strict(&dit_vs, &dit_path, &|_| false)?;
        dit_vs.set_kind(kind);

        let RenderPack {
            decoder,
            vocoder,
            _stores: render_stores,
        } = RenderPack::load_parts(dir, &config, device)?;
        let mut stores = vec![cond_vs, dit_vs];
        stores.extend(render_stores);
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            text_encoder,
            conditioners,
            frames,
            denoiser,
            decoder,
            vocoder,
            _stores: stores,
        })
    }
}

/// Only the decoder and the vocoder of a pack: what rendering a finished latent needs.
pub struct RenderPack {
    pub decoder: Box<dyn Decoder>,
    pub vocoder: Box<dyn Vocoder>,
    _stores: Vec<nn::VarStore>,
}

impl RenderPack {
    /// Reads the pack's config and loads its decoder and vocoder.
    pub fn load(dir: &Path, device: Device) -> Result<(PackConfig, Self)> {
        let config = PackConfig::read(dir)?;
        let parts = Self::load_parts(dir, &config, device)?;
        Ok((config, parts))
    }

    /// The decoder and vocoder of the pack at `dir` whose `model.toml` is `config`.
    pub fn load_parts(dir: &Path, config: &PackConfig, device: Device) -> Result<Self> {
        let dec_vs = nn::VarStore::new(device);
        let decoder = mel_decoder::build(&config.decoder, dec_vs.root(), &config.mel)?;
        load_component(&dec_vs, &dir.join(DECODER_FILE), true)?;

        let voc_vs = nn::VarStore::new(device);
        let vocoder = vocoder::build(&config.vocoder, &config.mel, voc_vs.root())?;
        load_component(&voc_vs, &dir.join(VOCODER_FILE), true)?;
        Ok(Self {
            decoder,
            vocoder,
            _stores: vec![dec_vs, voc_vs],
        })
    }
}

fn describe_weights(out: &mut String, path: &Path) {
    match weights::read_safetensors(path) {
        Ok(file) => {
            let params: i64 = file.tensors.values().map(|t| t.numel() as i64).sum();
            let _ = writeln!(
                out,
                "  {}: {} tensors, {} parameters",
                path.display(),
                file.tensors.len(),
                params
            );
        }
        Err(e) if path.exists() => {
            let _ = writeln!(out, "  {}: unreadable: {e}", path.display());
        }
        Err(_) => {
            let _ = writeln!(out, "  {}: absent", path.display());
        }
    }
}

/// A human-readable summary of a mel pack: its configuration and what each weight file holds.
pub fn inspect(path: &Path) -> Result<String> {
    let cfg = PackConfig::read(path)?;
    let m = &cfg.model;
    let d = &cfg.denoiser;
    let mut out = String::new();
    let _ = writeln!(out, "model pack {} (version {})", m.name, m.version);
    if !m.description.is_empty() {
        let _ = writeln!(out, "  {}", m.description);
    }
    let _ = writeln!(out, "  folder: {}", path.display());
    let _ = writeln!(
        out,
        "  audio: {} Hz, up to {} s (limit {} s); latent: {} channels at {} frames/s, scale {}, shift {}",
        m.sample_rate, m.max_duration_s, cfg.limits.max_duration_s, m.latent_channels, m.latent_frames_per_second, m.latent_scale, m.latent_shift
    );
    let _ = writeln!(
        out,
        "  denoiser: StableAudioDiT, {} layers, {} heads x {} (kv heads {}), cross-attention {} <- text {}, global {}",
        d.num_layers, d.num_attention_heads, d.attention_head_dim, d.num_key_value_attention_heads, d.cross_attention_dim, d.cross_attention_input_dim, d.global_states_input_dim
    );
    let c = &cfg.conditioners;
    let mut names = Vec::new();
    if let Some(r) = c.duration {
        names.push(format!("duration [{}, {}] s", r.min, r.max));
    }
    if let Some(r) = c.tempo {
        names.push(format!("tempo [{}, {}] BPM", r.min, r.max));
    }
    if c.key {
        names.push("key (12 pitch classes)".into());
    }
    if c.mode {
        names.push("mode (major/minor)".into());
    }
    let _ = writeln!(
        out,
        "  conditioners (embed {}): {}",
        c.embed_dim,
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    );
    if let Some(f) = &cfg.frame_conditioning {
        let _ = writeln!(
            out,
            "  per-frame controls (width {}): {}{}",
            f.dim,
            if f.beat_grid { "beat grid " } else { "" },
            if f.key_profile { "key profile" } else { "" }
        );
    }
    let _ = writeln!(out, "  mel: {:?}", cfg.mel);
    let _ = writeln!(out, "  schedule: {:?}", cfg.schedule);
    let _ = writeln!(out, "  decoder: {:?}", cfg.decoder);
    let _ = writeln!(out, "  vocoder: {:?}", cfg.vocoder);
    let df = &cfg.defaults;
    let _ = writeln!(
        out,
        "  defaults: sampler {:?}, {} steps, guidance {} (text{}), {} steps per chunk; limits: {} steps",
        df.sampler,
        df.steps,
        df.guidance_scale,
        df.guided_controls
            .iter()
            .map(|g| format!(", {g:?}").to_lowercase())
            .collect::<String>(),
        df.chunk_steps,
        cfg.limits.max_steps
    );
    let names = |l: &[Tonic]| {
        l.iter()
            .map(|t| prompt::key_name(t.0, None))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !df.mode_tonics.is_empty() {
        let _ = writeln!(
            out,
            "  a mode without a tonic gets one by seed: major [{}], minor [{}]",
            names(&df.mode_tonics.major),
            names(&df.mode_tonics.minor)
        );
    }
    if df.varispeed_semitones > 0 {
        let _ = writeln!(
            out,
            "  a tonic not listed is rendered in the nearest listed one (within {} semitone{}) and played back at the speed that restores it",
            df.varispeed_semitones,
            if df.varispeed_semitones == 1 { "" } else { "s" }
        );
    }
    let te = path.join(&cfg.text_encoder);
    match std::fs::read_to_string(te.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<TextEncoderConfig>(&t).ok())
    {
        Some(t) => {
            let _ = writeln!(
                out,
                "  text encoder: {} (BERT, {} layers, hidden {}, {} heads, max {} tokens)",
                te.display(),
                t.num_hidden_layers,
                t.hidden_size,
                t.num_attention_heads,
                t.max_length
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  text encoder: {} (config.json missing or invalid)",
                te.display()
            );
        }
    }
    let _ = writeln!(out, "weights:");
    describe_weights(&mut out, &te.join("model.safetensors"));
    for f in [DENOISER_FILE, CONDITIONERS_FILE, DECODER_FILE, VOCODER_FILE] {
        describe_weights(&mut out, &path.join(f));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Table {
        mode_tonics: ModeTonics,
    }

    #[test]
    fn mode_tonics_read_pitch_names_and_refuse_others() {
        let t: Table = toml::from_str("[mode_tonics]\nminor = [\"E\", \"Bb\", \"f#\"]\n").unwrap();
        assert_eq!(t.mode_tonics.minor, [Tonic(4), Tonic(10), Tonic(6)]);
        assert!(t.mode_tonics.major.is_empty());
        for bad in ["\"H\"", "\"A minor\"", "4"] {
            let e = toml::from_str::<Table>(&format!("[mode_tonics]\nminor = [{bad}]\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("minor"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_seed_picks_a_tonic_only_for_a_mode_alone() {
        let tonics = ModeTonics {
            major: vec![Tonic(0)],
            minor: vec![Tonic(4), Tonic(7), Tonic(9)],
        };
        let c = |key, mode| Controls {
            duration_s: 10.0,
            bpm: Some(90.0),
            key,
            mode,
        };
        let picked = |seed| tonics.resolve(&c(None, Some(Mode::Minor)), seed).key;
        assert_eq!(
            [picked(0), picked(1), picked(2), picked(3)],
            [4, 7, 9, 4].map(Some)
        );
        assert_eq!(tonics.resolve(&c(None, Some(Mode::Major)), 5).key, Some(0));
        let named = c(Some(2), Some(Mode::Minor));
        assert_eq!(tonics.resolve(&named, 1), named);
        assert_eq!(tonics.resolve(&c(None, None), 1), c(None, None));
        assert_eq!(tonics.resolve(&c(Some(2), None), 1), c(Some(2), None));
    }
}
