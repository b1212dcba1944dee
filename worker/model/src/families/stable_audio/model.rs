//! Packs of the Stable Audio family, imported from the folders users download: the diffusers
//! layout of Stable Audio Open 1.0 (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`,
//! `projection_model/`, `tokenizer/`, `scheduler/`) and the stable-audio-tools layout of SAO Small
//! (`model_config.json` + `model.safetensors`, with a separate t5-base folder).
//!
//! A pack is a folder with `model.toml` (`family = "stable_audio"`, the layout, identity and
//! defaults) and links to the published folders: `source` (and `t5` for the stable-audio-tools
//! layout). No weight is copied: the configs are read from the source at load, diffusers' weights
//! load as they are and stable-audio-tools' are renamed as they load (`sat.rs`). Import checks
//! every weight file's header (names and shapes, not the data) against the configs, so a folder
//! that would not load is refused with the file and key at fault.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use tch::{nn, Device, Kind};

use crate::decoders::oobleck::{Oobleck, OobleckConfig};
use crate::device::Kinds;
use crate::families::stable_audio::layout::{self, Shapes};
use crate::families::stable_audio::projection::{ProjectionConfig, ProjectionModel};
use crate::families::stable_audio::sat::{self, SatConfig};
use crate::nn::dit::{DitConfig, StableAudioDit};
use crate::nn::graphed::{self, GraphedForward};
use crate::samplers::{Prediction, ScheduleConfig, SigmaSchedule};
use crate::text::t5::{FixedTokenizer, T5Config, T5Encoder};
use crate::weights::source::{read_json, TensorSource};
use crate::{weights, ModelError, Result};

use crate::families::stable_audio::pack::CONFIG_FILE;
pub use crate::families::stable_audio::pack::{
    Defaults, Layout, Limits, ModelInfo, StableAudioPack, FAMILY,
};
const SOURCE_LINK: &str = "source";
const T5_LINK: &str = "t5";

/// Everything the runtime needs, read from the published folder's configs.
#[derive(Debug, Clone, PartialEq)]
pub struct StableAudioConfig {
    pub dit: DitConfig,
    pub vae: OobleckConfig,
    pub projection: ProjectionConfig,
    pub t5: T5Config,
    /// `seconds_start` conditioning (SAO 1.0); Small has `seconds_total` only.
    pub seconds_start: bool,
    pub schedule: ScheduleConfig,
    /// The tokenizer's fixed length; `None`: the tokenizer config's `model_max_length`.
    pub text_max_length: Option<usize>,
}

impl StableAudioConfig {
    /// Audio seconds of the model's latent window.
    pub fn max_duration_s(&self) -> f64 {
        (self.dit.sample_size * self.vae.hop_length()) as f64 / self.vae.sampling_rate as f64
    }
}

fn pack_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Pack {
        path: path.display().to_string(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
}

#[derive(Deserialize)]
struct SchedulerJson {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    sigma_min: f64,
    sigma_max: f64,
    sigma_data: f64,
    sigma_schedule: SigmaSchedule,
    #[serde(default = "default_rho")]
    rho: f64,
    prediction_type: String,
    #[serde(default = "two")]
    solver_order: usize,
    #[serde(default = "midpoint")]
    solver_type: String,
    #[serde(default = "zero")]
    final_sigmas_type: String,
}

fn default_rho() -> f64 {
    7.0
}
fn two() -> usize {
    2
}
fn midpoint() -> String {
    "midpoint".into()
}
fn zero() -> String {
    "zero".into()
}

fn diffusers_schedule(path: &Path) -> Result<ScheduleConfig> {
    let s: SchedulerJson = read_json(path, "scheduler config")?;
    let e = |m: String| pack_err(path, m);
    if s.class_name
        .as_deref()
        .is_some_and(|c| c != "CosineDPMSolverMultistepScheduler")
    {
        return Err(e(format!(
            "scheduler {:?} is not supported (CosineDPMSolverMultistepScheduler)",
            s.class_name
        )));
    }
    if s.solver_order != 2 || s.solver_type != "midpoint" || s.final_sigmas_type != "zero" {
        return Err(e(
            "scheduler: only solver_order 2, solver_type midpoint, final_sigmas_type zero".into(),
        ));
    }
    let prediction = match s.prediction_type.as_str() {
        "v_prediction" => Prediction::V,
        "epsilon" => Prediction::Epsilon,
        other => {
            return Err(e(format!(
                "scheduler prediction_type {other:?} is not supported"
            )))
        }
    };
    Ok(ScheduleConfig {
        prediction,
        sigma_min: s.sigma_min,
        sigma_max: s.sigma_max,
        sigma_data: s.sigma_data,
        sigma_schedule: s.sigma_schedule,
        rho: s.rho,
        ..Default::default()
    })
}

/// Where a layout keeps each component.
pub(crate) struct Paths {
    layout: Layout,
    root: PathBuf,
    t5: PathBuf,
}

impl Paths {
    fn text_encoder(&self) -> PathBuf {
        match self.layout {
            Layout::Diffusers => self.root.join("text_encoder"),
            Layout::StableAudioTools => self.t5.clone(),
        }
    }
    fn tokenizer(&self) -> PathBuf {
        match self.layout {
            Layout::Diffusers => self.root.join("tokenizer"),
            Layout::StableAudioTools => self.t5.clone(),
        }
    }
}

fn detect(dir: &Path, t5: Option<&Path>) -> Result<Paths> {
    let (layout, t5) = if dir.join("model_index.json").is_file() {
        let idx: ModelIndex = read_json(&dir.join("model_index.json"), "model index")?;
        if idx.class_name != "StableAudioPipeline" {
            return Err(pack_err(
                &dir.join("model_index.json"),
                format!("pipeline {:?} is not a StableAudioPipeline", idx.class_name),
            ));
        }
        (Layout::Diffusers, dir.join("text_encoder"))
    } else if dir.join("model_config.json").is_file() {
        let t5 = t5.ok_or_else(|| {
            pack_err(
                dir,
                "a stable-audio-tools folder has no T5 weights: name a t5-base folder (--t5)",
            )
        })?;
        (Layout::StableAudioTools, t5.to_path_buf())
    } else {
        return Err(pack_err(
            dir,
            "neither model_index.json (diffusers) nor model_config.json (stable-audio-tools)",
        ));
    };
    Ok(Paths {
        layout,
        root: dir.to_path_buf(),
        t5,
    })
}

fn read_config(p: &Paths) -> Result<StableAudioConfig> {
    let t5: T5Config = read_json(&p.text_encoder().join("config.json"), "t5 config")?;
    match p.layout {
        Layout::Diffusers => {
            let r = &p.root;
            Ok(StableAudioConfig {
                dit: read_json(&r.join("transformer/config.json"), "transformer config")?,
                vae: read_json(&r.join("vae/config.json"), "vae config")?,
                projection: read_json(
                    &r.join("projection_model/config.json"),
                    "projection config",
                )?,
                t5,
                seconds_start: true,
                schedule: diffusers_schedule(&r.join("scheduler/scheduler_config.json"))?,
                text_max_length: None,
            })
        }
        Layout::StableAudioTools => {
            let s = SatConfig::load(&p.root.join("model_config.json"))?;
            Ok(StableAudioConfig {
                dit: s.dit,
                vae: s.vae,
                projection: s.projection,
                t5,
                seconds_start: false,
                schedule: ScheduleConfig {
                    prediction: Prediction::Flow,
                    ..Default::default()
                },
                text_max_length: Some(s.text_max_length),
            })
        }
    }
}

/// Checks the configs against each other and every weight file's header against the configs.
fn check_folder(p: &Paths, cfg: &StableAudioConfig) -> Result<()> {
    let bad = |m: String| pack_err(&p.root, m);
    cfg.dit.validate().map_err(bad)?;
    let nconds = if cfg.seconds_start { 2 } else { 1 };
    let (d, c) = (&cfg.dit, cfg.projection.conditioning_dim);
    if d.cross_attention_input_dim != c || d.global_states_input_dim != nconds * c {
        return Err(bad(format!(
            "transformer cross_attention_input_dim {} / global_states_input_dim {} do not match the conditioning ({} x {c})",
            d.cross_attention_input_dim, d.global_states_input_dim, nconds
        )));
    }
    if cfg.t5.d_model != cfg.projection.text_encoder_dim {
        return Err(bad(format!(
            "t5 d_model {} is not the projection's text_encoder_dim {}",
            cfg.t5.d_model, cfg.projection.text_encoder_dim
        )));
    }
    if d.in_channels != cfg.vae.decoder_input_channels {
        return Err(bad(format!(
            "transformer in_channels {} is not the vae's latent channels {}",
            d.in_channels, cfg.vae.decoder_input_channels
        )));
    }
    let t5_file = p.text_encoder().join("model.safetensors");
    let t5_check = |found: &Shapes| {
        layout::check(
            &layout::t5(&cfg.t5)?,
            found,
            &t5_file.display().to_string(),
            &[("encoder.embed_tokens.weight", "shared.weight")],
        )
    };
    t5_check(&layout::read_header(&t5_file)?)?;
    match p.layout {
        Layout::Diffusers => {
            let r = &p.root;
            for (file, want) in [
                (
                    "transformer/diffusion_pytorch_model.safetensors",
                    layout::dit(&cfg.dit),
                ),
                (
                    "vae/diffusion_pytorch_model.safetensors",
                    layout::oobleck(&cfg.vae),
                ),
                (
                    "projection_model/diffusion_pytorch_model.safetensors",
                    layout::projection(&cfg.projection, true),
                ),
            ] {
                let path = r.join(file);
                let found = layout::read_header(&path)?;
                layout::check(&want, &found, &path.display().to_string(), &[])?;
            }
        }
        Layout::StableAudioTools => {
            let path = p.root.join("model.safetensors");
            let source = path.display().to_string();
            let found = layout::read_header(&path)?;
            let [dit, proj, vae] =
                sat::split_shapes(&found, cfg.vae.downsampling_ratios.len(), &source)?;
            layout::check(&layout::dit(&cfg.dit), &dit, &source, &[])?;
            layout::check(
                &layout::projection(&cfg.projection, false),
                &proj,
                &source,
                &[],
            )?;
            layout::check(&layout::oobleck(&cfg.vae), &vae, &source, &[])?;
        }
    }
    Ok(())
}

/// `tutti model import` options.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub name: Option<String>,
    pub version: Option<String>,
    /// The t5-base folder a stable-audio-tools checkpoint needs.
    pub t5: Option<PathBuf>,
}

/// Checks a published folder and writes a pack at `out` that links to it. Returns the pack's
/// config.
pub fn import(dir: &Path, out: &Path, opts: &ImportOptions) -> Result<StableAudioPack> {
    let canon = |p: &Path| {
        p.canonicalize()
            .map_err(|e| pack_err(p, format!("cannot resolve: {e}")))
    };
    let dir = canon(dir)?;
    let t5 = opts.t5.as_deref().map(canon).transpose()?;
    let paths = detect(&dir, t5.as_deref())?;
    let cfg = read_config(&paths)?;
    check_folder(&paths, &cfg)?;
    // The tokenizer must load with the model's length (a tokenizer file can be broken too).
    FixedTokenizer::load(&paths.tokenizer(), cfg.text_max_length)?;
    let pack = StableAudioPack::for_layout(
        paths.layout,
        &cfg.vae,
        cfg.max_duration_s(),
        opts.name.as_deref(),
        opts.version.as_deref(),
    );
    std::fs::create_dir_all(out).map_err(|e| pack_err(out, format!("cannot create: {e}")))?;
    if out.join(CONFIG_FILE).exists() {
        return Err(pack_err(out, "already holds a model.toml"));
    }
    let mut links = vec![(SOURCE_LINK, dir.clone())];
    if let Some(t5) = t5.filter(|_| paths.layout == Layout::StableAudioTools) {
        links.push((T5_LINK, t5));
    }
    for (name, target) in links {
        crate::families::common::link_source(&target, &out.join(name))?;
    }
    let text = toml::to_string(&pack).map_err(|e| pack_err(out, format!("cannot write: {e}")))?;
    std::fs::write(out.join(CONFIG_FILE), text)
        .map_err(|e| pack_err(out, format!("cannot write model.toml: {e}")))?;
    Ok(pack)
}

impl StableAudioPack {
    /// Reads `dir/model.toml` and the linked source's configs.
    pub fn read(dir: &Path) -> Result<(Self, StableAudioConfig)> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| pack_err(&path, format!("cannot read: {e}")))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| pack_err(&path, format!("invalid: {e}")))?;
        Self::from_table(&table, dir)
    }

    /// From the parsed `model.toml` of the pack at `dir` (the farm's registry parsed it once),
    /// with the linked source's configs.
    pub fn from_table(table: &toml::Table, dir: &Path) -> Result<(Self, StableAudioConfig)> {
        let path = dir.join(CONFIG_FILE);
        let pack: StableAudioPack = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e| pack_err(&path, format!("invalid: {e}")))?;
        if pack.family != FAMILY {
            return Err(pack_err(
                &path,
                format!("family {:?} is not {FAMILY}", pack.family),
            ));
        }
        let cfg = read_config(&pack.paths(dir))?;
        Ok((pack, cfg))
    }

    pub(crate) fn paths(&self, dir: &Path) -> Paths {
        Paths {
            layout: self.model.layout,
            root: dir.join(SOURCE_LINK),
            t5: dir.join(T5_LINK),
        }
    }
}

/// A loaded Stable Audio model: every component on one device.
#[derive(Debug)]
pub struct StableAudioModel {
    pub pack: StableAudioPack,
    /// `name@version`.
    pub model_id: String,
    pub config: StableAudioConfig,
    pub tokenizer: FixedTokenizer,
    /// Always f32 (T5 overflows in fp16).
    pub t5: T5Encoder,
    pub projection: ProjectionModel,
    pub dit: StableAudioDit,
    pub vae: Oobleck,
    /// Where every component runs, and the kind of all but the T5.
    pub device: Device,
    /// The DiT's and projection's kind.
    pub kind: Kind,
    /// The VAE's kind.
    pub vae_kind: Kind,
    /// The denoiser's CUDA graphs (`run.rs`), `None` when off.
    pub(crate) graphs: Option<Mutex<GraphedForward>>,
    _dit_vars: nn::VarStore,
}

impl StableAudioModel {
    /// Loads a pack: the DiT, projection and VAE in `kind` (f32 on CPU; bf16 or f16 on CUDA),
    /// the T5 in f32; the VAE's encoder only `with_encoder` (audio-to-audio).
    pub fn load(
        dir: &Path,
        device: Device,
        kinds: impl Into<Kinds>,
        with_encoder: bool,
    ) -> Result<Self> {
        Self::load_pack(
            dir,
            StableAudioPack::read(dir)?,
            device,
            kinds,
            with_encoder,
        )
    }

    /// [`Self::load`] of the pack at `dir` whose `model.toml` and source configs are `pack`.
    pub fn load_pack(
        dir: &Path,
        (pack, config): (StableAudioPack, StableAudioConfig),
        device: Device,
        kinds: impl Into<Kinds>,
        with_encoder: bool,
    ) -> Result<Self> {
        let Kinds {
            dit: kind,
            vae: vae_kind,
        } = kinds.into();
        let paths = pack.paths(dir);
        let tokenizer = FixedTokenizer::load(&paths.tokenizer(), config.text_max_length)?;
        let t5 = T5Encoder::load(&paths.text_encoder(), device)?;
        let mut vs = nn::VarStore::new(device);
        let dit = StableAudioDit::new(vs.root(), &config.dit);
        let (projection, vae) = match pack.model.layout {
            Layout::Diffusers => {
                let r = &paths.root;
                weights::load_file_strict(
                    &vs,
                    &r.join("transformer/diffusion_pytorch_model.safetensors"),
                    &|_| false,
                )?;
                (
                    ProjectionModel::load(&r.join("projection_model"), device, kind)?,
                    Oobleck::load(&r.join("vae"), device, vae_kind, with_encoder)?,
                )
            }
            Layout::StableAudioTools => {
                let path = paths.root.join("model.safetensors");
                let source = path.display().to_string();
                let file = weights::read_safetensors(&path)?;
                let parts = sat::split_checkpoint(
                    file.tensors,
                    config.vae.downsampling_ratios.len(),
                    &source,
                )?;
                weights::load_strict(&vs, &parts.dit, &source, &|_| false)?;
                let mut src = TensorSource::new(&source, parts.projection, device, kind);
                let projection = ProjectionModel::from_source(&config.projection, &mut src, false)?;
                src.finish()?;
                let mut src = TensorSource::new(&source, parts.vae, device, vae_kind);
                let vae = Oobleck::from_source(&config.vae, &mut src, with_encoder)?;
                src.finish()?;
                (projection, vae)
            }
        };
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        Ok(Self {
            model_id: pack.model_id(),
            pack,
            config,
            tokenizer,
            t5,
            projection,
            dit,
            vae,
            device,
            kind,
            vae_kind,
            graphs: graphed::for_device(device, graphed::enabled_for(device)),
            _dit_vars: vs,
        })
    }
}

/// A pack's VAE alone, decoder only, in `kind` (the worker's background renderer needs no more).
pub fn load_vae(
    dir: &Path,
    device: Device,
    kind: Kind,
) -> Result<(StableAudioPack, StableAudioConfig, Oobleck)> {
    load_vae_pack(dir, StableAudioPack::read(dir)?, device, kind)
}

/// [`load_vae`] of the pack at `dir` whose `model.toml` and source configs are `pack`.
pub fn load_vae_pack(
    dir: &Path,
    (pack, config): (StableAudioPack, StableAudioConfig),
    device: Device,
    kind: Kind,
) -> Result<(StableAudioPack, StableAudioConfig, Oobleck)> {
    let root = pack.paths(dir).root;
    let vae = match pack.model.layout {
        Layout::Diffusers => Oobleck::load(&root.join("vae"), device, kind, false)?,
        Layout::StableAudioTools => {
            let path = root.join("model.safetensors");
            let source = path.display().to_string();
            let file = weights::read_safetensors(&path)?;
            let blocks = config.vae.downsampling_ratios.len();
            let parts = sat::split_checkpoint(file.tensors, blocks, &source)?;
            let mut src = TensorSource::new(&source, parts.vae, device, kind);
            let vae = Oobleck::from_source(&config.vae, &mut src, false)?;
            src.finish()?;
            vae
        }
    };
    Ok((pack, config, vae))
}

/// What `tutti model inspect` prints for a Stable Audio pack.
pub fn inspect(dir: &Path) -> Result<String> {
    let (pack, cfg) = StableAudioPack::read(dir)?;
    let mut out = String::new();
    let m = &pack.model;
    let _ = writeln!(out, "model pack {} (version {})", m.name, m.version);
    let _ = writeln!(out, "  family: {FAMILY} ({:?} layout)", m.layout);
    let _ = writeln!(out, "  folder: {}", dir.display());
    if let Ok(src) = std::fs::read_link(dir.join(SOURCE_LINK)) {
        let _ = writeln!(out, "  source: {}", src.display());
    }
    let v = &cfg.vae;
    let _ = writeln!(
        out,
        "  audio: {} Hz, {} channels, window {:.2} s ({} latent frames x {} samples)",
        v.sampling_rate,
        v.audio_channels,
        cfg.max_duration_s(),
        cfg.dit.sample_size,
        v.hop_length()
    );
    let d = &cfg.dit;
    let _ = writeln!(
        out,
        "  denoiser: StableAudioDiT, {} layers, {} heads x {} (kv heads {}), cross-attention {} <- {}, global {}",
        d.num_layers, d.num_attention_heads, d.attention_head_dim, d.num_key_value_attention_heads,
        d.cross_attention_dim, d.cross_attention_input_dim, d.global_states_input_dim
    );
    let tokens = FixedTokenizer::load(&pack.paths(dir).tokenizer(), cfg.text_max_length)?;
    let _ = writeln!(
        out,
        "  text: T5 ({} layers, d_model {}, {}), {} tokens",
        cfg.t5.num_layers,
        cfg.t5.d_model,
        cfg.t5.feed_forward_proj,
        tokens.max_length()
    );
    let p = &cfg.projection;
    let _ = writeln!(
        out,
        "  conditioning: {} in [{}, {}] s",
        if cfg.seconds_start {
            "seconds_start, seconds_total"
        } else {
            "seconds_total"
        },
        p.min_value,
        p.max_value
    );
    let df = &pack.defaults;
    let _ = writeln!(
        out,
        "  defaults: {}, {} steps ({} per chunk), guidance {}, {} s",
        df.sampler.as_str(),
        df.steps,
        df.chunk_steps,
        df.guidance_scale,
        df.duration_s
    );
    let l = &pack.limits;
    let samplers: Vec<&str> = l.samplers.iter().map(|s| s.as_str()).collect();
    let _ = writeln!(
        out,
        "  limits: {} steps, {} s, samplers {}",
        l.max_steps,
        l.max_duration_s,
        samplers.join(", ")
    );
    Ok(out)
}
