//! Bad input on the wire: every decoder that reads from outside gets arbitrary bytes (and
//! mutations of valid inputs) and must answer with an error, never a panic. Bounded by the
//! case counts below so CI time stays small.

use proptest::prelude::*;
use prost::Message;
use tutti_proto::v1 as pb;
use tutti_shared::messages::{ControlMessage, TaskMessage, WorkerEvent};

fn validator() -> tutti_coordinator::validate::Validator {
    let dir = tempfile::tempdir().expect("tempdir");
    tutti_model::tiny::write_tiny_pack(&dir.path().join("tiny"), 1).expect("tiny pack");
    let registry = tutti_shared::models::ModelRegistry::scan(dir.path()).expect("scan");
    let v = tutti_coordinator::validate::Validator::new(registry, None, 0).expect("validator");
    // The tokenizer is loaded; the pack folder may go.
    drop(dir);
    v
}

const VALID_TASK: &str = r#"{"job_id":"01a20ddf-b53f-72bd-b895-7171a0b1e65f","tenant":"default","chunk":1,"attempt":1,"kind":"denoise","from_step":4,"to_step":8,"spec":{"model":{"name":"tiny","version":"1"},"prompt":"p","negative_prompt":"","controls":{"duration_s":2.0,"bpm":75.0,"key":9,"mode":"minor"},"duration_s":2.0,"seed":42,"steps":8,"guidance_scale":3.0,"sampler":"flow_euler","variations":1,"format":"wav"}}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn amqp_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<TaskMessage>(&bytes);
        let _ = serde_json::from_slice::<WorkerEvent>(&bytes);
        let _ = serde_json::from_slice::<ControlMessage>(&bytes);
    }

    #[test]
    fn mutated_task_messages_never_panic(pos in 0usize..VALID_TASK.len(), byte in any::<u8>()) {
        let mut bytes = VALID_TASK.as_bytes().to_vec();
        bytes[pos] = byte;
        let _ = serde_json::from_slice::<TaskMessage>(&bytes);
    }

    #[test]
    fn prompt_parsing_never_panics(text in "\\PC{0,200}") {
        let c = tutti_shared::prompt::parse_controls(&text, 10.0);
        if let Some(bpm) = c.bpm { prop_assert!((40.0..=240.0).contains(&bpm)); }
        if let Some(k) = c.key { prop_assert!(k < 12); }
        let _ = tutti_shared::prompt::parse_key(&text);
    }
}

#[test]
fn the_valid_task_fixture_parses() {
    // Guards the mutation test above: it mutates a message that is otherwise accepted.
    let t: TaskMessage = serde_json::from_str(VALID_TASK).expect("valid task");
    assert_eq!(t.to_step, 8);
}

#[test]
fn grpc_requests_from_arbitrary_bytes_never_panic() {
    let v = validator();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 3000,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            if let Ok(req) = pb::SubmitGenerationRequest::decode(bytes.as_slice()) {
                let _ = v.validate(&req);
            }
            Ok(())
        })
        .expect("no panic");
    // Structured requests with arbitrary field values.
    let strategy = (
        "\\PC{0,60}",
        "\\PC{0,60}",
        proptest::option::of(any::<f32>()),
        "\\PC{0,12}",
        proptest::collection::vec("\\PC{0,12}", 0..10),
        proptest::option::of(any::<f32>()),
        proptest::option::of(any::<u32>()),
        any::<i32>(),
    );
    runner
        .run(
            &strategy,
            |(genre, mood, bpm, key, structure, duration, steps, sampler)| {
                let req = pb::SubmitGenerationRequest {
                    prompt_kind: Some(pb::submit_generation_request::PromptKind::Structured(
                        pb::StructuredPrompt {
                            genre,
                            mood,
                            tempo_bpm: bpm,
                            key,
                            structure,
                            ..Default::default()
                        },
                    )),
                    duration_seconds: duration,
                    steps,
                    sampler,
                    ..Default::default()
                };
                let _ = v.validate(&req);
                Ok(())
            },
        )
        .expect("no panic");
}

#[test]
fn model_packs_from_arbitrary_bytes_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = dir.path().join("tiny");
    tutti_model::tiny::write_tiny_pack(&pack, 3).expect("tiny pack");
    let toml = std::fs::read(pack.join("model.toml")).expect("model.toml");
    let weights = std::fs::read(pack.join("denoiser.safetensors")).expect("weights");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    // Garbage safetensors: the parser reports, never panics.
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            let _ = tutti_model::weights::parse_safetensors(&bytes, "fuzz");
            Ok(())
        })
        .expect("no panic");
    // Truncated or corrupted weights and model.toml: loading the pack fails with an error.
    runner
        .run(
            &(0usize..weights.len(), any::<u8>(), 0usize..toml.len()),
            |(cut, byte, pos)| {
                let mut w = weights.clone();
                w.truncate(cut.max(1));
                std::fs::write(pack.join("denoiser.safetensors"), &w).expect("write");
                let _ = tutti_model::pipeline::Pipeline::load(&pack, tch::Device::Cpu);
                std::fs::write(pack.join("denoiser.safetensors"), &weights).expect("write");
                let mut t = toml.clone();
                t[pos] = byte;
                std::fs::write(pack.join("model.toml"), &t).expect("write");
                let _ = tutti_model::pack::PackConfig::read(&pack);
                let _ = tutti_shared::models::ModelInfo::read(&pack);
                std::fs::write(pack.join("model.toml"), &toml).expect("write");
                Ok(())
            },
        )
        .expect("no panic");
}

/// Every row a batch manifest reader yields, as text (errors included), or the error that
/// stopped it.
fn read_manifest(bytes: &[u8], format: tutti_coordinator::batches::manifest::ManifestFormat) {
    use tutti_coordinator::batches::manifest::ManifestReader;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut rows = ManifestReader::new(bytes, format);
        let mut n = 0;
        // A reader must end (or fail) within one row per input byte, plus the last.
        while let Ok(Some(_row)) = rows.next().await {
            n += 1;
            assert!(n <= bytes.len() + 1, "the reader does not advance");
        }
    });
}

#[test]
fn batch_manifests_from_arbitrary_bytes_never_panic() {
    use tutti_coordinator::batches::manifest::ManifestFormat;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let valid_jsonl: &[u8] = b"{\"item_id\":\"a\",\"prompt\":\"lofi piano\"}\n{\"item_id\":\"b\",\"prompt\":\"rock\",\"duration_seconds\":5}\n";
    let valid_csv: &[u8] = b"item_id,prompt,duration_seconds\na,lofi piano,5\nb,\"rock, loud\",8\n";
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            read_manifest(&bytes, ManifestFormat::Jsonl);
            read_manifest(&bytes, ManifestFormat::Csv);
            Ok(())
        })
        .expect("no panic on garbage");
    for valid in [valid_jsonl, valid_csv] {
        runner
            .run(&(0usize..valid.len(), any::<u8>()), |(pos, byte)| {
                let mut bytes = valid.to_vec();
                bytes[pos] = byte;
                read_manifest(&bytes, ManifestFormat::Jsonl);
                read_manifest(&bytes, ManifestFormat::Csv);
                Ok(())
            })
            .expect("no panic on mutations");
    }
}
