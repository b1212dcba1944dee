//! ACE-Step packs on the farm's path: [`Family`] (prepare a [`DenoiseState`], step any set of
//! them in one DiT forward through the shared step loop, render).
//!
//! A state holds one conditioning tensor, `condition` `[1, L, E]` (f32): the condition
//! encoder's packed sequence for the request's caption, lyrics and (silence) timbre. The
//! unconditional rows of a guided request read the pack's learned null condition broadcast to
//! that shape, as the reference does; the adaptive projected guidance keeps its momentum in the
//! sampler state (`apg_momentum`, `[V, C, T]`), so checkpoints carry it. The latent is
//! `[V, C, T]` with `T = ceil(duration * 25)`; variation `i` starts from the noise of seed
//! `seed + i`. States batch when their frames and condition lengths agree.

use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};
use tutti_shared::job::{Song, SONG_LANGUAGES, SONG_TIME_SIGNATURES};
use tutti_shared::models::ModelFamily;

use super::condition::{ConditionEncoder, ConditionInputs};
use super::dit::Dit;
use super::guidance::{apg, MOMENTUM_KEY};
use super::pack::{AceStepConfig, AceStepPack, MAX_LYRIC_TOKENS, MAX_TEXT_TOKENS};
use super::prompt::{SongText, Task};
use crate::decoders::oobleck::{Oobleck, DECODE_CHUNK_FRAMES};
use crate::device::Kinds;
use crate::families::{common, Family, Render};
use crate::samplers::{self, FlowSpacing, SamplerKind, SamplerState, ScheduleConfig};
use crate::state::{seeded_noise, BatchShape, DenoiseState, GenerationParams};
use crate::step::{seeds, Denoiser, Rows};
use crate::text::qwen3::Qwen3Encoder;
use crate::text::qwen3_tokenizer::Qwen3Tokenizer;
use crate::{ModelError, Result};

/// The state's conditioning tensor.
const CONDITION: &str = "condition";
/// Most characters of lyrics (the coordinator's rule; the model truncates at its token limit).
const MAX_LYRICS_CHARS: usize = 4096;
/// The language of a song that names none.
const DEFAULT_LANGUAGE: &str = "en";

fn bad(m: String) -> ModelError {
    ModelError::Input(m)
}

/// Every network of a pack on one device.
struct Nets {
    prompt_tokens: Qwen3Tokenizer,
    lyric_tokens: Qwen3Tokenizer,
    text: Qwen3Encoder,
    condition: ConditionEncoder,
    dit: Dit,
    vae: Oobleck,
}

/// A loaded ACE-Step pack. `Send + Sync`: the networks sit behind a mutex.
pub struct AceStep {
    pack: AceStepPack,
    config: AceStepConfig,
    device: Device,
    kinds: Kinds,
    model_id: String,
    nets: Mutex<Nets>,
}

impl std::fmt::Debug for AceStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AceStep")
            .field("model", &self.model_id)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The kind of the text and condition encoders: the DiT's, except that half precision is f32
/// (the lyric encoder's last projection overflows f16 on ordinary lyrics).
fn encoder_kind(dit: Kind) -> Kind {
    if dit == Kind::Half {
        Kind::Float
    } else {
        dit
    }
}

impl AceStep {
    /// Loads the pack at `dir` (its parsed `model.toml` in `table`): the DiT in `kinds.dit`,
    /// the VAE in `kinds.vae`, the encoders as [`encoder_kind`] says.
    pub fn load(
        table: &toml::Table,
        dir: &std::path::Path,
        device: Device,
        kinds: Kinds,
    ) -> Result<Self> {
        let (pack, config) = AceStepPack::from_table(table, dir)?;
        let root = pack.root(dir);
        let enc = encoder_kind(kinds.dit);
        let tok = root.join("tokenizer/tokenizer.json");
        let nets = Nets {
            prompt_tokens: Qwen3Tokenizer::load(&tok, MAX_TEXT_TOKENS)?,
            lyric_tokens: Qwen3Tokenizer::load(&tok, MAX_LYRIC_TOKENS)?,
            text: Qwen3Encoder::load(&root.join("text_encoder"), device, enc)?,
            condition: ConditionEncoder::load(&root.join("condition_encoder"), device, enc)?,
            dit: Dit::load(&root.join("transformer"), device, kinds.dit)?,
            vae: Oobleck::load(&root.join("vae"), device, kinds.vae, false)?,
        };
        Ok(Self {
            model_id: pack.model_id(),
            pack,
            config,
            device,
            kinds,
            nets: Mutex::new(nets),
        })
    }

    pub fn pack(&self) -> &AceStepPack {
        &self.pack
    }

    fn lock(&self) -> MutexGuard<'_, Nets> {
        // Inference only: a panic inside libtorch leaves no torn state behind.
        self.nets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn schedule(&self) -> ScheduleConfig {
        ScheduleConfig {
            shift: self.pack.ace_step.shift,
            flow_spacing: FlowSpacing::Unit,
            ..Default::default()
        }
    }

    fn song<'a>(&self, p: &'a GenerationParams) -> SongText<'a> {
        let (lyrics, language, time_signature) = match &p.song {
            Some(s) => (
                s.lyrics.as_str(),
                if s.language.is_empty() {
                    DEFAULT_LANGUAGE
                } else {
                    s.language.as_str()
                },
                s.time_signature,
            ),
            None => ("", DEFAULT_LANGUAGE, None),
        };
        SongText {
            task: Task::Text2Music,
            caption: &p.prompt,
            lyrics,
            language,
            controls: &p.controls,
            time_signature,
        }
    }

    /// The packed condition `[1, L, E]` (f32) of a request.
    fn condition(&self, nets: &Nets, p: &GenerationParams) -> Result<Tensor> {
        let song = self.song(p);
        let ids = |t: &Qwen3Tokenizer, text: &str| -> Result<Tensor> {
            Ok(Tensor::from_slice(&t.encode(text)?)
                .view([1, -1])
                .to_device(self.device))
        };
        let text_ids = ids(&nets.prompt_tokens, &song.caption_text())?;
        let lyric_ids = ids(&nets.lyric_tokens, &song.lyric_text())?;
        let text = nets.text.forward(&text_ids, None)?;
        let lyrics = nets.text.embed(&lyric_ids)?;
        let reference = nets.condition.silence(self.config.timbre_frames());
        let ones = |n: i64| Tensor::ones([1, n], (Kind::Bool, self.device));
        let (cond, _) = nets.condition.forward(&ConditionInputs {
            text: &text,
            text_mask: &ones(text.size()[1]),
            lyrics: &lyrics,
            lyric_mask: &ones(lyrics.size()[1]),
            reference: &reference,
        })?;
        Ok(cond.to_kind(Kind::Float))
    }

    /// The DiT's context for a text-to-music request of `frames`: the encoded silence as the
    /// source, a chunk mask of ones (everything is generated), `[1, T, 2C]`.
    fn context(&self, nets: &Nets, frames: i64) -> Tensor {
        let src = nets.condition.silence(frames);
        let mask = Tensor::ones_like(&src);
        Tensor::cat(&[src, mask], -1)
    }
}

fn guided(pack: &AceStepPack, p: &GenerationParams) -> bool {
    !pack.ace_step.turbo && p.guidance_scale > 1.0
}

impl Family for AceStep {
    fn family(&self) -> ModelFamily {
        ModelFamily::AceStep
    }

    fn sample_rate(&self) -> u32 {
        self.config.vae.sampling_rate as u32
    }

    fn channels(&self) -> u16 {
        self.config.vae.audio_channels as u16
    }

    fn default_params(&self, prompt: &str, duration_s: f32) -> GenerationParams {
        let d = &self.pack.defaults;
        let mut p = GenerationParams::with_defaults(
            prompt,
            duration_s,
            d.sampler,
            d.steps,
            d.guidance_scale,
        );
        p.song = Some(Song {
            language: DEFAULT_LANGUAGE.into(),
            ..Default::default()
        });
        p
    }

    fn validate(&self, p: &GenerationParams) -> Result<()> {
        let l = &self.pack.limits;
        common::check_counts(p, l.max_steps)?;
        common::check_guidance(p)?;
        let d = f64::from(p.controls.duration_s);
        if !d.is_finite() || d <= 0.0 || d > l.max_duration_s {
            return Err(bad(format!(
                "duration must be in (0, {}] seconds for model {}, got {d}",
                l.max_duration_s, self.model_id
            )));
        }
        if p.sampler != SamplerKind::FlowEuler {
            return Err(bad(format!(
                "sampler {} is not one model {} runs (flow_euler)",
                p.sampler.as_str(),
                self.model_id
            )));
        }
        if self.pack.ace_step.turbo && p.guidance_scale > 1.0 {
            return Err(bad(format!(
                "model {} runs without guidance (distilled); guidance_scale at most 1",
                self.model_id
            )));
        }
        if !p.negative_prompt.is_empty() {
            return Err(bad(format!(
                "model {} takes no negative prompt (it guides with a learned null condition)",
                self.model_id
            )));
        }
        if let Some(s) = &p.song {
            if s.lyrics.chars().count() > MAX_LYRICS_CHARS {
                return Err(bad(format!(
                    "lyrics must be at most {MAX_LYRICS_CHARS} characters"
                )));
            }
            if !s.language.is_empty() && !SONG_LANGUAGES.contains(&s.language.as_str()) {
                return Err(bad(format!(
                    "vocal language {:?} is not one of the model's",
                    s.language
                )));
            }
            if let Some(t) = s
                .time_signature
                .filter(|t| !SONG_TIME_SIGNATURES.contains(t))
            {
                return Err(bad(format!("time signature must be 2, 3, 4 or 6, got {t}")));
            }
        }
        Ok(())
    }

    fn prepare(&self, p: &GenerationParams) -> Result<DenoiseState> {
        self.validate(p)?;
        let nets = self.lock();
        let _g = tch::no_grad_guard();
        let cond = self.condition(&nets, p)?;
        let frames = self.config.frames(f64::from(p.controls.duration_s));
        let c = self.config.dit.latent_channels;
        let noise: Vec<Tensor> = seeds(p)
            .iter()
            .map(|&s| seeded_noise(s, &[1, c, frames]))
            .collect();
        let schedule = self.schedule();
        let sampler = samplers::build(p.sampler, &schedule, p.steps)?;
        Ok(DenoiseState {
            params: p.clone(),
            step: 0,
            model: self.model_id.clone(),
            schedule,
            sampler,
            latent: Tensor::cat(&noise, 0).to_device(self.device),
            cond: [(CONDITION.to_string(), cond)].into_iter().collect(),
            sampler_state: SamplerState::default(),
        })
    }

    fn batch_shape(&self, state: &DenoiseState) -> BatchShape {
        BatchShape {
            frames: state.latent.size()[2],
            text_tokens: state.cond.get(CONDITION).map_or(0, |c| c.size()[1]),
        }
    }

    /// Its rows through the DiT: per row, the patch sequence's activations across the block's
    /// widest point (the MLP) and its attention scores over itself and the condition.
    fn forward_bytes(&self, state: &DenoiseState) -> usize {
        let s = &self.config.dit.stack;
        let shape = self.batch_shape(state);
        let rows = state.params.variations as i64
            * if guided(&self.pack, &state.params) {
                2
            } else {
                1
            };
        let tokens = (shape.frames + 1) / self.config.dit.patch.max(1);
        let per_row = tokens * (8 * s.hidden + 3 * s.intermediate)
            + s.heads * tokens * (tokens + shape.text_tokens);
        (rows * per_row) as usize * self.kinds.dit.elt_size_in_bytes()
    }

    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>> {
        let nets = self.lock();
        render_state(
            &nets.vae,
            self.kinds.vae,
            self.device,
            &self.model_id,
            state,
        )
    }
}

impl Denoiser for AceStep {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn device(&self) -> Device {
        self.device
    }

    fn guided(&self, p: &GenerationParams) -> bool {
        guided(&self.pack, p)
    }

    /// Rows `[n, C, T]` -> the DiT's `[n, T, C]`, each reading its state's condition (row 1)
    /// or the null condition in its shape (row 0), with the text-to-music context.
    fn forward(&self, rows: &[Rows<'_>]) -> Result<Tensor> {
        let Some(first) = rows.first() else {
            return Err(bad("a forward needs at least one state".into()));
        };
        let shape = self.batch_shape(first.state);
        let nets = self.lock();
        let _g = tch::no_grad_guard();
        let kind = nets.dit.kind();
        let (mut xs, mut ts, mut encs, mut ctxs) = (vec![], vec![], vec![], vec![]);
        for r in rows {
            if self.batch_shape(r.state) != shape {
                return Err(bad(format!(
                    "states of shapes {shape:?} and {:?} cannot share a forward",
                    self.batch_shape(r.state)
                )));
            }
            let n = r.x.size()[0];
            let cond = r
                .state
                .cond(CONDITION)?
                .to_device(self.device)
                .to_kind(kind);
            let null = nets
                .condition
                .null_condition()
                .to_kind(kind)
                .expand_as(&cond);
            encs.push(Tensor::cat(&[null, cond], 0).index_select(0, &r.cond_rows));
            xs.push(r.x.transpose(1, 2));
            ts.push(r.timestep.shallow_clone());
            ctxs.push(self.context(&nets, shape.frames).expand([n, -1, -1], false));
        }
        let enc = nets.dit.embed_condition(&Tensor::cat(&encs, 0));
        let v = nets.dit.forward(
            &Tensor::cat(&xs, 0),
            &Tensor::cat(&ts, 0),
            &enc,
            &Tensor::cat(&ctxs, 0),
        )?;
        Ok(v.transpose(1, 2))
    }

    /// Adaptive projected guidance, its momentum in the sampler state.
    fn guide(&self, state: &mut DenoiseState, uncond: &Tensor, cond: &Tensor) -> Tensor {
        let previous = state.sampler_state.tensors.get(MOMENTUM_KEY);
        let previous = previous.map(|m| m.to_device(cond.device()));
        let (guided, momentum) = apg(
            cond,
            uncond,
            state.params.guidance_scale,
            previous.as_ref(),
            2,
        );
        state
            .sampler_state
            .tensors
            .insert(MOMENTUM_KEY.to_string(), momentum);
        guided
    }
}

/// A pack's VAE decoder alone, for a thread that only renders.
pub struct AceStepRenderer {
    model_id: String,
    config: AceStepConfig,
    device: Device,
    kind: Kind,
    vae: Oobleck,
}

impl AceStepRenderer {
    pub fn load(
        table: &toml::Table,
        dir: &std::path::Path,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let (pack, config) = AceStepPack::from_table(table, dir)?;
        let vae = Oobleck::load(&pack.root(dir).join("vae"), device, kind, false)?;
        Ok(Self {
            model_id: pack.model_id(),
            config,
            device,
            kind,
            vae,
        })
    }
}

impl Render for AceStepRenderer {
    fn sample_rate(&self) -> u32 {
        self.config.vae.sampling_rate as u32
    }

    fn channels(&self) -> u16 {
        self.config.vae.audio_channels as u16
    }

    /// As [`AceStep::render`], bit for bit.
    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>> {
        render_state(&self.vae, self.kind, self.device, &self.model_id, state)
    }
}

/// The finished latent decoded in windows of [`DECODE_CHUNK_FRAMES`] (so a 10-minute song
/// decodes within a worker's memory), cropped to the asked duration, interleaved; levels are
/// the worker's gain stage's (not the reference's peak normalisation).
fn render_state(
    vae: &Oobleck,
    kind: Kind,
    device: Device,
    model_id: &str,
    state: &DenoiseState,
) -> Result<Vec<Vec<f32>>> {
    common::check_model(state, model_id)?;
    if !state.is_done() {
        return Err(bad(format!(
            "the state is at step {} of {}",
            state.step,
            state.total_steps()
        )));
    }
    let _g = tch::no_grad_guard();
    let latent = state.latent.to_device(device).to_kind(kind);
    let rate = vae.config().sampling_rate as f64;
    let frames = (f64::from(state.params.controls.duration_s) * rate).floor() as i64;
    let audio = vae.decode_span(&latent, 0, frames, DECODE_CHUNK_FRAMES)?;
    common::finish_clips(&audio, frames, "vae")
}
