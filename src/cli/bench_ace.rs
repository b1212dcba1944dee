//! `tutti bench ace-step`: the tutti side of the ACE-Step benchmark
//! (`scripts/bench/ace_step.py` runs it beside diffusers' `AceStepPipeline`): one song on an
//! imported pack through the farm's own path (the family's prepare, the shared step loop, the
//! windowed decode), stage by stage; prints one JSON object on stdout and writes the initial
//! latent, the final latent and the audio to `--out` so the driver can give the reference the
//! same noise and compare what both made.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tch::{Device, Tensor};
use tutti_model::device::Precision;
use tutti_model::families;
use tutti_shared::job::Song;

#[derive(Debug, clap::Args)]
pub(crate) struct AceBenchArgs {
    /// An imported ACE-Step pack (`tutti model import`).
    #[arg(long)]
    pack: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    precision: Precision,
    #[arg(long, default_value = "upbeat pop, female vocals, 120 BPM, C major")]
    prompt: String,
    #[arg(
        long,
        default_value = "[verse]\nCity lights are calling me tonight\n[chorus]\nWe run, we run"
    )]
    lyrics: String,
    #[arg(long, default_value_t = 30.0)]
    seconds: f32,
    /// Denoising steps (default: the pack's).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Where to write `noise`, `latent` (both `[1, C, T]`) and `audio` (`[1, 2, samples]`).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) async fn run(a: AceBenchArgs) -> anyhow::Result<()> {
    // libtorch work blocks: keep it off the async workers.
    let report = tokio::task::spawn_blocking(move || bench(&a)).await??;
    println!("{report}");
    Ok(())
}

fn bench(a: &AceBenchArgs) -> anyhow::Result<serde_json::Value> {
    if let Some(n) = a.threads {
        tch::set_num_threads(n);
    }
    let device = tutti_model::device::select(&a.device)?;
    let t = Instant::now();
    let info = families::read_info(&a.pack)?;
    let model = families::load(&info, device, a.precision)?;
    let load_s = t.elapsed().as_secs_f64();

    let mut p = model.default_params(&a.prompt, a.seconds);
    p.seed = a.seed;
    if let Some(s) = a.steps {
        p.steps = s;
    }
    p.song = Some(Song {
        lyrics: a.lyrics.clone(),
        language: "en".into(),
        ..Default::default()
    });
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let t = Instant::now();
    let mut state = model.prepare(&p)?;
    sync();
    let prepare_s = t.elapsed().as_secs_f64();
    let noise = state.latent().copy();
    let mut steps = Vec::new();
    for _ in 0..p.steps {
        let t = Instant::now();
        tutti_model::step::step_batch(&*model, &mut [&mut state])?;
        sync();
        steps.push(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let clips = model.render(&state)?;
    sync();
    let decode_s = t.elapsed().as_secs_f64();
    let clip = clips.first().context("the render made no clip")?;
    let audio = Tensor::from_slice(clip)
        .view([-1, 2])
        .transpose(0, 1)
        .unsqueeze(0)
        .contiguous();
    let tensors = vec![
        ("noise".to_string(), noise),
        ("latent".to_string(), state.latent().to_device(Device::Cpu)),
        ("audio".to_string(), audio),
    ];
    let meta: HashMap<String, String> = [
        ("prompt".to_string(), a.prompt.clone()),
        ("lyrics".to_string(), a.lyrics.clone()),
    ]
    .into();
    let bytes = tutti_model::weights::to_safetensors_bytes(&tensors, Some(meta))?;
    std::fs::write(&a.out, bytes).with_context(|| format!("writing {}", a.out.display()))?;
    let steps_total: f64 = steps.iter().sum();
    Ok(serde_json::json!({
        "side": "tutti",
        "device": a.device,
        "threads": tch::get_num_threads(),
        "seconds": a.seconds,
        "frames": state.latent().size()[2],
        "load_s": load_s,
        "prepare_s": prepare_s,
        "steps_s": steps,
        "denoise_s": steps_total,
        "decode_s": decode_s,
        "total_s": prepare_s + steps_total + decode_s,
        "precision": format!("{:?}", a.precision),
    }))
}
