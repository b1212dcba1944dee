//! Stable Audio packs on the farm's path (`ServedModel`): imported from tiny random folders at
//! 44.1 kHz stereo (`tiny_sao`), they render stereo clips of the asked length; a job stopped at a
//! checkpoint and resumed equals a one-shot run bit for bit (the stochastic samplers' noise comes
//! from the seed and the step); the farm path computes what `StableAudioModel::generate` does;
//! states stepped in one forward equal each stepped alone; the background renderer renders
//! what the pipeline renders.

use std::path::{Path, PathBuf};

use tch::Device;
use tutti_model::device::Precision;
use tutti_model::sampler::SamplerKind;
use tutti_model::served::{ServedModel, ServedRenderer};
use tutti_model::stable_audio::{import, ImportOptions, StableAudioModel};
use tutti_model::stable_audio_run::SaoRequest;
use tutti_model::state::{DenoiseState, GenerationParams};
use tutti_model::tiny_sao;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// 32 latent frames of hop 2048 at 44.1 kHz: a 1.48 s window.
const FRAMES: i64 = 32;

fn small_pack(tmp: &Path) -> PathBuf {
    let src = tmp.join("small-src");
    tiny_sao::sat_folder(&fixture("sao-small-tiny"), &src, FRAMES).unwrap();
    let t5 = tmp.join("t5");
    tiny_sao::t5_folder(&fixture("sao-tiny"), &t5).unwrap();
    let out = tmp.join("models/small");
    let opts = ImportOptions {
        name: None,
        version: None,
        t5: Some(t5),
    };
    import(&src, &out, &opts).unwrap();
    out
}

fn open_pack(tmp: &Path) -> PathBuf {
    let src = tmp.join("open-src");
    tiny_sao::diffusers_folder(&fixture("sao-tiny"), &src, FRAMES).unwrap();
    let out = tmp.join("models/open");
    let opts = ImportOptions {
        name: None,
        version: None,
        t5: None,
    };
    import(&src, &out, &opts).unwrap();
    out
}

fn run(m: &ServedModel, p: &GenerationParams) -> DenoiseState {
    let mut s = m.prepare(p).unwrap();
    while !s.is_done() {
        m.step_batch(&mut [&mut s]).unwrap();
    }
    s
}

/// `split` steps, a checkpoint round trip, the rest.
fn run_chunked(m: &ServedModel, p: &GenerationParams, split: usize) -> DenoiseState {
    let mut s = m.prepare(p).unwrap();
    for _ in 0..split {
        m.step_batch(&mut [&mut s]).unwrap();
    }
    let bytes = s.to_checkpoint().unwrap();
    let mut s = DenoiseState::from_checkpoint(&bytes, Device::Cpu).unwrap();
    while !s.is_done() {
        m.step_batch(&mut [&mut s]).unwrap();
    }
    s
}

#[test]
fn small_renders_stereo_44k_and_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = small_pack(tmp.path());
    let m = ServedModel::load(&dir, Device::Cpu, Precision::Auto).unwrap();
    assert_eq!(m.family(), "stable_audio");
    assert_eq!(m.model_id(), "stable-audio-open-small@1.0");
    assert_eq!((m.sample_rate(), m.channels()), (44100, 2));
    let mut p = m.default_params("a calm piano", 1.2);
    assert_eq!(
        (p.sampler, p.steps, p.guidance_scale),
        (SamplerKind::PingPong, 8, 1.0)
    );
    p.seed = 11;
    p.variations = 2;
    let whole = run(&m, &p);
    let chunked = run_chunked(&m, &p, 3);
    assert!(whole.latent().equal(chunked.latent()));
    let audio = m.render(&whole).unwrap();
    assert_eq!(audio, m.render(&chunked).unwrap());
    assert_eq!((audio.channels, audio.sample_rate), (2, 44100));
    assert_eq!(audio.waveforms.len(), 2);
    let frames = (1.2f64 * 44100.0).floor() as usize;
    for w in &audio.waveforms {
        assert_eq!(w.len(), 2 * frames);
        assert!(w.iter().all(|x| x.is_finite()));
        let (l, r): (Vec<f32>, Vec<f32>) = w.chunks(2).map(|f| (f[0], f[1])).unzip();
        assert!(l.iter().any(|x| x.abs() > 1e-4), "left channel is silent");
        assert_ne!(l, r, "the channels are not two");
    }
    assert_ne!(audio.waveforms[0], audio.waveforms[1], "variations differ");
    // The background renderer (VAE alone) renders the same audio.
    let r = ServedRenderer::load(&dir, Device::Cpu, Precision::Auto).unwrap();
    assert_eq!(r.render(&whole).unwrap(), audio);

    // The farm path is the model's own run: same latent as `generate` from the same seed.
    let sao = StableAudioModel::load(&dir, Device::Cpu, tch::Kind::Float, false).unwrap();
    let mut st = sao
        .prepare(&SaoRequest {
            prompts: vec![p.prompt.clone()],
            negative_prompts: None,
            seeds: vec![p.seed],
            seconds_start: 0.0,
            seconds_total: 1.2f32 as f64,
            steps: p.steps,
            guidance_scale: p.guidance_scale,
            sampler: p.sampler,
        })
        .unwrap();
    while !st.is_done() {
        sao.step(&mut st).unwrap();
    }
    assert!(st.latent().equal(&whole.latent().narrow(0, 0, 1)));
}

#[test]
fn open_guided_sde_resumes_and_batches_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = open_pack(tmp.path());
    let m = ServedModel::load(&dir, Device::Cpu, Precision::Auto).unwrap();
    assert_eq!(m.model_id(), "stable-audio-open-1.0@1.0");
    let mut p = m.default_params("fast drums and bass", 1.0);
    assert_eq!(
        (p.sampler, p.guidance_scale),
        (SamplerKind::CosineDpmSolverPp2mSde, 7.0)
    );
    p.steps = 6;
    p.seed = 3;
    p.negative_prompt = "a calm piano".into();
    let whole = run(&m, &p);
    assert!(whole.latent().equal(run_chunked(&m, &p, 4).latent()));
    let audio = m.render(&whole).unwrap();
    assert_eq!(audio.waveforms[0].len(), 2 * 44100);

    // Two jobs at different steps, guidance and samplers in one forward each step: the same
    // latents as each alone.
    let mut q = m.default_params("a calm piano", 1.4);
    q.sampler = SamplerKind::CosineDpmSolverPp2m;
    q.guidance_scale = 1.0;
    q.steps = 4;
    q.seed = 9;
    let (mut a, mut b) = (m.prepare(&p).unwrap(), m.prepare(&q).unwrap());
    m.step_batch(&mut [&mut a]).unwrap();
    m.step_batch(&mut [&mut a]).unwrap();
    assert_eq!(m.batch_shape(&a), m.batch_shape(&b));
    assert!(
        m.forward_bytes(&a) > m.forward_bytes(&b),
        "guidance doubles the rows"
    );
    while !b.is_done() {
        m.step_batch(&mut [&mut a, &mut b]).unwrap();
    }
    while !a.is_done() {
        m.step_batch(&mut [&mut a]).unwrap();
    }
    assert!(a.latent().equal(whole.latent()));
    assert!(b.latent().equal(run(&m, &q).latent()));

    // What the pack cannot run is an input error naming the rule.
    let mut bad = p.clone();
    bad.sampler = SamplerKind::PingPong;
    let e = m.prepare(&bad).unwrap_err().to_string();
    assert!(e.contains("sampler ping_pong"), "{e}");
    bad = p.clone();
    bad.controls.duration_s = 2.0;
    let e = m.prepare(&bad).unwrap_err().to_string();
    assert!(e.contains("duration must be in"), "{e}");
}

/// A stereo clip: a 440 Hz sine on the left, 660 Hz on the right, `secs` long at 44.1 kHz.
fn sines(secs: f64) -> tch::Tensor {
    let n = (secs * 44100.0) as i64;
    let t = tch::Tensor::arange(n, (tch::Kind::Float, Device::Cpu)) / 44100.0;
    let two_pi = 2.0 * std::f64::consts::PI;
    tch::Tensor::stack(
        &[
            (&t * (two_pi * 440.0)).sin() * 0.5,
            (&t * (two_pi * 660.0)).sin() * 0.5,
        ],
        0,
    )
}

/// `split` steps from an init clip, a checkpoint round trip, the rest.
fn run_from_audio(
    m: &ServedModel,
    p: &GenerationParams,
    audio: &tch::Tensor,
    strength: f64,
    split: usize,
) -> DenoiseState {
    assert_eq!(m.family(), "stable_audio");
    let mut s = m.prepare_from_audio(p, audio, strength).unwrap();
    for _ in 0..split {
        m.step_batch(&mut [&mut s]).unwrap();
    }
    let mut s = DenoiseState::from_checkpoint(&s.to_checkpoint().unwrap(), Device::Cpu).unwrap();
    while !s.is_done() {
        m.step_batch(&mut [&mut s]).unwrap();
    }
    s
}

#[test]
fn audio_to_audio_starts_from_the_encoded_clip_and_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = sines(1.2);
    for (dir, strength) in [(small_pack(tmp.path()), 0.5), (open_pack(tmp.path()), 0.3)] {
        let m = ServedModel::load(&dir, Device::Cpu, Precision::Auto).unwrap();
        let mut p = m.default_params("a calm piano", 1.2);
        p.steps = 6;
        p.seed = 4;
        let whole = run_from_audio(&m, &p, &clip, strength, 0);
        let chunked = run_from_audio(&m, &p, &clip, strength, 2);
        assert!(whole.latent().equal(chunked.latent()), "{dir:?}");
        assert_eq!(m.render(&whole).unwrap(), m.render(&chunked).unwrap());
        // The clip matters: another one (mono, silent) and none at all give other latents.
        let silence = tch::Tensor::zeros([1, 52920], (tch::Kind::Float, Device::Cpu));
        let other = run_from_audio(&m, &p, &silence, strength, 0);
        assert!(!other.latent().equal(whole.latent()));
        assert!(!run(&m, &p).latent().equal(whole.latent()));
        let sa = &m;
        for bad in [0.0, 1.5, f64::NAN] {
            let e = sa
                .prepare_from_audio(&p, &clip, bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("init strength must be in (0, 1]"), "{e}");
        }
        let three = tch::Tensor::zeros([3, 100], (tch::Kind::Float, Device::Cpu));
        let e = sa
            .prepare_from_audio(&p, &three, 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 channels"), "{e}");
    }
    // Ping-pong at strength 1 is pure noise: generation from text alone, bit for bit.
    let m = ServedModel::load(
        &tmp.path().join("models/small"),
        Device::Cpu,
        Precision::Auto,
    )
    .unwrap();
    let mut p = m.default_params("a calm piano", 1.2);
    p.seed = 4;
    assert!(run_from_audio(&m, &p, &clip, 1.0, 3)
        .latent()
        .equal(run(&m, &p).latent()));
}

/// Relative L2 distance.
fn rel(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    let d = (a - b).norm().double_value(&[]);
    d / b.norm().double_value(&[]).max(1e-12)
}

/// What CUDA workers run, here on CPU (libtorch computes every kind there too): the DiT and
/// projection in bf16 or f16 with the T5 in f32, one step of each model's default sampler,
/// guided and not; then the VAE decode of the f32 latent in each kind. The steps stay within
/// 2% of f32; the decoder loses more to bf16 than to f16 (random weights, whose stacked
/// upsampling convolutions amplify rounding), which is why CUDA's `auto` decodes in f16. One
/// step only: random weights make a many-step trajectory chaotic, so that any rounding grows.
#[test]
fn half_precisions_stay_close_to_f32_and_f16_decodes_closer() {
    use tch::Kind;
    use tutti_model::device::Kinds;
    let _g = tch::no_grad_guard();
    let tmp = tempfile::tempdir().unwrap();
    for (dir, prompt) in [
        (small_pack(tmp.path()), "fast drums and bass"),
        (open_pack(tmp.path()), "a calm piano"),
    ] {
        let f32_model = StableAudioModel::load(&dir, Device::Cpu, Kind::Float, false).unwrap();
        let d = &f32_model.pack.defaults;
        let req = SaoRequest {
            prompts: vec![prompt.into(), "soft rain".into()],
            negative_prompts: None,
            seeds: vec![1, 2],
            seconds_start: 0.0,
            seconds_total: 1.0,
            steps: 1,
            guidance_scale: d.guidance_scale,
            sampler: d.sampler,
        };
        let mut want = f32_model.prepare(&req).unwrap();
        f32_model.step(&mut want).unwrap();
        let latent = want.latent().shallow_clone();
        let want_audio = f32_model.vae.decode(&latent);
        let mut decode_err = Vec::new();
        for kind in [Kind::BFloat16, Kind::Half] {
            let m = StableAudioModel::load(&dir, Device::Cpu, kind, false).unwrap();
            assert_eq!(m.kind, kind);
            let mut got = m.prepare(&req).unwrap();
            m.step(&mut got).unwrap();
            assert_eq!(got.latent().kind(), Kind::Float);
            let r = rel(&got.latent(), &latent);
            assert!(
                r > 0.0 && r < 0.02,
                "{kind:?} step on {}: {r}",
                dir.display()
            );
            let audio = m.vae.decode(&latent.to_kind(kind));
            assert_eq!(audio.kind(), kind);
            assert!(audio.isfinite().all().int64_value(&[]) == 1);
            decode_err.push(rel(&audio.to_kind(Kind::Float), &want_audio));
        }
        let (bf16, f16) = (decode_err[0], decode_err[1]);
        assert!(
            f16 < 0.5 * bf16 && f16 < 0.15,
            "{}: decode bf16 {bf16}, f16 {f16}",
            dir.display()
        );
        // Mixed kinds load as asked: the DiT in one, the VAE in the other.
        let kinds = Kinds {
            dit: Kind::BFloat16,
            vae: Kind::Half,
        };
        let m = StableAudioModel::load(&dir, Device::Cpu, kinds, false).unwrap();
        assert_eq!((m.kind, m.vae_kind), (Kind::BFloat16, Kind::Half));
        let audio = m.generate(&req).unwrap();
        assert_eq!(audio.kind(), Kind::Float);
        assert_eq!(audio.size()[0], 2);
        // The farm's path in a worker's --precision: finite stereo clips of the asked length.
        for precision in [Precision::Bf16, Precision::F16] {
            let served = ServedModel::load(&dir, Device::Cpu, precision).unwrap();
            let mut p = served.default_params(prompt, 1.0);
            p.steps = 2;
            let audio = served.render(&run(&served, &p)).unwrap();
            assert_eq!(audio.waveforms[0].len(), 2 * 44100);
            assert!(audio.waveforms[0].iter().all(|x| x.is_finite()));
        }
    }
}
