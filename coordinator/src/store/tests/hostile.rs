//! Generated requests, boundary and hostile values included (NaN, infinities, huge numbers,
//! control characters, NUL, bidi overrides, long UTF-8, unknown enum values), through the
//! validator and the store of each dialect. Every request ends one of two ways: a clean
//! INVALID_ARGUMENT (or NOT_FOUND for a model that is not served) naming a request field, or a
//! stored job that reads back equal to what was accepted. Never a database error, never a
//! panic.

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use tutti_proto::v1 as pb;
use tutti_shared::models::ModelRegistry;

use super::T;
use crate::error::Error;
use crate::store::{JobStore, Scope};
use crate::validate::Validator;

/// Requests generated per dialect (deterministic: the same cases on every run).
const CASES: usize = 300;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{1,24}",
        "\\PC{0,40}",
        any::<String>(),
        Just("\0".to_string()),
        Just("nul\0inside".to_string()),
        Just("esc \u{1b}[31m red".to_string()),
        Just("rtl \u{202E}gpj.exe".to_string()),
        Just("עברית \u{200F}mark".to_string()),
        Just("lines\nand\ttabs\r\n".to_string()),
        Just("x".repeat(1001)),
        Just("é".repeat(1000)),
        Just("\u{10FFFF}".repeat(300)),
        Just(String::new()),
    ]
}

fn number() -> impl Strategy<Value = Option<f32>> {
    prop_oneof![
        Just(None),
        Just(Some(f32::NAN)),
        Just(Some(f32::INFINITY)),
        Just(Some(f32::NEG_INFINITY)),
        Just(Some(-0.0)),
        Just(Some(f32::MAX)),
        Just(Some(f32::MIN_POSITIVE)),
        (0.0f32..40.0).prop_map(Some),
        any::<f32>().prop_map(Some),
    ]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![0..6i32, any::<i32>()]
}

prop_compose! {
    fn structured()(
        genre in text(), mood in text(), key in text(), extra in text(),
        tempo in number(),
        instruments in prop::collection::vec(text(), 0..10),
        structure in prop::collection::vec(prop_oneof![Just("intro".to_string()), text()], 0..3),
    ) -> pb::StructuredPrompt {
        pb::StructuredPrompt { genre, subgenre: String::new(), mood, tempo_bpm: tempo, key, instruments, structure, extra }
    }
}

fn benign_text() -> impl Strategy<Value = String> {
    "[a-z][a-z ]{0,23}"
}

prop_compose! {
    /// A request whose fields are each benign or, with some chance, hostile.
    fn request()(
        hostile in prop::collection::vec(prop::bool::weighted(0.12), 12),
        prompt in prop_oneof![text().prop_map(pb::submit_generation_request::PromptKind::Prompt),
                              structured().prop_map(pb::submit_generation_request::PromptKind::Structured)],
        benign_prompt in benign_text(),
        negative_prompt in (text(), benign_text()),
        duration_seconds in (number(), (1.0f32..10.0).prop_map(Some)),
        guidance_scale in (number(), (0.0f32..10.0).prop_map(Some)),
        steps in (prop_oneof![Just(None), (0u32..300).prop_map(Some), any::<u32>().prop_map(Some)], (1u32..20).prop_map(Some)),
        seed in (any::<u64>().prop_map(Some), (0u64..1000).prop_map(Some)),
        sampler in (enum_value(), Just(0)), format in (enum_value(), 0..3i32), priority in (enum_value(), 0..4i32),
        variations in (prop_oneof![0u32..6, any::<u32>()], 0u32..3),
        labels in (prop::collection::hash_map(prop_oneof!["[a-z]{1,8}", text()], text(), 0..3),
                   prop::collection::hash_map("[a-z]{1,8}", benign_text(), 0..3)),
        idempotency_key in (text(), benign_text()),
        model in prop_oneof![(text(), text()).prop_map(|(name, version)| Some(pb::ModelRef { name, version }))],
    ) -> pb::SubmitGenerationRequest {
        let pick = |i: usize| hostile[i];
        macro_rules! either { ($i:expr, $pair:expr) => { if pick($i) { $pair.0 } else { $pair.1 } } }
        pb::SubmitGenerationRequest {
            prompt_kind: Some(if pick(0) { prompt } else { pb::submit_generation_request::PromptKind::Prompt(benign_prompt) }),
            negative_prompt: either!(1, negative_prompt),
            duration_seconds: either!(2, duration_seconds),
            guidance_scale: either!(3, guidance_scale),
            steps: either!(4, steps),
            seed: either!(5, seed),
            sampler: either!(6, sampler),
            format: either!(7, format),
            priority: either!(8, priority),
            variations: either!(9, variations),
            labels: either!(10, labels).into_iter().collect::<HashMap<_, _>>(),
            idempotency_key: either!(11, idempotency_key),
            model: if pick(6) && pick(7) { model } else { None },
            ..Default::default()
        }
    }
}

/// The fields a rule may name (a prefix of the error's field).
const FIELDS: [&str; 16] = [
    "prompt",
    "structured",
    "negative_prompt",
    "duration_seconds",
    "steps",
    "guidance_scale",
    "sampler",
    "format",
    "variations",
    "priority",
    "idempotency_key",
    "labels",
    "seed",
    "model",
    "init_audio",
    "init_strength",
];

async fn hostile_requests_are_refused_by_field_or_stored_as_accepted(s: &dyn JobStore) {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let registry = ModelRegistry::scan(&models).expect("the repository's model packs");
    let validator = Validator::new(registry, None, 0).expect("validator");
    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let (mut stored, mut refused) = (0, 0);
    for i in 0..CASES {
        let req = request()
            .new_tree(&mut runner)
            .expect("a generated request")
            .current();
        let mut new = match validator.validate(&req) {
            Ok(new) => new,
            Err(Error::InvalidArgument { field, rule }) => {
                assert!(
                    FIELDS.iter().any(|f| field.starts_with(f)),
                    "case {i}: unknown field {field:?} ({rule})"
                );
                assert!(rule.len() < 400, "case {i}: a {} byte rule", rule.len());
                refused += 1;
                continue;
            }
            Err(Error::NotFound(m)) if req.model.is_some() => {
                assert!(m.len() < 400, "case {i}: a {} byte message", m.len());
                refused += 1;
                continue;
            }
            Err(e) => panic!("case {i}: {e:?} for {req:?}"),
        };
        // Keys are unique per case, so every accepted request makes a job.
        new.idempotency_key = new.idempotency_key.map(|k| format!("{i}/{k}"));
        let (record, created) = s.insert_job(T, &new).await.unwrap_or_else(|e| {
            panic!("case {i}: the store refused an accepted job: {e:?} ({req:?})")
        });
        assert!(created, "case {i}");
        let back = s
            .get_job(Scope::Tenant(T), record.job.id)
            .await
            .expect("get")
            .expect("the stored job");
        assert_eq!(back.job.spec.0, new.spec, "case {i}");
        assert_eq!(back.job.labels.0, new.labels, "case {i}");
        assert_eq!(back.job.request, new.accepted.encode_to_vec(), "case {i}");
        stored += 1;
    }
    // Both ends are exercised.
    assert!(
        stored >= 10 && refused >= 10,
        "stored {stored}, refused {refused}"
    );
}

job_store_suite!(hostile_requests_are_refused_by_field_or_stored_as_accepted);
