//! Per-frame controls (beat grid, key profile, instruments) on tiny random packs with real
//! libtorch: the grid comes from the request's tempo and reaches the denoiser, the instruments
//! from the prompt's words, and a pack without the controls loads and generates as it always did.

use std::ops::ControlFlow;
use std::path::Path;

use tch::{Device, Tensor};
use tutti_model::frame_cond::{BeatGrid, FrameCondConfig, FrameControls};
use tutti_model::pack::{self, GuidedControl, LoadedPack, PackConfig};
use tutti_model::pipeline::{DenoiseState, GenerationParams, Pipeline};
use tutti_model::sampler::SamplerKind;
use tutti_model::text_encoder::TextEncoderConfig;
use tutti_model::tiny::{tiny_config, write_pack_with};
use tutti_model::weights;
use tutti_model::Family;
use tutti_shared::prompt::{Controls, Mode};

fn params(bpm: Option<f32>) -> GenerationParams {
    GenerationParams {
        prompt: "house with piano and drums".into(),
        negative_prompt: String::new(),
        controls: Controls {
            duration_s: 2.0,
            bpm,
            key: Some(5),
            mode: Some(Mode::Minor),
        },
        seed: 3,
        steps: 4,
        guidance_scale: 3.0,
        sampler: SamplerKind::FlowEuler,
        variations: 2,
        song: None,
        varispeed: None,
    }
}

/// The final latent and the audio of a generation.
fn generate(p: &Pipeline, params: &GenerationParams) -> (Tensor, Vec<Vec<f32>>) {
    let mut s = p.prepare(params).unwrap();
    p.denoise(&mut s, params.steps, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let audio = p.render(&s).unwrap();
    (s.latent().shallow_clone(), audio)
}

/// The tiny pack with per-frame controls.
fn framed_config(beat_grid: bool, key_profile: bool) -> PackConfig {
    let mut cfg = tiny_config();
    cfg.frame_conditioning = Some(FrameCondConfig {
        dim: cfg.denoiser.inner_dim(),
        beat_grid,
        key_profile,
        instruments: false,
    });
    cfg
}

/// Rewrites the conditioner tensors whose names start with one of `prefixes` with `f`.
fn rewrite_conditioners(dir: &Path, prefixes: &[&str], f: impl Fn(&Tensor) -> Tensor) {
    let path = dir.join(pack::CONDITIONERS_FILE);
    let file = weights::read_safetensors(&path).unwrap();
    let tensors: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .map(|(k, t)| {
            let t = if prefixes.iter().any(|p| k.starts_with(p)) {
                f(t)
            } else {
                t.shallow_clone()
            };
            (k.clone(), t)
        })
        .collect();
    std::fs::write(
        &path,
        weights::to_safetensors_bytes(&tensors, None).unwrap(),
    )
    .unwrap();
}

fn rewrite_frames(dir: &Path, f: impl Fn(&Tensor) -> Tensor) {
    rewrite_conditioners(dir, &["frames."], f)
}

#[test]
fn beat_grid_is_built_from_the_tempo_and_reaches_the_denoiser() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("framed");
    let cfg = framed_config(true, false);
    write_pack_with(&dir, 1, &cfg, &TextEncoderConfig::tiny()).unwrap();
    // A known tempo's global embedding is zero whatever the BPM: only the grid can tell 120
    // from 90.
    rewrite_conditioners(&dir, &["tempo.proj."], |t| t.zeros_like());
    let loaded = LoadedPack::load(&dir, Device::Cpu, tch::Kind::Float).unwrap();
    assert!(loaded.frames.is_some(), "the pack declares a beat grid");
    drop(loaded);

    // The grid of a request: its tempo, 4/4 unless the prompt says waltz, downbeat at 0.
    let fps = cfg.model.latent_frames_per_second;
    let c = params(Some(120.0)).controls;
    let rows = FrameControls::for_request(&c, "house", 63, fps);
    let want = BeatGrid {
        bpm: 120.0,
        beats_per_bar: 4,
        downbeat_s: 0.0,
    }
    .features(0, 63, fps);
    assert_eq!(rows.grid.as_deref(), Some(&want[..]));
    let waltz = FrameControls::for_request(&c, "a waltz", 63, fps);
    assert_ne!(waltz.grid, rows.grid, "a waltz's bar has three beats");
    assert_eq!(
        FrameControls::for_request(&params(None).controls, "house", 63, fps).grid,
        None
    );

    let p = Pipeline::load(&dir, Device::Cpu).unwrap();
    let (l120, a120) = generate(&p, &params(Some(120.0)));
    let (l90, _) = generate(&p, &params(Some(90.0)));
    let (lnone, _) = generate(&p, &params(None));
    assert_eq!(a120.len(), 2);
    assert!(a120[0].iter().all(|v| v.is_finite()));
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        diff(&l120, &l90) > 1e-4,
        "120 and 90 BPM gave the same latent"
    );
    assert!(
        diff(&l120, &lnone) > 1e-4,
        "a tempo and no tempo gave the same latent"
    );
    // Same request, same result (the grid is a pure function of the request).
    assert!(l120.equal(&generate(&p, &params(Some(120.0))).0));
    drop(p);

    // With the grid's projection zeroed, the tempo has no way in: 120 and 90 BPM agree.
    rewrite_frames(&dir, |t| t.zeros_like());
    let p = Pipeline::load(&dir, Device::Cpu).unwrap();
    let (z120, _) = generate(&p, &params(Some(120.0)));
    let (z90, _) = generate(&p, &params(Some(90.0)));
    assert!(z120.equal(&z90));
}

#[test]
fn key_profile_reaches_the_denoiser() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keyed");
    let cfg = framed_config(false, true);
    write_pack_with(&dir, 2, &cfg, &TextEncoderConfig::tiny()).unwrap();
    // Every known key and mode embeds alike globally: only the profile can tell them apart.
    rewrite_conditioners(&dir, &["key.table", "mode.table"], |t| t.zeros_like());
    let p = Pipeline::load(&dir, Device::Cpu).unwrap();
    let mut a = params(Some(120.0));
    let (la, _) = generate(&p, &a);
    a.controls.key = Some(0);
    let (lb, _) = generate(&p, &a);
    a.controls.mode = Some(Mode::Major);
    let (lc, _) = generate(&p, &a);
    let diff = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]);
    assert!(diff(&la, &lb) > 1e-4, "F minor and C minor agree");
    assert!(diff(&lb, &lc) > 1e-4, "C minor and C major agree");
}

#[test]
fn packs_without_frame_controls_are_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    let cfg = tiny_config();
    assert_eq!(cfg.frame_conditioning, None);
    write_pack_with(&old, 4, &cfg, &TextEncoderConfig::tiny()).unwrap();
    let toml = std::fs::read_to_string(old.join(pack::CONFIG_FILE)).unwrap();
    assert!(
        !toml.contains("frame_conditioning"),
        "a pack without the controls writes no table for them"
    );
    assert!(LoadedPack::load(&old, Device::Cpu, tch::Kind::Float)
        .unwrap()
        .frames
        .is_none());
    // The shipped pack declares both per-frame controls.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tutti-mini");
    let fc = PackConfig::read(&shipped).unwrap().frame_conditioning;
    assert!(
        fc.as_ref().is_some_and(|f| f.beat_grid && f.key_profile),
        "{fc:?}"
    );

    // The same weights plus zeroed per-frame controls (what a run started from the old pack
    // begins with) generate exactly what the old pack generates, bit for bit.
    let grown = tmp.path().join("grown");
    let mut gcfg = cfg.clone();
    gcfg.frame_conditioning = Some(FrameCondConfig {
        dim: cfg.denoiser.inner_dim(),
        beat_grid: true,
        key_profile: true,
        instruments: false,
    });
    write_pack_with(&grown, 4, &gcfg, &TextEncoderConfig::tiny()).unwrap();
    rewrite_frames(&grown, |t| t.zeros_like());
    let a = Pipeline::load(&old, Device::Cpu).unwrap();
    let b = Pipeline::load(&grown, Device::Cpu).unwrap();
    for bpm in [Some(120.0), None] {
        let (la, aa) = generate(&a, &params(bpm));
        let (lb, ab) = generate(&b, &params(bpm));
        assert!(la.equal(&lb), "latents differ at {bpm:?} BPM");
        assert_eq!(aa, ab);
    }
}

#[test]
fn guided_controls_leave_the_unconditional_half_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, guided) = (tmp.path().join("plain"), tmp.path().join("guided"));
    let cfg = framed_config(true, true);
    write_pack_with(&plain, 6, &cfg, &TextEncoderConfig::tiny()).unwrap();
    let mut gcfg = cfg.clone();
    gcfg.defaults.guided_controls = vec![GuidedControl::Key, GuidedControl::Mode];
    write_pack_with(&guided, 6, &gcfg, &TextEncoderConfig::tiny()).unwrap();
    let toml = std::fs::read_to_string(guided.join(pack::CONFIG_FILE)).unwrap();
    assert!(
        toml.contains(r#"guided_controls = ["key", "mode"]"#),
        "{toml}"
    );
    assert_eq!(PackConfig::read(&guided).unwrap().defaults, gcfg.defaults);

    let a = Pipeline::load(&plain, Device::Cpu).unwrap();
    let b = Pipeline::load(&guided, Device::Cpu).unwrap();
    // A request that names a key: the guided pack's unconditional half lacks it, so the result
    // moves; one that names neither key nor mode is the same request in both halves.
    let keyed = params(Some(120.0));
    assert!(
        (generate(&a, &keyed).0 - generate(&b, &keyed).0)
            .abs()
            .max()
            .double_value(&[])
            > 1e-4
    );
    let mut unkeyed = keyed.clone();
    (unkeyed.controls.key, unkeyed.controls.mode) = (None, None);
    let (la, aa) = generate(&a, &unkeyed);
    let (lb, ab) = generate(&b, &unkeyed);
    assert!(la.equal(&lb), "no key asked, yet the packs differ");
    assert_eq!(aa, ab);
    // Guided by the key, a mode-only request and a full one guide differently.
    let mut mode_only = keyed.clone();
    mode_only.controls.key = None;
    assert!(!generate(&b, &mode_only).0.equal(&generate(&b, &keyed).0));

    // The unconditional controls: only the named ones become unknown.
    let c = keyed.controls;
    let u = GuidedControl::unconditional(&c, &[GuidedControl::Mode, GuidedControl::Tempo]);
    assert_eq!(
        (u.bpm, u.key, u.mode, u.duration_s),
        (None, c.key, None, c.duration_s)
    );

    // A pack cannot guide by a control it does not take.
    let mut bad = tiny_config();
    bad.conditioners.key = false;
    bad.defaults.guided_controls = vec![GuidedControl::Key];
    let err = bad.validate().unwrap_err();
    assert!(
        err.contains("guided_controls") && err.contains("Key"),
        "{err}"
    );
}

#[test]
fn instruments_the_prompt_names_reach_the_denoiser_and_guidance() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = framed_config(true, true);
    if let Some(f) = cfg.frame_conditioning.as_mut() {
        f.instruments = true;
    }
    let (full, blind, guided) = (
        tmp.path().join("full"),
        tmp.path().join("blind"),
        tmp.path().join("guided"),
    );
    write_pack_with(&full, 8, &cfg, &TextEncoderConfig::tiny()).unwrap();
    // The same pack whose instrument projection reads nothing (only its `unknown` vector left).
    write_pack_with(&blind, 8, &cfg, &TextEncoderConfig::tiny()).unwrap();
    rewrite_conditioners(&blind, &["frames.instruments.weight"], |t| t.zeros_like());
    let mut gcfg = cfg.clone();
    gcfg.defaults.guided_controls = vec![GuidedControl::Instruments];
    write_pack_with(&guided, 8, &gcfg, &TextEncoderConfig::tiny()).unwrap();
    assert!(std::fs::read_to_string(full.join(pack::CONFIG_FILE))
        .unwrap()
        .contains("instruments = true"));

    let (a, b, g) = (
        Pipeline::load(&full, Device::Cpu).unwrap(),
        Pipeline::load(&blind, Device::Cpu).unwrap(),
        Pipeline::load(&guided, Device::Cpu).unwrap(),
    );
    let named = params(Some(100.0)); // "house with piano and drums"
    let mut unnamed = named.clone();
    unnamed.prompt = "house at night".into();
    let differs = |x: &Pipeline, y: &Pipeline, p: &GenerationParams| {
        !generate(x, p).0.equal(&generate(y, p).0)
    };
    // Named instruments move the result; a prompt that names none reads `unknown` in both.
    assert!(differs(&a, &b, &named));
    assert!(!differs(&a, &b, &unnamed));
    // Guided by the instruments: the unconditional half lacks them, so only a prompt that
    // names some is guided differently.
    assert!(differs(&a, &g, &named));
    assert!(!differs(&a, &g, &unnamed));
    assert!(PackConfig::read(&guided)
        .unwrap()
        .controls()
        .contains(&GuidedControl::Instruments));

    // A pack without the input cannot guide by it.
    let mut bad = framed_config(true, true);
    bad.defaults.guided_controls = vec![GuidedControl::Instruments];
    let err = bad.validate().unwrap_err();
    assert!(err.contains("Instruments"), "{err}");
}

#[test]
fn a_mode_without_a_tonic_is_served_in_a_tonic_the_seed_picks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tonics");
    let mut cfg = framed_config(false, true);
    cfg.defaults.mode_tonics.minor = vec![pack::Tonic(4), pack::Tonic(7)]; // E, G
    write_pack_with(&dir, 5, &cfg, &TextEncoderConfig::tiny()).unwrap();
    let toml = std::fs::read_to_string(dir.join(pack::CONFIG_FILE)).unwrap();
    assert!(
        toml.contains(r#"minor = ["E", "G"]"#),
        "tonics are written by name: {toml}"
    );
    let p = Pipeline::load(&dir, Device::Cpu).unwrap();
    assert_eq!(p.config().defaults.mode_tonics, cfg.defaults.mode_tonics);

    // "in a minor key": the seed picks E (even seeds) or G (odd), and the clip is the one the
    // request that names the key would get, bit for bit.
    let mut mode_only = params(Some(100.0));
    mode_only.controls.key = None;
    for (seed, tonic) in [(2, 4), (3, 7)] {
        mode_only.seed = seed;
        let s = p.prepare(&mode_only).unwrap();
        assert_eq!(s.params().controls.key, Some(tonic), "seed {seed}");
        let mut named = mode_only.clone();
        named.controls.key = Some(tonic);
        let (a, audio_a) = generate(&p, &mode_only);
        let (b, audio_b) = generate(&p, &named);
        assert!(
            a.equal(&b),
            "seed {seed}: mode alone and the picked key differ"
        );
        assert_eq!(audio_a, audio_b);
    }
    // A named tonic is kept, and a mode with no list (major here) goes alone.
    let named = params(Some(100.0));
    assert_eq!(p.prepare(&named).unwrap().params().controls.key, Some(5));
    let mut major = mode_only.clone();
    major.controls.mode = Some(Mode::Major);
    assert_eq!(p.prepare(&major).unwrap().params().controls.key, None);

    // The shipped pack names the tonics it serves "in a minor key" in.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tutti-mini");
    let tonics = PackConfig::read(&shipped).unwrap().defaults.mode_tonics;
    assert!(!tonics.minor.is_empty(), "{tonics:?}");

    // A pack without the list serves the mode alone.
    let plain = tmp.path().join("plain");
    write_pack_with(
        &plain,
        5,
        &framed_config(false, true),
        &TextEncoderConfig::tiny(),
    )
    .unwrap();
    let q = Pipeline::load(&plain, Device::Cpu).unwrap();
    assert_eq!(q.prepare(&mode_only).unwrap().params().controls.key, None);
}

#[test]
fn a_tonic_not_listed_is_rendered_in_a_listed_one_and_played_back_in_the_asked_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("varispeed");
    let mut cfg = framed_config(true, true);
    cfg.defaults.mode_tonics.minor = vec![pack::Tonic(4)]; // E
    cfg.defaults.varispeed_semitones = 1;
    write_pack_with(&dir, 5, &cfg, &TextEncoderConfig::tiny()).unwrap();
    let toml = std::fs::read_to_string(dir.join(pack::CONFIG_FILE)).unwrap();
    assert!(toml.contains("varispeed_semitones = 1"), "{toml}");
    let p = Pipeline::load(&dir, Device::Cpu).unwrap();
    let sr = p.config().model.sample_rate;

    // F minor, 100 BPM, 2 s: rendered in E minor, slower and longer by the playback speed.
    let asked = params(Some(100.0));
    let s = p.prepare(&asked).unwrap();
    let v = s
        .params()
        .varispeed
        .expect("F minor is served by varispeed");
    assert_eq!((v.semitones, v.duration_s), (1, 2.0));
    let speed = v.speed(sr);
    assert!((speed - 2f64.powf(1.0 / 12.0)).abs() < 1e-3, "{speed}");
    let c = s.params().controls;
    assert_eq!((c.key, c.mode), (Some(4), Some(Mode::Minor)));
    assert!((f64::from(c.bpm.unwrap()) - 100.0 / speed).abs() < 1e-3);
    assert!((f64::from(c.duration_s) - 2.0 * speed).abs() < 1e-3);
    // A checkpointed job keeps it.
    let resumed = DenoiseState::from_checkpoint(&s.to_checkpoint().unwrap(), Device::Cpu).unwrap();
    assert_eq!(resumed.params(), s.params());

    // The clips are the E-minor rendering at that tempo and length, played back: the asked
    // length, sample for sample.
    let (_, audio) = generate(&p, &asked);
    let mut rendered = asked.clone();
    rendered.controls = c;
    let (_, plain) = generate(&p, &rendered);
    assert_eq!(audio.len(), 2);
    for (a, r) in audio.iter().zip(&plain) {
        assert_eq!(a.len(), 2 * sr as usize);
        assert!(r.len() > a.len());
        assert_eq!(a, &v.play(r, sr, a.len()).unwrap());
    }

    // A listed tonic, a key of a mode with no list, a mode alone: as asked.
    for (key, mode) in [
        (Some(4), Some(Mode::Minor)),
        (Some(5), Some(Mode::Major)),
        (None, Some(Mode::Major)),
    ] {
        let mut q = asked.clone();
        (q.controls.key, q.controls.mode) = (key, mode);
        let s = p.prepare(&q).unwrap();
        assert_eq!(s.params().varispeed, None, "{key:?} {mode:?}");
        assert_eq!(s.params().controls, q.controls);
    }

    // The shipped pack renders the minor tonics it lacks a semitone away.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tutti-mini");
    let shipped = PackConfig::read(&shipped).unwrap();
    assert_eq!(shipped.defaults.varispeed_semitones, 1);
    assert!(shipped.validate().is_ok());

    // Varispeed needs the tonics to render in, and goes no further than a tritone.
    let mut bad = framed_config(true, true);
    bad.defaults.varispeed_semitones = 1;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("mode_tonics"), "{err}");
    bad.defaults.mode_tonics.minor = vec![pack::Tonic(4)];
    bad.defaults.varispeed_semitones = 7;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("at most 6"), "{err}");
}
