//! The model catalogue (`ListModels`, `GetModel`): each pack the farm serves with the limits,
//! defaults, samplers and request fields the request rules apply to it, read from the
//! validator itself (its registry, its default model, its constants), so the list and the rules
//! never disagree; and whether live workers can run it now, from their heartbeats.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use tutti_proto::v1 as pb;
use tutti_shared::job::SONG_LANGUAGES;
use tutti_shared::models::{ModelInfo, ModelInput};

use crate::api::GenerationService;
use crate::auth::Caller;
use crate::error::Result;
use crate::store::views::WorkerRow;
use crate::validate::{self, Validator};

/// The API value of a request field a model takes.
pub fn input_pb(i: ModelInput) -> pb::ModelInput {
    match i {
        ModelInput::NegativePrompt => pb::ModelInput::NegativePrompt,
        ModelInput::Guidance => pb::ModelInput::Guidance,
        ModelInput::Tempo => pb::ModelInput::Tempo,
        ModelInput::Key => pb::ModelInput::Key,
        ModelInput::InitAudio => pb::ModelInput::InitAudio,
        ModelInput::Lyrics => pb::ModelInput::Lyrics,
        ModelInput::VocalLanguage => pb::ModelInput::VocalLanguage,
        ModelInput::Repaint => pb::ModelInput::Repaint,
    }
}

/// A worker that takes work now: heard from within the worker timeout, not draining.
#[derive(Debug, Clone)]
struct Taker {
    denoise: bool,
    vocode: bool,
    /// The packs it serves (`name@version`); `None` when its release does not say.
    models: Option<Vec<String>>,
}

impl Taker {
    fn has(&self, m: &ModelInfo) -> bool {
        let key = format!("{}@{}", m.name, m.version);
        self.models.as_ref().is_none_or(|list| list.contains(&key))
    }
}

/// What the fleet can run, from the workers' latest heartbeats.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    takers: Vec<Taker>,
}

impl Fleet {
    /// The workers heard from within `timeout` of `now` that take work.
    pub fn new(rows: &[WorkerRow], timeout: Duration, now: DateTime<Utc>) -> Self {
        let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let takers = rows
            .iter()
            .filter(|w| !w.draining && now - w.last_seen <= timeout)
            .map(|w| Taker {
                denoise: w.denoise_slots > 0,
                vocode: w.vocode_slots > 0,
                models: (!w.models.is_empty()).then(|| w.models.clone()),
            })
            .collect();
        Self { takers }
    }

    /// Whether a job of `m` would run now: a taker with the pack for each stage.
    pub fn availability(&self, m: &ModelInfo) -> pb::ModelAvailability {
        let with: Vec<&Taker> = self.takers.iter().filter(|t| t.has(m)).collect();
        let denoise = with.iter().any(|t| t.denoise);
        let vocode = with.iter().any(|t| t.vocode);
        let reason = if self.takers.is_empty() {
            "no live worker takes work now"
        } else if with.is_empty() {
            "no live worker has this pack"
        } else if !denoise {
            "no live worker with this pack runs the denoise stage"
        } else if !vocode {
            "no live worker with this pack runs the vocode stage"
        } else {
            ""
        };
        pb::ModelAvailability {
            ready: reason.is_empty(),
            workers: with.len() as u32,
            reason: reason.to_string(),
        }
    }
}

/// One pack as the catalogue lists it; `fleet: None` leaves its availability unset.
pub fn model_pb(v: &Validator, m: &ModelInfo, fleet: Option<&Fleet>) -> pb::Model {
    let versions: Vec<String> = v
        .registry()
        .versions(&m.name)
        .iter()
        .map(|x| x.version.clone())
        .collect();
    let newest = versions.first() == Some(&m.version);
    pb::Model {
        name: m.name.clone(),
        version: m.version.clone(),
        newest,
        is_default: newest && m.name == v.default_model_name(),
        versions,
        family: m.family.as_str().to_string(),
        description: m.description.clone(),
        sample_rate: m.sample_rate,
        channels: u32::from(m.channels),
        min_duration_seconds: validate::MIN_DURATION_S,
        max_duration_seconds: m.limits.max_duration_s,
        default_duration_seconds: m.defaults.duration_s,
        default_steps: m.defaults.steps,
        max_steps: m.limits.max_steps,
        default_guidance_scale: m.defaults.guidance_scale,
        max_guidance_scale: validate::MAX_GUIDANCE,
        default_sampler: pb::Sampler::from(m.defaults.sampler) as i32,
        samplers: m
            .samplers()
            .into_iter()
            .map(|s| pb::Sampler::from(s) as i32)
            .collect(),
        inputs: m.inputs.iter().map(|i| input_pb(*i) as i32).collect(),
        max_prompt_tokens: v.max_prompt_tokens(m).unwrap_or(0) as u32,
        max_prompt_chars: validate::MAX_PROMPT_CHARS as u32,
        max_variations: validate::MAX_VARIATIONS,
        lyrics_languages: if m.takes(ModelInput::Lyrics) {
            SONG_LANGUAGES.iter().map(|l| l.to_string()).collect()
        } else {
            Vec::new()
        },
        availability: fleet.map(|f| f.availability(m)),
        key_serving: key_serving(m),
    }
}

/// The pack's `[defaults] mode_tonics` and `varispeed_semitones`, where it has a list.
fn key_serving(m: &ModelInfo) -> Option<pb::KeyServing> {
    let t = &m.defaults.mode_tonics;
    (!t.major.is_empty() || !t.minor.is_empty()).then(|| pb::KeyServing {
        major_tonics: t.major.clone(),
        minor_tonics: t.minor.clone(),
        varispeed_semitones: m.defaults.varispeed_semitones,
    })
}

/// Every pack, by name, each name's newest version first.
pub fn list(v: &Validator, fleet: Option<&Fleet>) -> pb::ListModelsResponse {
    let reg = v.registry();
    let models = reg
        .names()
        .flat_map(|name| reg.versions(name))
        .map(|m| model_pb(v, m, fleet))
        .collect();
    let default = v.default_model_name();
    pb::ListModelsResponse {
        models,
        default_model: if reg.resolve(&default, "").is_some() {
            default
        } else {
            String::new()
        },
    }
}

/// One pack, resolved as a request's `model` is (the same NOT_FOUND).
pub fn get(v: &Validator, req: &pb::GetModelRequest, fleet: Option<&Fleet>) -> Result<pb::Model> {
    let r = pb::ModelRef {
        name: req.name.clone(),
        version: req.version.clone(),
    };
    let m = v.model(Some(&r))?;
    Ok(model_pb(v, m, fleet))
}

impl GenerationService {
    async fn fleet(&self) -> Result<Fleet> {
        let rows = self.store.workers_view().await?;
        Ok(Fleet::new(&rows, self.worker_timeout, Utc::now()))
    }

    /// ListModels: any caller the auth layer lets through (as the other read calls).
    pub(crate) async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Caller::of(&request)?;
        let fleet = self.fleet().await?;
        Ok(Response::new(list(&self.validator, Some(&fleet))))
    }

    pub(crate) async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        Caller::of(&request)?;
        let fleet = self.fleet().await?;
        Ok(Response::new(get(
            &self.validator,
            request.get_ref(),
            Some(&fleet),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_shared::models::ModelRegistry;

    fn pack(root: &std::path::Path, dir: &str, body: &str) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("model.toml"), body).expect("write");
    }

    fn validator(default: Option<&str>) -> (tempfile::TempDir, Validator) {
        let root = tempfile::tempdir().expect("tempdir");
        let mel = |v: &str| {
            format!(
                "[model]\nname = \"mini\"\nversion = \"{v}\"\nsample_rate = 16000\n\
                 [defaults]\nsteps = 40\n[limits]\nmax_steps = 100\nmax_duration_s = 20.0\n"
            )
        };
        pack(root.path(), "mini/2", &mel("2"));
        pack(root.path(), "mini/10", &mel("10"));
        pack(
            root.path(),
            "sao",
            "family = \"stable_audio\"\n[model]\nname = \"sao\"\nversion = \"1\"\n\
             sample_rate = 44100\nchannels = 2\n[defaults]\nsampler = \"ping_pong\"\nsteps = 8\n\
             guidance_scale = 1.0\n[limits]\nmax_duration_s = 11.0\nsamplers = [\"ping_pong\"]\n",
        );
        let reg = ModelRegistry::scan(root.path()).expect("scan");
        let v = Validator::new(reg, default.map(str::to_string), 0).expect("validator");
        (root, v)
    }

    fn row(name: &str, denoise: u32, vocode: u32, models: &[&str], age_s: i64) -> WorkerRow {
        WorkerRow {
            worker: name.into(),
            denoise_slots: denoise,
            vocode_slots: vocode,
            express_slots: 0,
            holds: Vec::new(),
            draining: false,
            last_seen: Utc::now() - chrono::Duration::seconds(age_s),
            device: "cpu".into(),
            chunks_per_forward: 0.0,
            models: models.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_list_is_what_the_rules_read() {
        let (_root, v) = validator(Some("mini"));
        let list = list(&v, None);
        assert_eq!(list.default_model, "mini");
        let names: Vec<(&str, &str, bool, bool)> = list
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.version.as_str(), m.newest, m.is_default))
            .collect();
        assert_eq!(
            names,
            [
                ("mini", "10", true, true),
                ("mini", "2", false, false),
                ("sao", "1", true, false)
            ]
        );
        let mini = &list.models[0];
        assert_eq!(mini.versions, ["10", "2"]);
        assert_eq!((mini.default_steps, mini.max_steps), (40, 100));
        assert_eq!((mini.max_duration_seconds, mini.channels), (20.0, 1));
        assert_eq!(
            mini.inputs().collect::<Vec<_>>(),
            [
                pb::ModelInput::NegativePrompt,
                pb::ModelInput::Guidance,
                pb::ModelInput::Tempo,
                pb::ModelInput::Key
            ]
        );
        assert!(mini.availability.is_none());
        // A mel pack runs the deterministic samplers; the list is the rule's.
        let info = v.registry().resolve("mini", "").expect("mini");
        assert_eq!(mini.samplers.len(), info.samplers().len());
        assert!(!mini.samplers.contains(&(pb::Sampler::PingPong as i32)));
        let sao = &list.models[2];
        assert_eq!(sao.samplers().collect::<Vec<_>>(), [pb::Sampler::PingPong]);
        assert_eq!(sao.default_sampler(), pb::Sampler::PingPong);
        assert!(sao.inputs().any(|i| i == pb::ModelInput::InitAudio));
        assert!(!mini.inputs().any(|i| i == pb::ModelInput::InitAudio));
        assert_eq!((sao.channels, sao.sample_rate), (2, 44100));
        // GetModel resolves as a request does: the default, the newest, NOT_FOUND.
        let get = |name: &str, version: &str| {
            get(
                &v,
                &pb::GetModelRequest {
                    name: name.into(),
                    version: version.into(),
                },
                None,
            )
        };
        assert_eq!(get("", "").expect("default").version, "10");
        assert_eq!(get("mini", "2").expect("v2").version, "2");
        let e = get("mini", "3").expect_err("no such version");
        assert_eq!(Status::from(e).code(), tonic::Code::NotFound);
        // No default configured and two names: `tutti-mini`, which this farm does not serve.
        let (_root, v) = validator(None);
        assert_eq!(list_default(&v), "");
    }

    fn list_default(v: &Validator) -> String {
        list(v, None).default_model
    }

    #[test]
    fn availability_comes_from_live_workers_that_have_the_pack() {
        let (_root, v) = validator(Some("mini"));
        let mini = v.registry().resolve("mini", "").expect("mini").clone();
        let sao = v.registry().resolve("sao", "").expect("sao").clone();
        let t = Duration::from_secs(10);
        let now = Utc::now();
        let none = Fleet::new(&[], t, now).availability(&mini);
        assert!(!none.ready);
        assert_eq!(none.reason, "no live worker takes work now");
        // A gone worker does not count; a live one with both stages and the pack does.
        let fleet = Fleet::new(
            &[row("gone", 4, 1, &[], 60), row("w0", 4, 1, &["mini@10"], 1)],
            t,
            now,
        );
        let a = fleet.availability(&mini);
        assert!(a.ready && a.reason.is_empty(), "{a:?}");
        assert_eq!(a.workers, 1);
        let a = fleet.availability(&sao);
        assert!(!a.ready);
        assert_eq!(a.reason, "no live worker has this pack");
        // Split stages: denoise on one worker, vocode on another.
        let split = Fleet::new(
            &[
                row("d", 4, 0, &["sao@1"], 0),
                row("v", 0, 1, &["mini@10"], 0),
            ],
            t,
            now,
        );
        assert_eq!(
            split.availability(&sao).reason,
            "no live worker with this pack runs the vocode stage"
        );
        // A worker that does not say what it serves counts for every pack.
        let old = Fleet::new(&[row("old", 1, 1, &[], 0)], t, now);
        assert!(old.availability(&sao).ready);
        // A draining worker takes no work.
        let mut draining = row("w0", 4, 1, &["mini@10"], 0);
        draining.draining = true;
        assert!(!Fleet::new(&[draining], t, now).availability(&mini).ready);
    }
}
