//! End-to-end tests of the pipeline on a tiny random pack.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use tch::{Device, Tensor};
use tutti_model::pack::{self, PackConfig};
use tutti_model::pipeline::{DenoiseState, GenerationParams, Pipeline};
use tutti_model::sampler::{Prediction, SamplerKind};
use tutti_model::text_encoder::TextEncoderConfig;
use tutti_model::tiny::{tiny_config, write_pack_with, write_tiny_pack};
use tutti_model::weights;
use tutti_model::Family;
use tutti_model::ModelError;
use tutti_shared::prompt::{Controls, Mode};

fn tiny_pipeline() -> anyhow::Result<(tempfile::TempDir, Pipeline)> {
    let dir = tempfile::tempdir()?;
    write_tiny_pack(dir.path(), 1)?;
    let p = Pipeline::load(dir.path(), Device::Cpu)?;
    Ok((dir, p))
}

fn params(prompt: &str, seed: u64) -> GenerationParams {
    GenerationParams {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        controls: Controls {
            duration_s: 2.0,
            bpm: Some(120.0),
            key: Some(9),
            mode: Some(Mode::Minor),
        },
        seed,
        steps: 8,
        guidance_scale: 3.0,
        sampler: SamplerKind::FlowEuler,
        variations: 1,
        song: None,
        varispeed: None,
    }
}

fn run(p: &Pipeline, params: &GenerationParams) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut s = p.prepare(params)?;
    p.denoise(&mut s, params.steps, &mut |_| ControlFlow::Continue(()))?;
    Ok(p.render(&s)?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn pipeline_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pipeline>();
    fn check_send<T: Send>() {}
    check_send::<DenoiseState>();
}

#[test]
fn two_seconds_end_to_end() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (_dir, p) = tiny_pipeline()?;
    let loaded = t0.elapsed();
    let t1 = Instant::now();
    let mut pr = params("warm lo-fi piano, 75 BPM", 42);
    pr.variations = 2;
    let mut steps_seen = Vec::new();
    let mut s = p.prepare(&pr)?;
    p.denoise(&mut s, 8, &mut |i| {
        steps_seen.push(i);
        ControlFlow::Continue(())
    })?;
    let audio = p.render(&s)?;
    println!(
        "tiny pack: write+load {loaded:?}, generate 2 x 2 s with 8 steps {:?}",
        t1.elapsed()
    );
    assert_eq!(steps_seen, (1..=8).collect::<Vec<_>>());
    assert_eq!(audio.len(), 2);
    for w in &audio {
        assert_eq!(w.len(), 32000);
        assert!(w.iter().all(|x| x.is_finite()));
        assert!(w.iter().any(|&x| x != 0.0));
    }
    assert_ne!(audio[0], audio[1], "variations must differ");
    // Cancellation: Break after the first step.
    let mut s = p.prepare(&pr)?;
    let reached = p.denoise(&mut s, 8, &mut |_| ControlFlow::Break(()))?;
    assert_eq!((reached, s.step()), (1, 1));
    assert!(!pack::inspect(_dir.path())?.is_empty());
    Ok(())
}

#[test]
fn same_seed_same_audio() -> anyhow::Result<()> {
    let (_dir, p) = tiny_pipeline()?;
    let a = run(&p, &params("ambient drone", 7))?;
    let b = run(&p, &params("ambient drone", 7))?;
    assert!(a == b, "same seed must give bit-identical audio");
    let c = run(&p, &params("ambient drone", 8))?;
    assert!(a != c);
    // A fresh load of a pack written with the same seed gives the same audio too.
    let (_dir2, p2) = tiny_pipeline()?;
    assert!(a == run(&p2, &params("ambient drone", 7))?);
    Ok(())
}

fn chunked_equals_unchunked(sampler: SamplerKind, prediction: Prediction) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = tiny_config();
    cfg.schedule.prediction = prediction;
    write_pack_with(dir.path(), 1, &cfg, &TextEncoderConfig::tiny())?;
    let p = Pipeline::load(dir.path(), Device::Cpu)?;
    let mut pr = params("funky disco groove", 3);
    pr.sampler = sampler;
    let whole = run(&p, &pr)?;
    let mut s = p.prepare(&pr)?;
    p.denoise(&mut s, 3, &mut |_| ControlFlow::Continue(()))?;
    let bytes = s.to_checkpoint()?;
    drop(s);
    let mut s = DenoiseState::from_checkpoint(&bytes, Device::Cpu)?;
    assert_eq!(s.step(), 3);
    assert_eq!(s.params(), &pr);
    p.denoise(&mut s, 8, &mut |_| ControlFlow::Continue(()))?;
    let chunked = p.render(&s)?;
    assert!(
        whole == chunked,
        "{sampler:?}: chunked (0..3, checkpoint, 3..8) differs from unchunked"
    );
    Ok(())
}

#[test]
fn chunked_equals_unchunked_flow_euler() -> anyhow::Result<()> {
    chunked_equals_unchunked(SamplerKind::FlowEuler, Prediction::Flow)
}

#[test]
fn chunked_equals_unchunked_multistep() -> anyhow::Result<()> {
    chunked_equals_unchunked(SamplerKind::DpmSolverPp2m, Prediction::Epsilon)
}

/// Runs job a (2 s, 2 variations) and job b (`b_duration`, a shorter prompt, two steps ahead)
/// batched and alone for three steps; returns the max abs differences of their latents.
fn batched_vs_alone(p: &Pipeline, b_duration: f32) -> anyhow::Result<(f64, f64)> {
    let mut a_params = params(
        "epic orchestral trailer with thundering drums and brass",
        11,
    );
    a_params.variations = 2;
    let mut b_params = params("jazz", 99);
    b_params.controls = Controls {
        duration_s: b_duration,
        bpm: None,
        key: None,
        mode: None,
    };
    b_params.guidance_scale = 5.0;
    b_params.negative_prompt = "distorted, noisy".into();

    let mut a = p.prepare(&a_params)?;
    let mut b = p.prepare(&b_params)?;
    p.denoise(&mut b, 2, &mut |_| ControlFlow::Continue(()))?; // different steps
    let mut a_alone = DenoiseState::from_checkpoint(&a.to_checkpoint()?, Device::Cpu)?;
    let mut b_alone = DenoiseState::from_checkpoint(&b.to_checkpoint()?, Device::Cpu)?;
    for _ in 0..3 {
        p.step_batch(&mut [&mut a, &mut b])?;
        p.step_batch(&mut [&mut a_alone])?;
        p.step_batch(&mut [&mut b_alone])?;
    }
    assert_eq!((a.step(), b.step()), (3, 5));
    let (da, db) = (
        max_diff(a.latent(), a_alone.latent()),
        max_diff(b.latent(), b_alone.latent()),
    );
    println!(
        "job b {b_duration} s: batched vs alone after 3 steps: job a max abs diff {da:e}, job b {db:e} \
         (latent max {}); bit-identical: a {}, b {}",
        a_alone.latent().abs().max().double_value(&[]),
        a.latent() == a_alone.latent(),
        b.latent() == b_alone.latent()
    );
    Ok((da, db))
}

#[test]
fn batch_of_two_jobs_equals_each_alone() -> anyhow::Result<()> {
    let (_dir, p) = tiny_pipeline()?;
    // Same latent length, different text lengths, steps, guidance scales and variation counts.
    // Bit for bit (text padded to its bucket, whatever the other prompt's length).
    let (da, db) = batched_vs_alone(&p, 2.0)?;
    assert_eq!((da, db), (0.0, 0.0));
    // Different latent lengths too (b is padded and masked in self-attention).
    let (da, db) = batched_vs_alone(&p, 1.5)?;
    assert!(da < 1e-4 && db < 1e-4);
    Ok(())
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<(String, Tensor)>)) -> anyhow::Result<()> {
    let file = weights::read_safetensors(path)?;
    let mut tensors: Vec<(String, Tensor)> = file.tensors.into_iter().collect();
    f(&mut tensors);
    std::fs::write(path, weights::to_safetensors_bytes(&tensors, None)?)?;
    Ok(())
}

fn load_error(dir: &Path) -> String {
    match Pipeline::load(dir, Device::Cpu) {
        Ok(_) => panic!("loading a broken pack succeeded"),
        Err(e) => {
            println!("{e}");
            e.to_string()
        }
    }
}

#[test]
fn broken_packs_give_clear_errors() -> anyhow::Result<()> {
    let fresh = || -> anyhow::Result<tempfile::TempDir> {
        let d = tempfile::tempdir()?;
        write_tiny_pack(d.path(), 5)?;
        Ok(d)
    };
    let dit = |d: &tempfile::TempDir| d.path().join(pack::DENOISER_FILE);

    let d = fresh()?;
    rewrite(&dit(&d), |t| {
        t.push((
            "transformer_blocks.9.attn1.to_q.weight".into(),
            Tensor::zeros([2, 2], (tch::Kind::Float, Device::Cpu)),
        ))
    })?;
    let e = load_error(d.path());
    assert!(
        e.contains("transformer_blocks.9.attn1.to_q.weight") && e.contains("unknown key"),
        "{e}"
    );

    let d = fresh()?;
    rewrite(&dit(&d), |t| t.retain(|(k, _)| k != "proj_out.weight"))?;
    let e = load_error(d.path());
    assert!(
        e.contains("proj_out.weight") && e.contains("missing"),
        "{e}"
    );

    let d = fresh()?;
    rewrite(&dit(&d), |t| {
        for (k, v) in t.iter_mut() {
            if k == "proj_in.weight" {
                *v = Tensor::zeros([3, 3], (tch::Kind::Float, Device::Cpu));
            }
        }
    })?;
    let e = load_error(d.path());
    assert!(
        e.contains("proj_in.weight") && e.contains("wrong shape"),
        "{e}"
    );

    let d = fresh()?;
    std::fs::remove_file(d.path().join(pack::CONDITIONERS_FILE))?;
    let e = load_error(d.path());
    assert!(
        e.contains(pack::CONDITIONERS_FILE) && e.contains("missing"),
        "{e}"
    );

    let d = fresh()?;
    std::fs::remove_file(dit(&d))?;
    let e = load_error(d.path());
    assert!(
        e.contains(pack::DENOISER_FILE) && e.contains("missing"),
        "{e}"
    );

    let d = fresh()?;
    std::fs::remove_file(d.path().join("text_encoder/tokenizer.json"))?;
    let e = load_error(d.path());
    assert!(e.contains("tokenizer.json"), "{e}");

    let d = fresh()?;
    let mut cfg = PackConfig::read(d.path())?;
    cfg.denoiser.global_states_input_dim += 1;
    std::fs::write(d.path().join(pack::CONFIG_FILE), cfg.to_toml()?)?;
    let e = load_error(d.path());
    assert!(e.contains("global_states_input_dim"), "{e}");

    let e = match Pipeline::load(Path::new("/nonexistent/pack"), Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("loaded a missing pack"),
    };
    assert!(
        matches!(e, ModelError::Pack { .. }) && e.to_string().contains("model.toml"),
        "{e}"
    );
    Ok(())
}

#[test]
fn batches_of_every_size_equal_each_alone() -> anyhow::Result<()> {
    let (_dir, p) = tiny_pipeline()?;
    let prompts = [
        "warm lo-fi piano",
        "epic orchestral trailer with drums",
        "jazz",
        "ambient drone, slow",
        "funky disco groove",
        "bright ukulele",
    ];
    for n in 2..=prompts.len() {
        let mut batched = Vec::new();
        let mut alone = Vec::new();
        for (i, prompt) in prompts[..n].iter().enumerate() {
            let mut pr = params(prompt, i as u64);
            pr.guidance_scale = 1.0 + i as f64;
            let s = p.prepare(&pr)?;
            alone.push(DenoiseState::from_checkpoint(
                &s.to_checkpoint()?,
                Device::Cpu,
            )?);
            batched.push(s);
        }
        for _ in 0..3 {
            p.step_batch(&mut batched.iter_mut().collect::<Vec<_>>())?;
            for s in alone.iter_mut() {
                p.step_batch(&mut [s])?;
            }
        }
        for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
            let d = max_diff(b.latent(), a.latent());
            println!("batch of {n}: state {i} max abs diff {d:e}");
            assert_eq!(d, 0.0, "batch of {n}: state {i} differs");
        }
    }
    Ok(())
}
