//! The model catalogue (ListModels, GetModel, the studio's `/api/models`, `tutti models`) on
//! both farms: it lists the packs the farm serves with the limits the request rules apply (a
//! request past a listed limit is refused by that field's rule, one at the limits is accepted),
//! whether live workers can run each one now (from their heartbeats), and callers need a key
//! as for the other read calls.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{request, Backend, Farm, FarmOptions, KeyedClient};
use tonic::Code;
use tutti_proto::v1 as pb;

both_backends!(the_catalogue_is_what_the_rules_apply);

const NAMES: [&str; 3] = ["stable-audio-open-1.0", "stable-audio-open-small", "tiny"];

/// The tiny mel pack and both tiny Stable Audio packs; `tiny` is the default.
fn with_packs(opts: FarmOptions) -> FarmOptions {
    FarmOptions {
        packs: Some(common::packs::stable_audio),
        coordinator_env: [
            vec![("TUTTI_DEFAULT_MODEL", "tiny".to_string())],
            opts.coordinator_env.clone(),
        ]
        .concat(),
        ..opts
    }
}

async fn list(c: &mut KeyedClient) -> pb::ListModelsResponse {
    c.list_models(pb::ListModelsRequest {})
        .await
        .expect("ListModels")
        .into_inner()
}

/// Polls ListModels until `done` holds of it (heartbeats come every couple of seconds).
async fn wait_list(
    c: &mut KeyedClient,
    what: &str,
    done: impl Fn(&pb::ListModelsResponse) -> bool,
) -> pb::ListModelsResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = list(c).await;
        if done(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {l:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn model<'a>(l: &'a pb::ListModelsResponse, name: &str) -> &'a pb::Model {
    l.models
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} not listed: {l:#?}"))
}

fn ready(m: &pb::Model) -> bool {
    m.availability.as_ref().is_some_and(|a| a.ready)
}

fn on(m: &pb::Model, prompt: &str) -> pb::SubmitGenerationRequest {
    pb::SubmitGenerationRequest {
        model: Some(pb::ModelRef {
            name: m.name.clone(),
            version: m.version.clone(),
        }),
        duration_seconds: Some(1.0),
        ..request(prompt)
    }
}

/// The field an INVALID_ARGUMENT names (`field: rule`).
fn refused_field(r: Result<tonic::Response<pb::Job>, tonic::Status>) -> String {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    e.message()
        .split_once(": ")
        .expect("field: rule")
        .0
        .to_string()
}

/// Cancels a job, again while the farm answers UNAVAILABLE (a retryable answer: Postgres may
/// report a deadlock between the cancel and the dispatcher's round).
async fn cancel(c: &mut KeyedClient, id: &str) {
    for attempt in 1.. {
        match c.cancel_job(pb::CancelJobRequest { id: id.into() }).await {
            Ok(_) => return,
            Err(e) if e.code() == Code::Unavailable && attempt < 10 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("cancel {id}: {e:?}"),
        }
    }
}

fn tutti(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("TUTTI_SERVER")
        .env_remove("TUTTI_MODELS_DIR")
        .env_remove("TUTTI_DEFAULT_MODEL")
        .output()
        .expect("run tutti");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_catalogue_is_what_the_rules_apply(backend: Backend) {
    let farm = Farm::start(with_packs(FarmOptions::on(backend))).await;
    let mut c = farm.client_as(None).await;

    // Every pack, by name; the default marked; each ready once the worker's heartbeat says it
    // has it.
    let l = wait_list(&mut c, "every pack ready", |l| {
        l.models.len() == NAMES.len() && l.models.iter().all(ready)
    })
    .await;
    let names: Vec<&str> = l.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, NAMES);
    assert_eq!(l.default_model, "tiny");
    for m in &l.models {
        assert_eq!(m.is_default, m.name == "tiny", "{m:?}");
        assert!(m.newest && m.versions == [m.version.clone()], "{m:?}");
        assert!(
            m.availability.as_ref().is_some_and(|a| a.workers >= 1),
            "{m:?}"
        );
    }
    let tiny = model(&l, "tiny");
    assert_eq!(
        (tiny.family.as_str(), tiny.channels, tiny.sample_rate),
        ("mel", 1, 16000)
    );
    let inputs: BTreeSet<pb::ModelInput> = tiny.inputs().collect();
    assert!(inputs.contains(&pb::ModelInput::Tempo) && inputs.contains(&pb::ModelInput::Key));
    assert!(!inputs.contains(&pb::ModelInput::InitAudio));
    assert!(!inputs.contains(&pb::ModelInput::Lyrics));
    for name in ["stable-audio-open-1.0", "stable-audio-open-small"] {
        let sao = model(&l, name);
        assert_eq!(
            (sao.family.as_str(), sao.channels, sao.sample_rate),
            ("stable_audio", 2, 44100)
        );
        let inputs: BTreeSet<pb::ModelInput> = sao.inputs().collect();
        assert!(inputs.contains(&pb::ModelInput::InitAudio), "{sao:?}");
        assert!(!inputs.contains(&pb::ModelInput::Tempo), "{sao:?}");
    }
    assert_eq!(
        model(&l, "stable-audio-open-small")
            .samplers()
            .collect::<Vec<_>>(),
        [pb::Sampler::PingPong]
    );

    // The rules refuse what is past a listed limit, naming the field, and accept a request at
    // the limits (cancelled at once: only its acceptance is tested).
    let all_samplers = [
        pb::Sampler::FlowEuler,
        pb::Sampler::Ddim,
        pb::Sampler::DpmSolverPp2m,
        pb::Sampler::CosineDpmSolverPp2m,
        pb::Sampler::CosineDpmSolverPp2mSde,
        pb::Sampler::PingPong,
    ];
    for m in &l.models {
        let mut r = on(m, "a calm piano");
        r.steps = Some(m.max_steps + 1);
        assert_eq!(
            refused_field(c.submit_generation(r).await),
            "steps",
            "{}",
            m.name
        );
        let mut r = on(m, "a calm piano");
        r.duration_seconds = Some(m.max_duration_seconds + 0.5);
        assert_eq!(
            refused_field(c.submit_generation(r).await),
            "duration_seconds"
        );
        let mut r = on(m, "a calm piano");
        r.duration_seconds = Some(m.min_duration_seconds - 0.5);
        assert_eq!(
            refused_field(c.submit_generation(r).await),
            "duration_seconds"
        );
        let mut r = on(m, "a calm piano");
        r.guidance_scale = Some(m.max_guidance_scale + 1.0);
        assert_eq!(
            refused_field(c.submit_generation(r).await),
            "guidance_scale"
        );
        let mut r = on(m, "a calm piano");
        r.variations = m.max_variations + 1;
        assert_eq!(refused_field(c.submit_generation(r).await), "variations");
        let listed: Vec<pb::Sampler> = m.samplers().collect();
        for s in all_samplers.iter().filter(|s| !listed.contains(s)) {
            let mut r = on(m, "a calm piano");
            r.sampler = *s as i32;
            assert_eq!(
                refused_field(c.submit_generation(r).await),
                "sampler",
                "{s:?}"
            );
        }
        if !m.inputs().any(|i| i == pb::ModelInput::InitAudio) {
            let mut r = on(m, "a calm piano");
            r.init_audio = b"RIFF....WAVE".to_vec();
            assert_eq!(refused_field(c.submit_generation(r).await), "init_audio");
        }
        for s in &listed {
            let mut r = on(m, "a calm piano");
            r.duration_seconds = Some(m.max_duration_seconds);
            r.steps = Some(m.max_steps);
            r.guidance_scale = Some(m.max_guidance_scale);
            r.sampler = *s as i32;
            r.priority = pb::Priority::Batch as i32;
            let job = c
                .submit_generation(r)
                .await
                .unwrap_or_else(|e| panic!("{} at its limits with {s:?}: {e:?}", m.name))
                .into_inner();
            cancel(&mut c, &job.id).await;
        }
    }

    // GetModel resolves as a request's model does.
    let get = |name: &str, version: &str| pb::GetModelRequest {
        name: name.into(),
        version: version.into(),
    };
    let default = c
        .get_model(get("", ""))
        .await
        .expect("default")
        .into_inner();
    assert_eq!((default.name.as_str(), default.is_default), ("tiny", true));
    let small = model(&l, "stable-audio-open-small");
    let got = c
        .get_model(get(&small.name, &small.version))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (got.name.as_str(), got.max_duration_seconds, got.max_steps),
        (
            small.name.as_str(),
            small.max_duration_seconds,
            small.max_steps
        )
    );
    for (name, version) in [("nope", ""), ("tiny", "0")] {
        let e = c.get_model(get(name, version)).await.expect_err("unknown");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }

    // The prompt preview reads a plain prompt's controls and completes it with the builder's.
    let r = c
        .render_prompt(pb::RenderPromptRequest {
            prompt: "melancholic lo-fi piano, 75 BPM, late night study session".into(),
            structured: Some(pb::StructuredPrompt {
                key: "A minor".into(),
                tempo_bpm: Some(90.0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("render")
        .into_inner();
    assert_eq!(
        r.prompt_text,
        "melancholic lo-fi piano, 75 BPM, late night study session, in A minor"
    );
    assert_eq!(
        (r.tempo_bpm, r.key.as_str(), r.mode.as_str()),
        (Some(75.0), "A minor", "minor")
    );
    assert_eq!(r.added, ["in A minor"]);

    // The studio's gateway serves the same catalogue as JSON.
    let body = reqwest::get(format!("http://{}/api/models", farm.studio_addr))
        .await
        .expect("GET /api/models")
        .text()
        .await
        .expect("body");
    let json: pb::ListModelsResponse = serde_json::from_str(&body).expect("the API's JSON");
    let strip = |l: &pb::ListModelsResponse| {
        l.models
            .iter()
            .map(|m| pb::Model {
                availability: None,
                ..m.clone()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&json), strip(&l));
    let one = reqwest::get(format!(
        "http://{}/api/models/stable-audio-open-small",
        farm.studio_addr
    ))
    .await
    .expect("GET one");
    assert_eq!(one.status(), 200);
    let missing = reqwest::get(format!("http://{}/api/models/nope", farm.studio_addr))
        .await
        .expect("GET missing");
    assert_eq!(missing.status(), 404);

    // `tutti models`: the farm's with --server, the local packs without.
    let server = format!("http://{}", farm.addr);
    let (ok, out, err) = tutti(&["models", "--server", &server]);
    assert!(ok, "{err}");
    assert!(
        out.contains("tiny@1 (default)\n  mel family · mono 16000 Hz"),
        "{out}"
    );
    assert!(out.contains("stable-audio-open-small@"), "{out}");
    assert!(out.contains("samplers: ping-pong (default)"), "{out}");
    assert!(
        out.contains("takes: prompt, negative_prompt, guidance, init_audio"),
        "{out}"
    );
    assert_eq!(out.matches("workers: ready").count(), 3, "{out}");
    let (ok, out, err) = tutti(&["models", "tiny", "--server", &server, "--json"]);
    assert!(ok, "{err}");
    let one: pb::Model = serde_json::from_str(&out).expect("a Model as JSON");
    assert_eq!((one.name.as_str(), one.is_default), ("tiny", true));
    let (ok, _, err) = tutti(&["models", "nope", "--server", &server]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    let models_dir = farm.models_dir();
    let dir = models_dir.to_str().expect("utf-8 path");
    let (ok, out, err) = tutti(&["models", "--models-dir", dir, "--default-model", "tiny"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("workers: local pack").count(), 3, "{out}");
    assert!(out.contains("tiny@1 (default)"), "{out}");
}

/// On the distributed farm: a worker that serves fewer packs counts for those only, a gone
/// worker for none, the operator view shows what each serves, and with auth on the catalogue
/// needs a key like the other read calls (any tenant's).
#[tokio::test]
async fn availability_follows_the_workers_heartbeats() {
    let mut farm = Farm::start(with_packs(FarmOptions {
        auth: true,
        coordinator_env: vec![("TUTTI_WORKER_TIMEOUT", "2s".into())],
        ..FarmOptions::on(Backend::Distributed)
    }))
    .await;
    farm.operator(&["tenant", "create", "alice"]);
    let key = farm.create_key("alice", false);
    let admin = farm.create_key("alice", true);

    // No key: UNAUTHENTICATED, as for the other calls; a tenant's key reads it.
    let mut anonymous = farm.client_as(None).await;
    let e = anonymous
        .list_models(pb::ListModelsRequest {})
        .await
        .expect_err("no key");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = anonymous
        .get_model(pb::GetModelRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut c = farm.client_as(Some(&key)).await;
    let workers = |l: &pb::ListModelsResponse, name: &str| {
        model(l, name)
            .availability
            .as_ref()
            .map_or(0, |a| a.workers)
    };
    wait_list(&mut c, "w0's heartbeat", |l| l.models.iter().all(ready)).await;

    // w1 serves the tiny pack only.
    let only_tiny = farm.dir().join("only-tiny");
    tutti_model::tiny::write_tiny_pack(&only_tiny.join("tiny"), 7).expect("tiny pack");
    let w1 = farm.add_worker(&["--models-dir", only_tiny.to_str().expect("utf-8")]);
    let l = wait_list(&mut c, "w1's heartbeat", |l| workers(l, "tiny") == 2).await;
    for name in ["stable-audio-open-1.0", "stable-audio-open-small"] {
        assert_eq!(workers(&l, name), 1, "{l:#?}");
        assert!(ready(model(&l, name)));
    }
    let mut operator = pb::operator_client::OperatorClient::with_interceptor(
        farm.channel().await.expect("channel"),
        common::WithKey::bearer(Some(&admin)),
    );
    let fleet = operator
        .list_workers(pb::ListWorkersRequest {})
        .await
        .expect("ListWorkers")
        .into_inner();
    let w1_row = fleet.workers.iter().find(|w| w.name == "w1").expect("w1");
    assert_eq!(w1_row.models, ["tiny@1"]);
    let w0_row = fleet.workers.iter().find(|w| w.name == "w0").expect("w0");
    assert_eq!(w0_row.models.len(), 3, "{w0_row:?}");

    // w0 goes: the Stable Audio packs have no worker left, the tiny one still has w1.
    farm.terminate_worker(0);
    let l = wait_list(&mut c, "w0 gone", |l| {
        !ready(model(l, "stable-audio-open-small"))
    })
    .await;
    let small = model(&l, "stable-audio-open-small");
    let a = small.availability.as_ref().expect("availability");
    assert_eq!(
        (a.workers, a.reason.as_str()),
        (0, "no live worker has this pack")
    );
    assert!(
        ready(model(&l, "tiny")) && workers(&l, "tiny") == 1,
        "{l:#?}"
    );
    let one = c
        .get_model(pb::GetModelRequest {
            name: "stable-audio-open-1.0".into(),
            version: String::new(),
        })
        .await
        .expect("GetModel with a tenant key")
        .into_inner();
    assert!(!ready(&one));

    // Every worker gone: nothing is ready.
    farm.terminate_worker(w1);
    let l = wait_list(&mut c, "w1 gone", |l| !l.models.iter().any(ready)).await;
    let a = model(&l, "tiny")
        .availability
        .clone()
        .expect("availability");
    assert_eq!(a.reason, "no live worker takes work now");
}
