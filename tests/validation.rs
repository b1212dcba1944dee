//! Every validation rule answers INVALID_ARGUMENT naming the field and the rule, and stores
//! nothing; unknown models are NOT_FOUND; idempotency keys return the first job.

#[macro_use]
mod common;

use common::{request, Backend, Farm, FarmOptions};
use tonic::Code;
use tutti_proto::v1 as pb;

async fn job_count(farm: &Farm) -> i64 {
    farm.job_count().await
}

both_backends!(
    every_rule_names_its_field_and_stores_nothing,
    idempotency_keys_return_the_first_job_and_refuse_other_parameters,
);

fn structured(f: impl FnOnce(&mut pb::StructuredPrompt)) -> pb::SubmitGenerationRequest {
    let mut s = pb::StructuredPrompt {
        genre: "house".into(),
        ..Default::default()
    };
    f(&mut s);
    pb::SubmitGenerationRequest {
        prompt_kind: Some(pb::submit_generation_request::PromptKind::Structured(s)),
        ..Default::default()
    }
}

async fn every_rule_names_its_field_and_stores_nothing(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        workers: 0,
        ..FarmOptions::on(backend)
    })
    .await;
    let mut client = farm.client().await;
    type Case = (
        &'static str,
        pb::SubmitGenerationRequest,
        Code,
        &'static str,
    );
    let with = |f: fn(&mut pb::SubmitGenerationRequest)| {
        let mut r = request("a valid prompt");
        f(&mut r);
        r
    };
    let cases: Vec<Case> = vec![
        (
            "no prompt",
            pb::SubmitGenerationRequest::default(),
            Code::InvalidArgument,
            "prompt: required",
        ),
        (
            "blank prompt",
            with(|r| {
                r.prompt_kind = Some(pb::submit_generation_request::PromptKind::Prompt(
                    "   ".into(),
                ))
            }),
            Code::InvalidArgument,
            "prompt: must not be empty",
        ),
        (
            "long prompt",
            with(|r| {
                r.prompt_kind = Some(pb::submit_generation_request::PromptKind::Prompt(
                    "la ".repeat(400),
                ))
            }),
            Code::InvalidArgument,
            "prompt: must be at most 1000 characters",
        ),
        (
            "too many tokens",
            with(|r| {
                r.prompt_kind = Some(pb::submit_generation_request::PromptKind::Prompt(
                    "piano ".repeat(150),
                ))
            }),
            Code::InvalidArgument,
            "prompt: must be at most 128 tokens",
        ),
        (
            "control chars",
            with(|r| {
                r.prompt_kind = Some(pb::submit_generation_request::PromptKind::Prompt(
                    "piano\u{7}".into(),
                ))
            }),
            Code::InvalidArgument,
            "prompt: must not contain control characters",
        ),
        (
            "long negative",
            with(|r| r.negative_prompt = "x".repeat(1001)),
            Code::InvalidArgument,
            "negative_prompt: must be at most 1000 characters",
        ),
        (
            "short duration",
            with(|r| r.duration_seconds = Some(0.5)),
            Code::InvalidArgument,
            "duration_seconds: must be between 1 and 30",
        ),
        (
            "long duration",
            with(|r| r.duration_seconds = Some(31.0)),
            Code::InvalidArgument,
            "duration_seconds: must be between 1 and 30",
        ),
        (
            "nan duration",
            with(|r| r.duration_seconds = Some(f32::NAN)),
            Code::InvalidArgument,
            "duration_seconds",
        ),
        (
            "zero steps",
            with(|r| r.steps = Some(0)),
            Code::InvalidArgument,
            "steps: must be between 1 and 200",
        ),
        (
            "many steps",
            with(|r| r.steps = Some(201)),
            Code::InvalidArgument,
            "steps: must be between 1 and 200",
        ),
        (
            "negative guidance",
            with(|r| r.guidance_scale = Some(-1.0)),
            Code::InvalidArgument,
            "guidance_scale: must be between 0 and 20",
        ),
        (
            "huge guidance",
            with(|r| r.guidance_scale = Some(21.0)),
            Code::InvalidArgument,
            "guidance_scale: must be between 0 and 20",
        ),
        (
            "variations",
            with(|r| r.variations = 5),
            Code::InvalidArgument,
            "variations: must be between 1 and 4",
        ),
        (
            "sampler",
            with(|r| r.sampler = 99),
            Code::InvalidArgument,
            "sampler: unknown sampler",
        ),
        (
            "format",
            with(|r| r.format = 7),
            Code::InvalidArgument,
            "format: must be wav, flac, mp3 or opus",
        ),
        (
            "mp3 bitrate",
            with(|r| {
                r.format = pb::AudioFormat::Mp3 as i32;
                r.bitrate_kbps = Some(100);
            }),
            Code::InvalidArgument,
            "bitrate_kbps: must be one of 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, \
             320 kbps for mp3 (got 100)",
        ),
        (
            "opus bitrate",
            with(|r| {
                r.format = pb::AudioFormat::Opus as i32;
                r.bitrate_kbps = Some(5);
            }),
            Code::InvalidArgument,
            "bitrate_kbps: must be between 6 and 510 kbps for opus (got 5)",
        ),
        (
            "bitrate of a lossless format",
            with(|r| r.bitrate_kbps = Some(128)),
            Code::InvalidArgument,
            "bitrate_kbps: applies to mp3 and opus only; wav is lossless",
        ),
        (
            "loudness",
            with(|r| r.loudness_lufs = Some(-3.0)),
            Code::InvalidArgument,
            "loudness_lufs: must be between -40 and -8 LUFS (got -3)",
        ),
        (
            "priority",
            with(|r| r.priority = 9),
            Code::InvalidArgument,
            "priority: must be interactive, standard or batch",
        ),
        (
            "seed",
            with(|r| r.seed = Some(u64::MAX)),
            Code::InvalidArgument,
            "seed: must be at most",
        ),
        (
            "idempotency key",
            with(|r| r.idempotency_key = "k".repeat(129)),
            Code::InvalidArgument,
            "idempotency_key: must be at most 128 bytes",
        ),
        (
            "label key",
            with(|r| {
                r.labels.insert("Bad Key".into(), "v".into());
            }),
            Code::InvalidArgument,
            "labels: key \"Bad Key\": keys are",
        ),
        (
            "label value",
            with(|r| {
                r.labels.insert("k".into(), "v".repeat(257));
            }),
            Code::InvalidArgument,
            "labels[\"k\"]: values are at most 256 bytes",
        ),
        (
            "label count",
            with(|r| {
                for i in 0..17 {
                    r.labels.insert(format!("k{i}"), "v".into());
                }
            }),
            Code::InvalidArgument,
            "labels: at most 16 labels",
        ),
        (
            "tempo",
            structured(|s| s.tempo_bpm = Some(500.0)),
            Code::InvalidArgument,
            "structured.tempo_bpm: must be between 40 and 240 BPM",
        ),
        (
            "key",
            structured(|s| s.key = "H major".into()),
            Code::InvalidArgument,
            "structured.key: must be a pitch",
        ),
        (
            "structure word",
            structured(|s| s.structure = vec!["crescendo".into()]),
            Code::InvalidArgument,
            "structured.structure: \"crescendo\" is not one of",
        ),
        (
            "instruments",
            structured(|s| s.instruments = vec!["piano".into(); 9]),
            Code::InvalidArgument,
            "structured.instruments: at most 8 instruments",
        ),
        (
            "genre",
            structured(|s| s.genre = "g".repeat(41)),
            Code::InvalidArgument,
            "structured.genre: must be at most 40 characters",
        ),
        (
            "model",
            with(|r| {
                r.model = Some(pb::ModelRef {
                    name: "nope".into(),
                    version: String::new(),
                })
            }),
            Code::NotFound,
            "model \"nope\" not found",
        ),
        (
            "model version",
            with(|r| {
                r.model = Some(pb::ModelRef {
                    name: "tiny".into(),
                    version: "9".into(),
                })
            }),
            Code::NotFound,
            "model \"tiny\" version \"9\" not found",
        ),
        (
            "version without name",
            with(|r| {
                r.model = Some(pb::ModelRef {
                    name: String::new(),
                    version: "1".into(),
                })
            }),
            Code::InvalidArgument,
            "model.name: required when model.version is set",
        ),
    ];
    for (name, req, code, message) in cases {
        let err = client.submit_generation(req).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(
            err.message().starts_with(message),
            "{name}: {:?} does not start with {message:?}",
            err.message()
        );
    }
    assert_eq!(job_count(&farm).await, 0, "nothing stored");

    // Other RPCs validate too.
    let err = client
        .get_job(pb::GetJobRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "id: must be a job id (a UUID)")
    );
    let err = client
        .get_job(pb::GetJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .list_jobs(pb::ListJobsRequest {
            page_size: 501,
            ..Default::default()
        })
        .await
        .expect_err("page size");
    assert_eq!(err.message(), "page_size: must be at most 500");
    let err = client
        .list_jobs(pb::ListJobsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("token");
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn idempotency_keys_return_the_first_job_and_refuse_other_parameters(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        workers: 0,
        ..FarmOptions::on(backend)
    })
    .await;
    let mut client = farm.client().await;
    let mut req = request("idempotent jazz trio");
    req.seed = None;
    req.idempotency_key = "order-17".into();
    let first = client
        .submit_generation(req.clone())
        .await
        .expect("first")
        .into_inner();
    let again = client
        .submit_generation(req.clone())
        .await
        .expect("again")
        .into_inner();
    assert_eq!(first.id, again.id);
    // The chosen seed is returned and kept.
    let seed = first
        .request
        .as_ref()
        .and_then(|r| r.seed)
        .expect("seed chosen");
    assert_eq!(again.request.as_ref().and_then(|r| r.seed), Some(seed));
    req.steps = Some(3);
    let err = client.submit_generation(req).await.expect_err("conflict");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("order-17"), "{}", err.message());
    assert_eq!(job_count(&farm).await, 1);

    // Defaults are filled in and reported; structured prompts are rendered and their controls kept.
    let job = client
        .submit_generation(structured(|s| {
            s.mood = "melancholic".into();
            s.subgenre = "lo-fi".into();
            s.genre = "hip hop".into();
            s.tempo_bpm = Some(75.0);
            s.key = "A minor".into();
            s.instruments = vec!["piano".into()];
        }))
        .await
        .expect("structured")
        .into_inner();
    assert_eq!(
        job.prompt_text,
        "melancholic lo-fi hip hop with piano, 75 BPM, in A minor"
    );
    let accepted = job.request.expect("request");
    assert_eq!(accepted.steps, Some(8));
    assert_eq!(accepted.duration_seconds, Some(10.0));
    assert_eq!(accepted.model.expect("model").name, "tiny");

    // ListJobs pages and filters by label.
    let mut labelled = request("labelled");
    labelled.labels.insert("catalog".into(), "spring".into());
    client.submit_generation(labelled).await.expect("labelled");
    let page = client
        .list_jobs(pb::ListJobsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.jobs.len(), 2);
    let rest = client
        .list_jobs(pb::ListJobsRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.jobs.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let filtered = client
        .list_jobs(pb::ListJobsRequest {
            labels: [("catalog".to_string(), "spring".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(filtered.jobs.len(), 1);
    assert_eq!(filtered.jobs[0].prompt_text, "labelled");
}
