//! The family-neutral checkpoint (`tutti-denoise-state/2`: the family's conditioning as named
//! `cond.*` tensors) for both families, and the format before it: a `/1` checkpoint (the same
//! conditioning under bare names) still loads and resumes bit-identically; any other format is
//! refused with its name.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};
use tutti_model::device::Precision;
use tutti_model::served::ServedModel;
use tutti_model::stable_audio::{import, ImportOptions};
use tutti_model::state::DenoiseState;
use tutti_model::{tiny, tiny_sao, weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn packs(tmp: &Path) -> Vec<PathBuf> {
    let mel = tmp.join("mel");
    tiny::write_tiny_pack(&mel, 3).unwrap();
    let src = tmp.join("small-src");
    tiny_sao::sat_folder(&fixture("sao-small-tiny"), &src, 32).unwrap();
    let t5 = tmp.join("t5");
    tiny_sao::t5_folder(&fixture("sao-tiny"), &t5).unwrap();
    let small = tmp.join("small");
    let opts = ImportOptions {
        name: None,
        version: None,
        t5: Some(t5),
    };
    import(&src, &small, &opts).unwrap();
    vec![mel, small]
}

/// `bytes` rewritten as the `/1` writer wrote them: conditioning under bare names.
fn as_v1(bytes: &[u8]) -> Vec<u8> {
    let file = weights::parse_safetensors(bytes, "checkpoint").unwrap();
    let tensors: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .map(|(k, t)| {
            let k = k.strip_prefix("cond.").unwrap_or(k);
            (k.to_string(), t.shallow_clone())
        })
        .collect();
    let mut meta = file.metadata.clone();
    meta.insert("format".into(), "tutti-denoise-state/1".into());
    weights::to_safetensors_bytes(&tensors, Some(meta)).unwrap()
}

fn finish(m: &ServedModel, mut s: DenoiseState) -> Tensor {
    while !s.is_done() {
        m.step_batch(&mut [&mut s]).unwrap();
    }
    s.latent().shallow_clone()
}

#[test]
fn both_families_resume_from_v2_and_v1_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in packs(tmp.path()) {
        let m = ServedModel::load(&dir, Device::Cpu, Precision::Auto).unwrap();
        let mut p = m.default_params("a calm piano", 1.0);
        p.steps = 6;
        p.seed = 4;
        p.variations = 2;
        let mut s = m.prepare(&p).unwrap();
        for _ in 0..3 {
            m.step_batch(&mut [&mut s]).unwrap();
        }
        let bytes = s.to_checkpoint().unwrap();
        let file = weights::parse_safetensors(&bytes, "checkpoint").unwrap();
        assert_eq!(file.metadata["format"], "tutti-denoise-state/2");
        let names: Vec<&String> = file.tensors.keys().collect();
        assert!(
            names
                .iter()
                .all(|k| *k == "latent" || k.starts_with("cond.") || k.starts_with("sampler.")),
            "{} tensors: {names:?}",
            m.family()
        );
        assert!(names.iter().any(|k| k.starts_with("cond.")));

        let whole = finish(
            &m,
            DenoiseState::from_checkpoint(&bytes, Device::Cpu).unwrap(),
        );
        let v1 = DenoiseState::from_checkpoint(&as_v1(&bytes), Device::Cpu).unwrap();
        assert_eq!((v1.step(), v1.params()), (3, &p));
        assert!(
            finish(&m, v1).equal(&whole),
            "{}: a /1 checkpoint resumes differently",
            m.family()
        );
        let other = finish(&m, s);
        assert!(other.equal(&whole));
    }
}

#[test]
fn unknown_formats_and_missing_conditioning_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = &packs(tmp.path())[0];
    let m = ServedModel::load(dir, Device::Cpu, Precision::Auto).unwrap();
    let s = m.prepare(&m.default_params("drums", 1.0)).unwrap();
    let bytes = s.to_checkpoint().unwrap();
    let file = weights::parse_safetensors(&bytes, "checkpoint").unwrap();
    let tensors: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();

    let mut meta = file.metadata.clone();
    meta.insert("format".into(), "tutti-denoise-state/9".into());
    let bytes9 = weights::to_safetensors_bytes(&tensors, Some(meta)).unwrap();
    let err = DenoiseState::from_checkpoint(&bytes9, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tutti-denoise-state/9"), "{err}");
    assert!(err.contains("tutti-denoise-state/2"), "{err}");

    // A /2 checkpoint without the family's conditioning loads (the format names no family's
    // tensors) and the family refuses it by name when it steps.
    let kept: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(k, _)| k != "cond.global_cond")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let bytes = weights::to_safetensors_bytes(&kept, Some(file.metadata.clone())).unwrap();
    let mut s = DenoiseState::from_checkpoint(&bytes, Device::Cpu).unwrap();
    let err = m.step_batch(&mut [&mut s]).unwrap_err().to_string();
    assert!(err.contains("global_cond"), "{err}");
}
