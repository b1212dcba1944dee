//! Validation of a SubmitGenerationRequest into the job the coordinator stores. Every rule
//! names its field; nothing is stored unless every rule holds.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;
use tutti_proto::v1 as pb;
use tutti_shared::job::{JobSpec, ModelRef, Priority, SamplerKind};
use tutti_shared::models::{ModelInfo, ModelInput, ModelRegistry};
use tutti_shared::prompt::{self, StructuredPrompt, STRUCTURE_WORDS};

use crate::error::{Error, Result};
use crate::text::{self, quote, TextRule};

pub const MAX_PROMPT_CHARS: usize = 1000;
pub const MIN_DURATION_S: f32 = 1.0;
pub const MAX_GUIDANCE: f32 = 20.0;
pub const MAX_VARIATIONS: u32 = 4;
pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_KEY: usize = 63;
pub const MAX_LABEL_VALUE: usize = 256;
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
pub const MAX_LIST_ITEMS: usize = 8;
pub const MAX_WORD_CHARS: usize = 40;
pub const TEMPO_RANGE: (f32, f32) = (40.0, 240.0);
pub const MAX_MODEL_NAME: usize = 128;

/// The request's free text: prompts, the negative prompt, the structured prompt's extra text.
const PROMPT: TextRule = TextRule::lines(MAX_PROMPT_CHARS);
/// One word or short phrase of a structured prompt.
const WORD: TextRule = TextRule::line(MAX_WORD_CHARS);

/// A request that passed every rule, ready to store.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub spec: JobSpec,
    pub priority: Priority,
    pub labels: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// Hash of the request as sent (before defaults), to tell a retry from a conflicting reuse.
    pub request_hash: String,
    /// The request with defaults filled in and the seed chosen, as GetJob reports it.
    pub accepted: pb::SubmitGenerationRequest,
    pub chunk_steps: u32,
    /// The init clip of an audio-to-audio request, to store before the job.
    pub init_clip: Option<crate::init_audio::InitClip>,
    /// `tt_<id>` of the API key that submitted it, for usage records (`None` with auth off).
    pub api_key: Option<String>,
}

/// Models and their tokenizers, for the rules that depend on the model.
pub struct Validator {
    registry: ModelRegistry,
    default_model: Option<String>,
    chunk_steps_override: u32,
    tokenizers: HashMap<(String, String), Tokenizer>,
}

impl Validator {
    pub fn new(
        registry: ModelRegistry,
        default_model: Option<String>,
        chunk_steps_override: u32,
    ) -> Result<Self> {
        let mut tokenizers = HashMap::new();
        for m in registry.all() {
            if let Some(path) = m.tokenizer_path() {
                let mut tok = Tokenizer::from_file(&path).map_err(|e| {
                    Error::Internal(format!("loading tokenizer {}: {e}", path.display()))
                })?;
                // Count every token: a pack's tokenizer.json may truncate, which would hide
                // an over-long prompt instead of rejecting it.
                tok.with_truncation(None)
                    .map_err(|e| Error::Internal(format!("tokenizer {}: {e}", path.display())))?;
                tok.with_padding(None);
                tokenizers.insert((m.name.clone(), m.version.clone()), tok);
            }
        }
        Ok(Self {
            registry,
            default_model,
            chunk_steps_override,
            tokenizers,
        })
    }

    pub fn registry(&self) -> &ModelRegistry {
        &self.registry
    }

    /// The name a request without a model gets: the configured default, else the only pack's,
    /// else `tutti-mini`.
    pub fn default_model_name(&self) -> String {
        match &self.default_model {
            Some(n) => n.clone(),
            None => {
                let names: Vec<&str> = self.registry.names().collect();
                match names.as_slice() {
                    [only] => (*only).to_string(),
                    _ => "tutti-mini".to_string(),
                }
            }
        }
    }

    /// The prompt-length rule in the model's tokens, where the validator counts them.
    pub fn max_prompt_tokens(&self, model: &ModelInfo) -> Option<usize> {
        self.tokenizers
            .contains_key(&(model.name.clone(), model.version.clone()))
            .then_some(model.limits.max_prompt_tokens)
    }

    /// The model a request's `model` names (the default one when it names none).
    pub(crate) fn model(&self, r: Option<&pb::ModelRef>) -> Result<&ModelInfo> {
        if let Some(m) = r {
            text::check("model.name", &m.name, TextRule::line(MAX_MODEL_NAME))?;
            text::check("model.version", &m.version, TextRule::line(MAX_MODEL_NAME))?;
        }
        let (name, version) = match r {
            Some(m) if !m.name.is_empty() => (m.name.clone(), m.version.clone()),
            Some(m) if !m.version.is_empty() => {
                return Err(Error::invalid(
                    "model.name",
                    "required when model.version is set",
                ))
            }
            _ => (self.default_model_name(), String::new()),
        };
        self.registry.resolve(&name, &version).ok_or_else(|| {
            if version.is_empty() {
                Error::NotFound(format!("model {} not found", quote(&name)))
            } else {
                Error::NotFound(format!(
                    "model {} version {} not found",
                    quote(&name),
                    quote(&version)
                ))
            }
        })
    }

    fn check_tokens(&self, model: &ModelInfo, field: &str, text: &str) -> Result<()> {
        if let Some(tok) = self
            .tokenizers
            .get(&(model.name.clone(), model.version.clone()))
        {
            let n = tok
                .encode(text, true)
                .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?
                .len();
            let max = model.limits.max_prompt_tokens;
            if n > max {
                return Err(Error::invalid(
                    field,
                    format!(
                        "must be at most {max} tokens for model {} (got {n})",
                        model.name
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn validate(&self, req: &pb::SubmitGenerationRequest) -> Result<NewJob> {
        let request_hash = hex::encode(Sha256::digest(req.encode_to_vec()));
        let model = self.model(req.model.as_ref())?;

        let prompt_text = match &req.prompt_kind {
            Some(pb::submit_generation_request::PromptKind::Prompt(p)) => {
                text::check("prompt", p, PROMPT.required())?;
                p.trim().to_string()
            }
            Some(pb::submit_generation_request::PromptKind::Structured(s)) => {
                let text = prompt::build(&structured(s)?);
                text::check("structured", &text, PROMPT.required())?;
                text
            }
            None => {
                return Err(Error::invalid(
                    "prompt",
                    "required (a prompt or a structured prompt)",
                ))
            }
        };
        self.check_tokens(model, "prompt", &prompt_text)?;
        text::check("negative_prompt", &req.negative_prompt, PROMPT)?;
        if !req.negative_prompt.trim().is_empty() && !model.takes(ModelInput::NegativePrompt) {
            return Err(Error::invalid(
                "negative_prompt",
                format!(
                    "model {} ({} family) does not take a negative prompt",
                    model.name,
                    model.family.as_str()
                ),
            ));
        }
        self.check_tokens(model, "negative_prompt", &req.negative_prompt)?;
        if req.guidance_scale.is_some_and(|g| g > 1.0) && !model.takes(ModelInput::Guidance) {
            return Err(Error::invalid(
                "guidance_scale",
                format!(
                    "model {} runs without guidance (distilled); at most 1",
                    model.name
                ),
            ));
        }
        let song = crate::song::check(model, req)?;

        let init_clip = crate::init_audio::check(model, req)?;
        // A repaint is as long as its song unless asked otherwise.
        let clip_length = init_clip
            .as_ref()
            .filter(|_| req.repaint_start_seconds.is_some())
            .map(|c| c.seconds);
        let duration_s = req
            .duration_seconds
            .or(clip_length)
            .unwrap_or(model.defaults.duration_s);
        let max_d = model.limits.max_duration_s;
        if !duration_s.is_finite() || !(MIN_DURATION_S..=max_d).contains(&duration_s) {
            return Err(Error::invalid(
                "duration_seconds",
                format!(
                    "must be between {MIN_DURATION_S} and {max_d} seconds for model {}",
                    model.name
                ),
            ));
        }
        let steps = req.steps.unwrap_or(model.defaults.steps);
        if !(1..=model.limits.max_steps).contains(&steps) {
            return Err(Error::invalid(
                "steps",
                format!(
                    "must be between 1 and {} for model {}",
                    model.limits.max_steps, model.name
                ),
            ));
        }
        let guidance_scale = req.guidance_scale.unwrap_or(model.defaults.guidance_scale);
        if !guidance_scale.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance_scale) {
            return Err(Error::invalid(
                "guidance_scale",
                format!("must be between 0 and {MAX_GUIDANCE}"),
            ));
        }
        let sampler = match pb::Sampler::try_from(req.sampler) {
            Ok(s) => Option::<SamplerKind>::from(s).unwrap_or(model.defaults.sampler),
            Err(_) => return Err(Error::invalid("sampler", "unknown sampler")),
        };
        if !model.supports(sampler) {
            // The family decides: a mel pack runs the deterministic samplers, a Stable Audio
            // pack the ones its schedule was made for (its model.toml lists them).
            let names: Vec<&str> = model.samplers().iter().map(|s| s.as_str()).collect();
            return Err(Error::invalid(
                "sampler",
                format!(
                    "{} is not available for model {} ({} family; it runs {})",
                    sampler.as_str(),
                    model.name,
                    model.family.as_str(),
                    names.join(", ")
                ),
            ));
        }
        let (format, delivery) = crate::delivery::check(req, model)?;
        let variations = if req.variations == 0 {
            1
        } else {
            req.variations
        };
        if variations > MAX_VARIATIONS {
            return Err(Error::invalid(
                "variations",
                format!("must be between 1 and {MAX_VARIATIONS}"),
            ));
        }
        let priority: Priority = match pb::Priority::try_from(req.priority) {
            Ok(p) => p.into(),
            Err(_) => {
                return Err(Error::invalid(
                    "priority",
                    "must be interactive, standard or batch",
                ))
            }
        };
        let idempotency_key = match req.idempotency_key.as_str() {
            "" => None,
            k if k.len() > MAX_IDEMPOTENCY_KEY => {
                return Err(Error::invalid(
                    "idempotency_key",
                    format!("must be at most {MAX_IDEMPOTENCY_KEY} bytes"),
                ))
            }
            k => {
                text::check("idempotency_key", k, TextRule::line(MAX_IDEMPOTENCY_KEY))?;
                Some(k.to_string())
            }
        };
        let labels = labels(&req.labels)?;
        // Seeds stay within i64 so that every store and libtorch take them as they are.
        let seed = req.seed.unwrap_or_else(|| rand::random::<u64>() >> 1);
        if seed > i64::MAX as u64 {
            return Err(Error::invalid(
                "seed",
                format!("must be at most {}", i64::MAX),
            ));
        }

        let structured_prompt = match &req.prompt_kind {
            Some(pb::submit_generation_request::PromptKind::Structured(s)) => Some(s),
            _ => None,
        };
        let controls = controls(&prompt_text, duration_s, structured_prompt);

        let model_ref = ModelRef {
            name: model.name.clone(),
            version: model.version.clone(),
        };
        let mut accepted = req.clone();
        accepted.duration_seconds = Some(duration_s);
        accepted.steps = Some(steps);
        accepted.guidance_scale = Some(guidance_scale);
        accepted.seed = Some(seed);
        accepted.variations = variations;
        accepted.sampler = pb::Sampler::from(sampler) as i32;
        crate::delivery::accept(&mut accepted, format, &delivery);
        accepted.priority = pb::Priority::from(priority) as i32;
        accepted.model = Some(pb::ModelRef {
            name: model_ref.name.clone(),
            version: model_ref.version.clone(),
        });

        // The clip lives in the blob store; the accepted request keeps its strength only.
        accepted.init_audio = Vec::new();
        accepted.init_strength = init_clip
            .as_ref()
            .filter(|_| req.repaint_start_seconds.is_none())
            .map(|c| c.init.strength);

        let chunk_steps = match self.chunk_steps_override {
            0 => model.defaults.chunk_steps.max(1),
            k => k,
        };
        Ok(NewJob {
            spec: JobSpec {
                model: model_ref,
                prompt: prompt_text,
                negative_prompt: req.negative_prompt.trim().to_string(),
                controls,
                duration_s,
                seed,
                steps,
                guidance_scale,
                sampler,
                variations,
                format,
                delivery,
                trace_context: Default::default(),
                init_audio: init_clip.as_ref().map(|c| c.init.clone()),
                song,
            },
            priority,
            labels,
            idempotency_key,
            request_hash,
            accepted,
            chunk_steps,
            init_clip,
            api_key: None,
        })
    }
}

/// A structured prompt under the same rules as a submission, rendered by the prompt builder:
/// the text and the controls the model would get (RenderPrompt).
pub fn render_structured(s: &pb::StructuredPrompt) -> Result<(String, prompt::Controls)> {
    let text = prompt::build(&structured(s)?);
    let c = controls(&text, 0.0, Some(s));
    Ok((text, c))
}

/// The numeric controls of a prompt: parsed from its text, and for a structured prompt its
/// tempo and key fields, which are the controls themselves rather than a guess from the text.
fn controls(
    text: &str,
    duration_s: f32,
    structured: Option<&pb::StructuredPrompt>,
) -> prompt::Controls {
    let mut c = prompt::parse_controls(text, duration_s);
    if let Some(s) = structured {
        if let Some(bpm) = s.tempo_bpm {
            c.bpm = Some(bpm);
        }
        if let Some((k, m)) = prompt::parse_key(&s.key) {
            c.key = Some(k);
            c.mode = m.or(c.mode);
        }
    }
    c
}

/// The prompt rule (`text.rs`): required, multi-line, at most `MAX_PROMPT_CHARS`.
pub(crate) fn check_text(field: &str, value: &str) -> Result<()> {
    text::check(field, value, PROMPT.required())
}

fn word(field: &str, s: &str) -> Result<String> {
    text::check(field, s, WORD)?;
    Ok(s.trim().to_string())
}

pub(crate) fn structured(s: &pb::StructuredPrompt) -> Result<StructuredPrompt> {
    if let Some(bpm) = s.tempo_bpm {
        if !bpm.is_finite() || !(TEMPO_RANGE.0..=TEMPO_RANGE.1).contains(&bpm) {
            return Err(Error::invalid(
                "structured.tempo_bpm",
                format!(
                    "must be between {} and {} BPM",
                    TEMPO_RANGE.0, TEMPO_RANGE.1
                ),
            ));
        }
    }
    text::check("structured.key", &s.key, WORD)?;
    let key = match s.key.trim() {
        "" => None,
        k => Some(prompt::parse_key(k).ok_or_else(|| {
            Error::invalid(
                "structured.key",
                "must be a pitch (C, C#, Db, ... B) optionally followed by major or minor",
            )
        })?),
    };
    if s.instruments.len() > MAX_LIST_ITEMS {
        return Err(Error::invalid(
            "structured.instruments",
            format!("at most {MAX_LIST_ITEMS} instruments"),
        ));
    }
    if s.structure.len() > MAX_LIST_ITEMS {
        return Err(Error::invalid(
            "structured.structure",
            format!("at most {MAX_LIST_ITEMS} words"),
        ));
    }
    let mut structure = Vec::new();
    for w in &s.structure {
        let w = w.trim().to_ascii_lowercase();
        if !STRUCTURE_WORDS.contains(&w.as_str()) {
            return Err(Error::invalid(
                "structured.structure",
                format!("{} is not one of {}", quote(&w), STRUCTURE_WORDS.join(", ")),
            ));
        }
        structure.push(w);
    }
    Ok(StructuredPrompt {
        genre: word("structured.genre", &s.genre)?,
        subgenre: word("structured.subgenre", &s.subgenre)?,
        mood: word("structured.mood", &s.mood)?,
        tempo_bpm: s.tempo_bpm,
        key,
        instruments: s
            .instruments
            .iter()
            .map(|i| word("structured.instruments", i))
            .collect::<Result<_>>()?,
        structure,
        extra: {
            text::check("structured.extra", &s.extra, PROMPT)?;
            s.extra.trim().to_string()
        },
    })
}

/// Label keys: 1-63 characters of `a-z 0-9 _ . - /`, starting with a letter or digit.
fn labels(raw: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if raw.len() > MAX_LABELS {
        return Err(Error::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && k.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-' | '/')
            });
        if !key_ok {
            return Err(Error::invalid(
                "labels",
                format!("key {}: keys are 1-{MAX_LABEL_KEY} characters of a-z, 0-9, _ . - /, starting with a letter or digit", quote(k)),
            ));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(Error::invalid(
                format!("labels[{k:?}]"),
                format!("values are at most {MAX_LABEL_VALUE} bytes"),
            ));
        }
        text::check(
            &format!("labels[{k:?}]"),
            v,
            TextRule::line(MAX_LABEL_VALUE),
        )?;
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}
