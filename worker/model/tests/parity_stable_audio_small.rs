//! Parity with stable-audio-tools 0.0.19 on a tiny random checkpoint in the layout Stable Audio
//! Open Small ships (`tests/fixtures/sao-small-tiny/`: `model_config.json` + `model.safetensors`,
//! keys renamed by `model::sat`), and its ping-pong sampler, with the tensors that
//! `scripts/fixtures/stable_audio_small.py` recorded (`tests/fixtures/sao_small_io.safetensors`).

use std::path::PathBuf;

use tch::{nn, Device, Kind, Tensor};
use tutti_model::dit::{DitInput, StableAudioDit};
use tutti_model::oobleck::Oobleck;
use tutti_model::projection::ProjectionModel;
use tutti_model::sampler::{step_noise, PingPong, Sampler, SamplerState};
use tutti_model::sat::{split_checkpoint, SatConfig};
use tutti_model::state::seeded_noise;
use tutti_model::t5::{FixedTokenizer, T5Encoder};
use tutti_model::tensors::TensorSource;
use tutti_model::weights;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn check(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let d = max_abs(a, b);
    println!("{what}: max abs diff {d:.3e}");
    assert!(d < tol, "{what}: max abs diff {d} (tolerance {tol})");
}

struct Small {
    cfg: SatConfig,
    dit: StableAudioDit,
    _vs: nn::VarStore,
    projection: ProjectionModel,
    vae: Oobleck,
    t5: T5Encoder,
    tokenizer: FixedTokenizer,
}

fn load() -> Small {
    let dir = fixture("sao-small-tiny");
    let cfg = SatConfig::load(&dir.join("model_config.json")).unwrap();
    let path = dir.join("model.safetensors");
    let file = weights::read_safetensors(&path).unwrap();
    let source = path.display().to_string();
    let parts = split_checkpoint(file.tensors, cfg.vae.downsampling_ratios.len(), &source).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let dit = StableAudioDit::new(vs.root(), &cfg.dit);
    weights::load_strict(&vs, &parts.dit, &source, &|_| false).unwrap();
    let mut src = TensorSource::new(&source, parts.projection, Device::Cpu, Kind::Float);
    let projection = ProjectionModel::from_source(&cfg.projection, &mut src, false).unwrap();
    src.finish().unwrap();
    let mut src = TensorSource::new(&source, parts.vae, Device::Cpu, Kind::Float);
    let vae = Oobleck::from_source(&cfg.vae, &mut src, false).unwrap();
    src.finish().unwrap();
    let t5 = T5Encoder::load(&fixture("sao-tiny/text_encoder"), Device::Cpu).unwrap();
    let tokenizer =
        FixedTokenizer::load(&fixture("sao-tiny/tokenizer"), Some(cfg.text_max_length)).unwrap();
    Small {
        cfg,
        dit,
        _vs: vs,
        projection,
        vae,
        t5,
        tokenizer,
    }
}

fn io() -> (
    std::collections::BTreeMap<String, Tensor>,
    std::collections::HashMap<String, String>,
) {
    let f = weights::read_safetensors(&fixture("sao_small_io.safetensors")).unwrap();
    (f.tensors, f.metadata)
}

#[test]
fn config_reads_as_the_small_layout() {
    let m = load();
    let d = &m.cfg.dit;
    assert_eq!((d.sample_size, d.in_channels, d.num_layers), (16, 4, 2));
    assert_eq!((d.attention_head_dim, d.num_attention_heads), (64, 1));
    assert_eq!(d.num_key_value_attention_heads, d.num_attention_heads);
    assert_eq!((d.cross_attention_dim, d.time_proj_dim), (64, 256));
    assert_eq!(
        (d.global_states_input_dim, d.cross_attention_input_dim),
        (16, 16)
    );
    assert_eq!(m.cfg.vae.hop_length(), 8);
    assert_eq!(m.cfg.text_max_length, 12);
    assert_eq!(m.cfg.projection.max_value, 32.0);
}

#[test]
fn conditioning_and_dit_match_stable_audio_tools() {
    let _g = tch::no_grad_guard();
    let m = load();
    let (t, meta) = io();
    let prompts: Vec<String> = serde_json::from_str(&meta["prompts"]).unwrap();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let b = refs.len() as i64;
    let (ids, mask) = m.tokenizer.tokenize(&refs).unwrap();
    let total: f64 = meta["total_s"].parse().unwrap();
    let total = Tensor::full([b], total, (Kind::Float, Device::Cpu));
    let cond = m
        .projection
        .condition(&m.t5.forward(&ids, &mask), &mask, &total, &total);
    check("cross", &cond.cross, &t["cond.cross"], 1e-5);
    check("global", &cond.global, &t["cond.global"].unsqueeze(1), 1e-5);
    let x = &t["dit.x"];
    let rotary = m.dit.rotary(x.size()[2], Device::Cpu);
    let out = m.dit.forward(&DitInput {
        hidden_states: x,
        timestep: &t["dit.t"],
        encoder_hidden_states: &t["cond.cross"],
        global_hidden_states: &t["cond.global"],
        rotary: &rotary,
        attention_mask: None,
        encoder_attention_mask: None,
    });
    check(
        "dit forward (stable-audio-tools layout)",
        &out,
        &t["dit.out"],
        1e-4,
    );
}

#[test]
fn pingpong_steps_match_stable_audio_tools() {
    let _g = tch::no_grad_guard();
    let (t, meta) = io();
    let n: usize = meta["steps"].parse().unwrap();
    let s = PingPong::new(n).unwrap();
    assert!(s.is_stochastic() && s.init_noise_sigma() == 1.0);
    for i in 0..=n {
        let want = t["pp.t"].double_value(&[i as i64]);
        assert_eq!(s.time(i), want, "time {i}");
    }
    let (samples, mo, noise) = (&t["pp.samples"], &t["pp.model_out"], &t["pp.noise"]);
    let mut x = samples.get(0);
    let mut st = SamplerState::default();
    for i in 0..n {
        let k = i as i64;
        x = s.step_with_noise(i, &x, &mo.get(k), &mut st, &noise.get(k + 1));
        check(
            &format!("ping-pong step {i}"),
            &x,
            &samples.get(k + 1),
            1e-6,
        );
    }
}

/// Prompts and seeds to audio, natively: T5, seconds_total, DiT, ping-pong with seeded noise, VAE.
#[test]
fn end_to_end_matches_stable_audio_tools() {
    let _g = tch::no_grad_guard();
    let m = load();
    let (t, meta) = io();
    let prompts: Vec<String> = serde_json::from_str(&meta["prompts"]).unwrap();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let seeds: Vec<u64> = serde_json::from_str(&meta["seeds"]).unwrap();
    let n: usize = meta["steps"].parse().unwrap();
    let b = refs.len() as i64;
    let (ids, mask) = m.tokenizer.tokenize(&refs).unwrap();
    let total: f64 = meta["total_s"].parse().unwrap();
    let total = Tensor::full([b], total, (Kind::Float, Device::Cpu));
    let cond = m
        .projection
        .condition(&m.t5.forward(&ids, &mask), &mask, &total, &total);
    let (c, frames) = (m.cfg.dit.in_channels, m.cfg.dit.sample_size);
    let rows: Vec<Tensor> = seeds
        .iter()
        .map(|&s| seeded_noise(s, &[1, c, frames]))
        .collect();
    let mut x = Tensor::cat(&rows, 0);
    check("initial noise", &x, &t["pp.noise"].get(0), 1e-9);
    let s = PingPong::new(n).unwrap();
    let rotary = m.dit.rotary(frames, Device::Cpu);
    let mut st = SamplerState::default();
    for i in 0..n {
        let ts = Tensor::full([b], s.model_timestep(i), (Kind::Float, Device::Cpu));
        let v = m.dit.forward(&DitInput {
            hidden_states: &s.scale_model_input(&x, i),
            timestep: &ts,
            encoder_hidden_states: &cond.cross,
            global_hidden_states: &cond.global,
            rotary: &rotary,
            attention_mask: None,
            encoder_attention_mask: None,
        });
        x = s.step_with_noise(i, &x, &v, &mut st, &step_noise(&seeds, i, &[c, frames]));
        check(
            &format!("step {i}"),
            &x,
            &t["pp.samples"].get(i as i64 + 1),
            1e-4,
        );
    }
    check("decoded audio", &m.vae.decode(&x), &t["audio"], 1e-4);
}

#[test]
fn unknown_checkpoint_keys_are_errors() {
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "conditioner.conditioners.prompt.proj_out.weight".to_string(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    );
    let e = split_checkpoint(tensors, 2, "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conditioner.conditioners.prompt.proj_out.weight")
            && e.contains("model.safetensors"),
        "{e}"
    );
}
