//! `tutti model import` for the Stable Audio family: the tiny diffusers and stable-audio-tools
//! folders import into packs that load and compute what the references computed; folders with the
//! real models' sizes (headers only, from `scripts/fixtures/stable_audio_shapes.py`, made into
//! sparse files here) pass the importer's checks; broken folders fail naming the file and key.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tutti_model::dit::DitInput;
use tutti_model::sampler::SamplerKind;
use tutti_model::stable_audio::{import, ImportOptions, Layout, StableAudioModel};
use tutti_model::stable_audio_run::SaoRequest;
use tutti_model::{families, weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn opts(t5: Option<PathBuf>) -> ImportOptions {
    ImportOptions {
        name: None,
        version: None,
        t5,
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A t5-base-style folder (weights and tokenizer together) from sao-tiny's two folders.
fn t5_folder(tmp: &Path) -> PathBuf {
    let d = tmp.join("t5");
    std::fs::create_dir_all(&d).unwrap();
    let tiny = fixture("sao-tiny");
    for (dir, f) in [
        ("text_encoder", "config.json"),
        ("text_encoder", "model.safetensors"),
        ("tokenizer", "tokenizer.json"),
        ("tokenizer", "tokenizer_config.json"),
    ] {
        std::os::unix::fs::symlink(tiny.join(dir).join(f), d.join(f)).unwrap();
    }
    d
}

#[test]
fn the_diffusers_folder_imports_and_loads() {
    let _g = tch::no_grad_guard();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pack");
    let p = import(&fixture("sao-tiny"), &out, &opts(None)).unwrap();
    assert_eq!(p.model.layout, Layout::Diffusers);
    assert_eq!(p.model.name, "stable-audio-open-1.0");
    assert_eq!(p.defaults.sampler, SamplerKind::CosineDpmSolverPp2mSde);
    assert_eq!((p.defaults.steps, p.defaults.guidance_scale), (100, 7.0));
    let text = families::inspect(&out).unwrap();
    assert!(text.contains("family: stable_audio"), "{text}");
    assert!(text.contains("seconds_start, seconds_total"), "{text}");
    // A second import into the same pack is refused.
    assert!(import(&fixture("sao-tiny"), &out, &opts(None)).is_err());

    let m = StableAudioModel::load(&out, Device::Cpu, Kind::Float, true).unwrap();
    let io = weights::read_safetensors(&fixture("sao_tiny_io.safetensors")).unwrap();
    let t = &io.tensors;
    let (ids, mask) = m
        .tokenizer
        .tokenize(&["a calm piano", "fast drums and bass with warm guitars xyz"])
        .unwrap();
    assert!(ids.equal(&t["tok.input_ids"]));
    let b = ids.size()[0];
    let secs = |v: f64| Tensor::full([b], v, (Kind::Float, Device::Cpu));
    let cond = m
        .projection
        .condition(&m.t5.forward(&ids, &mask), &mask, &secs(0.5), &secs(1.5));
    let cfg = cond.unconditional().cat(&cond);
    assert!(max_abs(&cfg.cross, &t["cond.encoder_hidden_states"]) < 1e-5);
    let n = t["sde.samples"].size()[0] - 1;
    let audio = m.vae.decode(&t["sde.samples"].get(n));
    assert!(max_abs(&audio, &t["audio.full"]) < 1e-5);
    let (mean, _) = m.vae.encode(&t["vae.enc_in"]).unwrap();
    assert!(max_abs(&mean, &t["vae.enc_mean"]) < 1e-5);
}

#[test]
fn the_stable_audio_tools_folder_imports_and_loads() {
    let _g = tch::no_grad_guard();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pack");
    let e = import(&fixture("sao-small-tiny"), &out, &opts(None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--t5"), "{e}");
    let t5 = t5_folder(tmp.path());
    let p = import(&fixture("sao-small-tiny"), &out, &opts(Some(t5))).unwrap();
    assert_eq!(p.model.layout, Layout::StableAudioTools);
    assert_eq!(p.defaults.sampler, SamplerKind::PingPong);
    assert_eq!((p.defaults.steps, p.defaults.guidance_scale), (8, 1.0));
    let m = StableAudioModel::load(&out, Device::Cpu, Kind::Float, false).unwrap();
    assert_eq!(m.tokenizer.max_length(), 12);
    let io = weights::read_safetensors(&fixture("sao_small_io.safetensors")).unwrap();
    let t = &io.tensors;
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
        frame_states: None,
    });
    assert!(max_abs(&out, &t["dit.out"]) < 1e-4);
}

/// Copies a shapes fixture, turning each `X.header.json` into a sparse safetensors file `X` of
/// the full size (its data reads as zeros and is never read).
fn materialize(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let (path, name) = (entry.path(), entry.file_name().into_string().unwrap());
        if path.is_dir() {
            materialize(&path, &dst.join(&name));
        } else if let Some(weights) = name.strip_suffix(".header.json") {
            write_sparse(&std::fs::read(&path).unwrap(), &dst.join(weights));
        } else {
            std::fs::copy(&path, dst.join(&name)).unwrap();
        }
    }
}

fn write_sparse(header: &[u8], path: &Path) {
    let h: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).unwrap();
    let end = h
        .values()
        .filter_map(|v| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(bytes.len() as u64 + end).unwrap();
}

fn edit_header(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    use std::io::Read;
    // The header only: the rest is gigabytes of (sparse) zeros.
    let mut file = std::fs::File::open(path).unwrap();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    file.read_exact(&mut header).unwrap();
    let mut h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).unwrap();
    f(&mut h);
    write_sparse(&serde_json::to_vec(&h).unwrap(), path);
}

#[test]
fn folders_of_the_real_sizes_pass_the_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let shapes = fixture("sao-shapes");
    let big = tmp.path().join("open-1.0");
    materialize(&shapes.join("open-1.0"), &big);
    let p = import(&big, &tmp.path().join("pack-1.0"), &opts(None)).unwrap();
    assert_eq!(p.model.layout, Layout::Diffusers);
    let text = families::inspect(&tmp.path().join("pack-1.0")).unwrap();
    assert!(
        text.contains("24 layers, 24 heads x 64 (kv heads 12)"),
        "{text}"
    );
    assert!(
        text.contains("44100 Hz, 2 channels, window 47.55 s"),
        "{text}"
    );
    assert!(text.contains("128 tokens"), "{text}");

    let small = tmp.path().join("open-small");
    materialize(&shapes.join("open-small"), &small);
    let p = import(
        &small,
        &tmp.path().join("pack-small"),
        &opts(Some(small.join("t5-base"))),
    )
    .unwrap();
    assert_eq!(p.model.layout, Layout::StableAudioTools);
    let text = families::inspect(&tmp.path().join("pack-small")).unwrap();
    assert!(
        text.contains(
            "16 layers, 8 heads x 128 (kv heads 8), cross-attention 1024 <- 768, global 768"
        ),
        "{text}"
    );
    assert!(text.contains("window 11.89 s"), "{text}");
    assert!(
        text.contains("64 tokens") && text.contains("seconds_total in [0, 256]"),
        "{text}"
    );
}

#[test]
fn broken_folders_fail_naming_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    materialize(&fixture("sao-shapes/open-1.0"), &src);
    let vae = src.join("vae/diffusion_pytorch_model.safetensors");
    let dit = src.join("transformer/diffusion_pytorch_model.safetensors");
    let t5 = src.join("text_encoder/model.safetensors");
    let attempt = |n: &str| match import(&src, &tmp.path().join(n), &opts(None)) {
        Ok(_) => panic!("import {n} of a broken folder succeeded"),
        Err(e) => e.to_string(),
    };

    edit_header(&vae, |h| {
        h.remove("decoder.block.2.res_unit3.conv2.weight_g");
    });
    let e = attempt("a");
    assert!(
        e.contains("decoder.block.2.res_unit3.conv2.weight_g")
            && e.contains("missing")
            && e.contains("vae/diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    materialize(&fixture("sao-shapes/open-1.0"), &src);

    edit_header(&dit, |h| {
        h["transformer_blocks.3.attn2.to_k.weight"]["shape"] = serde_json::json!([384, 768]);
    });
    let e = attempt("b");
    assert!(
        e.contains("transformer_blocks.3.attn2.to_k.weight") && e.contains("wrong shape"),
        "{e}"
    );
    materialize(&fixture("sao-shapes/open-1.0"), &src);

    edit_header(&t5, |h| {
        let v = h["shared.weight"].clone();
        h.insert(
            "encoder.block.0.layer.0.SelfAttention.extra.weight".into(),
            v,
        );
    });
    let e = attempt("c");
    assert!(
        e.contains("SelfAttention.extra.weight")
            && e.contains("unexpected")
            && e.contains("text_encoder/model.safetensors"),
        "{e}"
    );
    materialize(&fixture("sao-shapes/open-1.0"), &src);

    // A truncated download.
    let f = std::fs::OpenOptions::new().write(true).open(&dit).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 1).unwrap();
    let e = attempt("d");
    assert!(
        e.contains("truncated") && e.contains("transformer/diffusion_pytorch_model.safetensors"),
        "{e}"
    );
}

fn request(
    prompts: &[&str],
    seeds: &[u64],
    start: f64,
    total: f64,
    steps: usize,
    g: f64,
    s: SamplerKind,
) -> SaoRequest {
    SaoRequest {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        negative_prompts: None,
        seeds: seeds.to_vec(),
        seconds_start: start,
        seconds_total: total,
        steps,
        guidance_scale: g,
        sampler: s,
    }
}

/// The request API end to end on the imported SAO 1.0 pack: the pipeline's cropped audio.
#[test]
fn generate_matches_the_diffusers_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pack");
    import(&fixture("sao-tiny"), &out, &opts(None)).unwrap();
    let m = StableAudioModel::load(&out, Device::Cpu, Kind::Float, false).unwrap();
    let io = weights::read_safetensors(&fixture("sao_tiny_io.safetensors")).unwrap();
    let prompts: Vec<String> = serde_json::from_str(&io.metadata["prompts"]).unwrap();
    let p: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let r = request(
        &p,
        &[11, 12],
        0.5,
        1.5,
        8,
        7.0,
        SamplerKind::CosineDpmSolverPp2mSde,
    );
    let audio = m.generate(&r).unwrap();
    let d = max_abs(&audio, &io.tensors["audio.cropped"]);
    println!("generate vs StableAudioPipeline: max abs diff {d:.3e}");
    assert!(d < 1e-4, "{d}");
    assert!(audio.equal(&m.generate(&r).unwrap()), "not deterministic");

    let mut bad = r.clone();
    bad.seconds_total = 3.0;
    assert!(m.generate(&bad).unwrap_err().to_string().contains("window"));
    bad = r.clone();
    bad.seeds = vec![1];
    assert!(m.prepare(&bad).unwrap_err().to_string().contains("seeds"));
    bad = r;
    bad.sampler = SamplerKind::PingPong;
    assert!(m.prepare(&bad).is_err(), "ping-pong needs a flow model");
}

/// The request API end to end on the imported SAO Small pack: stable-audio-tools' ping-pong run.
#[test]
fn generate_matches_stable_audio_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pack");
    import(
        &fixture("sao-small-tiny"),
        &out,
        &opts(Some(t5_folder(tmp.path()))),
    )
    .unwrap();
    let m = StableAudioModel::load(&out, Device::Cpu, Kind::Float, false).unwrap();
    let io = weights::read_safetensors(&fixture("sao_small_io.safetensors")).unwrap();
    let prompts: Vec<String> = serde_json::from_str(&io.metadata["prompts"]).unwrap();
    let p: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let total: f64 = io.metadata["total_s"].parse().unwrap();
    let r = request(&p, &[11, 12], 0.0, total, 8, 1.0, SamplerKind::PingPong);
    let audio = m.generate(&r).unwrap();
    let n = (total * 64.0) as i64;
    let d = max_abs(&audio, &io.tensors["audio"].narrow(2, 0, n));
    println!("generate vs stable-audio-tools: max abs diff {d:.3e}");
    assert!(d < 1e-4, "{d}");
}
