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
use crate::decoders::oobleck::Oobleck;
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
/// A repaint's DiT context `[1, T, 2C]` (the song's latents with silence in the span, and the
/// span's mask); text-to-music states have none (the silence and a mask of ones).
const CONTEXT: &str = "context";
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
            // With its encoder: a repaint encodes the song.
            vae: Oobleck::load(&root.join("vae"), device, kinds.vae, true)?,
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

    fn song<'a>(&self, p: &'a GenerationParams, task: Task) -> SongText<'a> {
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
            task,
            caption: &p.prompt,
            lyrics,
            language,
            controls: &p.controls,
            time_signature,
        }
    }

    /// The packed condition `[1, L, E]` (f32) of a request.
    fn condition(&self, nets: &Nets, p: &GenerationParams, task: Task) -> Result<Tensor> {
        let song = self.song(p, task);
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
        if p.song.as_ref().is_some_and(|s| s.repaint.is_some()) {
            return Err(bad(format!(
                "model {}: a repaint needs the song (init audio)",
                self.model_id
            )));
        }
        let nets = self.lock();
        self.state(&nets, p, Task::Text2Music, None)
    }

    /// Repaint: `audio` (`[channels, samples]` at 48 kHz; mono is spread to both channels) is the
    /// song, cropped or zero-padded to the asked duration and encoded by the VAE (its posterior
    /// mean, so a job is a function of its request: diffusers samples the posterior). Inside the
    /// span its latents are replaced by the encoded silence and the chunk mask is 1, outside the
    /// song is kept and the mask is 0, as diffusers builds the context; the DiT then regenerates
    /// the whole latent from noise with the repaint instruction. `strength` is not used.
    fn prepare_from_audio(
        &self,
        p: &GenerationParams,
        audio: &Tensor,
        _strength: f64,
    ) -> Result<DenoiseState> {
        self.validate(p)?;
        let Some(span) = p.song.as_ref().and_then(|s| s.repaint) else {
            return Err(bad(format!(
                "model {} takes a clip only to repaint a span of it (repaint_start_seconds)",
                self.model_id
            )));
        };
        let channels = self.config.vae.audio_channels;
        let (ch, len) = audio.size2().map_err(|_| {
            bad(format!(
                "repaint audio must be [channels, samples], got {:?}",
                audio.size()
            ))
        })?;
        if ch != 1 && ch != channels {
            return Err(bad(format!(
                "repaint audio has {ch} channels; model {} takes 1 or {channels}",
                self.model_id
            )));
        }
        let nets = self.lock();
        let _g = tch::no_grad_guard();
        let frames = self.config.frames(f64::from(p.controls.duration_s));
        let samples = frames * self.config.vae.hop_length();
        let clip = audio.to_kind(Kind::Float).narrow(1, 0, len.min(samples));
        let clip = clip.constant_pad_nd([0, samples - clip.size()[1]]);
        let clip = clip
            .expand([channels, samples], false)
            .unsqueeze(0)
            .to_device(self.device)
            .to_kind(self.kinds.vae);
        let (mean, _) = nets.vae.encode(&clip)?;
        let src = mean.to_kind(Kind::Float).transpose(1, 2);
        let c = self.config.dit.latent_channels;
        if src.size() != [1, frames, c] {
            return Err(bad(format!(
                "the vae encodes the song to {:?}, the DiT takes [1, {frames}, {c}]",
                src.size()
            )));
        }
        // diffusers' rounding and clamping of the span to latent frames.
        let lps = self.config.latents_per_second();
        let start = ((f64::from(span.start_s) * lps) as i64).clamp(0, frames - 1);
        let end = match span.end_s {
            Some(e) if e > 0.0 => (f64::from(e) * lps) as i64,
            _ => frames,
        }
        .clamp(start + 1, frames);
        let frame = Tensor::arange(frames, (Kind::Int64, self.device));
        let inside = frame
            .ge(start)
            .logical_and(&frame.lt(end))
            .view([1, frames, 1]);
        let silence = nets.condition.silence(frames).to_kind(Kind::Float);
        let src = silence.where_self(&inside, &src);
        let mask = inside.to_kind(Kind::Float).expand([1, frames, c], false);
        let context = Tensor::cat(&[src, mask], -1);
        self.state(&nets, p, Task::Repaint, Some(context))
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
        common::render_oobleck(
            &nets.vae,
            self.kinds.vae,
            self.device,
            &self.model_id,
            state,
        )
    }
}

impl AceStep {
    /// Step 0 of a request: its condition, the seeded noise of each variation, the schedule;
    /// `context` for a repaint.
    fn state(
        &self,
        nets: &Nets,
        p: &GenerationParams,
        task: Task,
        context: Option<Tensor>,
    ) -> Result<DenoiseState> {
        let _g = tch::no_grad_guard();
        let cond = self.condition(nets, p, task)?;
        let frames = self.config.frames(f64::from(p.controls.duration_s));
        let c = self.config.dit.latent_channels;
        let noise: Vec<Tensor> = seeds(p)
            .iter()
            .map(|&s| seeded_noise(s, &[1, c, frames]))
            .collect();
        let schedule = self.schedule();
        let sampler = samplers::build(p.sampler, &schedule, p.steps)?;
        let mut named = std::collections::BTreeMap::new();
        named.insert(CONDITION.to_string(), cond);
        if let Some(ctx) = context {
            named.insert(CONTEXT.to_string(), ctx);
        }
        Ok(DenoiseState {
            params: p.clone(),
            step: 0,
            model: self.model_id.clone(),
            schedule,
            sampler,
            latent: Tensor::cat(&noise, 0).to_device(self.device),
            cond: named,
            sampler_state: SamplerState::default(),
            noise_ahead: None,
        })
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
            encs.push(r.select_cond(&Tensor::cat(&[null, cond], 0)));
            xs.push(r.x.transpose(1, 2));
            ts.push(r.timestep.shallow_clone());
            let context = match r.state.cond.get(CONTEXT) {
                Some(c) => c.to_device(self.device),
                None => self.context(&nets, shape.frames),
            };
            ctxs.push(context.to_kind(kind).expand([n, -1, -1], false));
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
        common::render_oobleck(&self.vae, self.kind, self.device, &self.model_id, state)
    }
}
