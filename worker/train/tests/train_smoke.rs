//! Smoke test of every training command at toy size: a few clips, a few steps, resume equal to an
//! uninterrupted run (bit for bit), a pack that the runtime loads and renders with.
//!
//! Needs a General MIDI SoundFont (Debian's `timgm6mb-soundfont` or `fluid-soundfont-gm`, or
//! `TUTTI_SOUNDFONT`; scripts/setup installs both); without one the test says so and skips,
//! except under CI, where it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tutti_model::decoder::DecoderConfig;
use tutti_model::{tiny, weights, Family, PackConfig, Pipeline};
use tutti_train::dataset::{self, DatasetConfig, DatasetPaths};
use tutti_train::denoiser::{DenoiserConfig, RunPaths, Trainer};
use tutti_train::vocoder::{VocoderConfig, VocoderTrainer};
use tutti_train::{data, eval, pack};

fn soundfont() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("TUTTI_SOUNDFONT")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    c.push("/usr/share/sounds/sf2/TimGM6mb.sf2".into());
    c.push("/usr/share/sounds/sf2/FluidR3_GM.sf2".into());
    c.into_iter().find(|p| p.exists())
}

fn tiny_config() -> DenoiserConfig {
    DenoiserConfig {
        layers: 1,
        heads: 2,
        head_dim: 16,
        kv_heads: 1,
        cross_dim: 32,
        time_proj_dim: 16,
        cond_embed: 8,
        cond_fourier: 8,
        crop_min: 32,
        crop_max: 48,
        tokens: 96,
        ..Default::default()
    }
}

fn same(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, t)| b.get(k).is_some_and(|u| t.equal(u)))
}

fn denoiser_resume_is_exact(paths: &RunPaths, dir: &Path) {
    let cfg = tiny_config();
    let straight = RunPaths {
        run: dir.join("straight"),
        ..paths.clone()
    };
    let mut a = Trainer::open(&cfg, &straight, Device::Cpu, false).unwrap();
    a.run(4, 100, 1e9, 1, false).unwrap();
    let resumed = RunPaths {
        run: dir.join("resumed"),
        ..paths.clone()
    };
    let mut b = Trainer::open(&cfg, &resumed, Device::Cpu, false).unwrap();
    b.run(2, 100, 1e9, 1, false).unwrap();
    drop(b);
    let mut b = Trainer::open(&cfg, &resumed, Device::Cpu, false).unwrap();
    assert_eq!(b.state.step, 2);
    b.run(4, 100, 1e9, 1, false).unwrap();
    assert!(
        same(&a.opt.params, &b.opt.params),
        "weights differ after resuming"
    );
    assert!(
        same(&a.opt.m, &b.opt.m) && same(&a.opt.v, &b.opt.v),
        "adam moments differ"
    );
    assert!(same(&a.ema.shadow, &b.ema.shadow), "ema differs");
    assert_eq!(a.state.losses, b.state.losses);
    assert!(a.state.losses.iter().all(|(_, l)| l.is_finite()));
    assert!(dir.join("resumed/loss.png").exists());
}

/// `--init PACK`: a new run starts from the pack's weights and normalisation, and trains on.
fn pack_starts_a_new_run(pack_dir: &Path, paths: &RunPaths, dir: &Path) {
    let warm = RunPaths {
        run: dir.join("warm"),
        ..paths.clone()
    };
    let mut w = Trainer::open(&tiny_config(), &warm, Device::Cpu, false).unwrap();
    w.init_from_pack(pack_dir).unwrap();
    let packed = weights::read_safetensors(&pack_dir.join("denoiser.safetensors"))
        .unwrap()
        .tensors;
    let (dit, _) = w.ema_weights();
    assert_eq!(dit.len(), packed.len());
    for (k, t) in &packed {
        assert!(
            dit[k].to_kind(Kind::Half).equal(t),
            "{k} differs from the pack's"
        );
    }
    let cfg = PackConfig::read(pack_dir).unwrap();
    let DecoderConfig::Identity { scale, shift } = cfg.decoder else {
        panic!("the pack has no identity decoder")
    };
    assert_eq!((w.state.std, w.state.mean), (scale, shift));
    assert_eq!(w.state.init_steps, 4, "the pack was trained for 4 steps");
    assert!(w.run(2, 100, 1e9, 1, false).unwrap().is_finite());
    assert!(
        w.init_from_pack(pack_dir).is_err(),
        "a pack only starts a new run"
    );
}

/// `--init PACK --beat-grid --key-profile`: a pack without per-frame controls starts a run that
/// has them (at zero, so at the pack's function); they train, and the new pack declares them.
fn frame_controls_grow_from_a_pack(pack_dir: &Path, paths: &RunPaths, dir: &Path) {
    let cfg = DenoiserConfig {
        beat_grid: true,
        key_profile: true,
        ..tiny_config()
    };
    let grown = RunPaths {
        run: dir.join("grown"),
        ..paths.clone()
    };
    let mut g = Trainer::open(&cfg, &grown, Device::Cpu, false).unwrap();
    g.init_from_pack(pack_dir).unwrap();
    let frames: Vec<&String> = g
        .opt
        .params
        .keys()
        .filter(|k| k.starts_with("cond.frames."))
        .collect();
    assert_eq!(frames.len(), 4, "beat and key projections and unknowns");
    for k in &frames {
        assert_eq!(
            g.opt.params[*k].abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }
    assert!(g.run(3, 100, 1e9, 1, false).unwrap().is_finite());
    let w = &g.opt.params["cond.frames.beat.weight"];
    assert!(
        w.abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "the grid's projection trained"
    );
    let out = dir.join("pack-grown");
    pack::write_pack(
        &out,
        &dir.join("grown"),
        None,
        Some(&paths.text_encoder),
        "grown",
    )
    .unwrap();
    let pc = PackConfig::read(&out).unwrap();
    let f = pc
        .frame_conditioning
        .expect("the pack declares its per-frame controls");
    assert!(f.beat_grid && f.key_profile);
    // Guidance steers by every control the pack takes.
    use tutti_model::pack::GuidedControl::{Key, Mode, Tempo};
    assert_eq!(pc.defaults.guided_controls, [Tempo, Key, Mode]);
    let p = Pipeline::load(&out, Device::Cpu).unwrap();
    let mut params = p.default_params("house with piano, 124 BPM, in F minor", 2.0);
    params.controls = tutti_shared::prompt::parse_controls(&params.prompt, 2.0);
    params.steps = 2;
    let mut st = p.prepare(&params).unwrap();
    p.denoise(&mut st, 2, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    assert!(p.render(&st).unwrap()[0].iter().all(|v| v.is_finite()));

    // `--instruments` on a pack that has the other per-frame controls: theirs carry over, the
    // new projection starts at zero and trains; the reverse (dropping a control) is refused.
    let more_cfg = DenoiserConfig {
        instruments: true,
        ..cfg.clone()
    };
    let more = RunPaths {
        run: dir.join("more"),
        ..paths.clone()
    };
    let mut m = Trainer::open(&more_cfg, &more, Device::Cpu, false).unwrap();
    m.init_from_pack(&out).unwrap();
    let sum = |m: &Trainer, k: &str| m.opt.params[k].abs().sum(Kind::Float).double_value(&[]);
    assert!(
        sum(&m, "cond.frames.key.weight") > 0.0,
        "the pack's key projection"
    );
    assert_eq!(sum(&m, "cond.frames.instruments.weight"), 0.0);
    assert!(m.run(3, 100, 1e9, 1, false).unwrap().is_finite());
    assert!(
        sum(&m, "cond.frames.instruments.weight") + sum(&m, "cond.frames.instruments.unknown")
            > 0.0,
        "the instruments' projection trained"
    );
    let out_more = dir.join("pack-more");
    pack::write_pack(
        &out_more,
        &dir.join("more"),
        None,
        Some(&paths.text_encoder),
        "more",
    )
    .unwrap();
    let pc = PackConfig::read(&out_more).unwrap();
    use tutti_model::pack::GuidedControl::Instruments;
    assert_eq!(pc.defaults.guided_controls, [Tempo, Key, Mode, Instruments]);
    let fewer = RunPaths {
        run: dir.join("fewer"),
        ..paths.clone()
    };
    let mut f = Trainer::open(&cfg, &fewer, Device::Cpu, false).unwrap();
    assert!(
        f.init_from_pack(&out_more).is_err(),
        "a run may not drop a pack's control"
    );
}

/// `--init PACK` on a dataset of more mel bands: the layers that touch the bands are widened
/// (`widen.rs`), the rest copied, and the run trains on; the classifier and the analyzers work on
/// the 128-band dataset through its audio.
fn a_pack_widens_to_more_bands(pack_dir: &Path, paths: &RunPaths, dir: &Path, sf: &Path) {
    let ds = dir.join("ds128");
    let mut cfg = DatasetConfig::new(2, 3.0, 8);
    cfg.mel.n_mels = 128;
    let dpaths = DatasetPaths {
        out: ds.clone(),
        soundfont: sf.to_path_buf(),
        corpus: None,
    };
    assert_eq!(dataset::make(&cfg, &dpaths, false).unwrap(), 2);
    let rows = data::read_manifest(&ds).unwrap();
    assert!(data::read_mel(&ds, rows[0].id, 128, rows[0].frames).is_ok());
    let wide = RunPaths {
        dataset: ds.clone(),
        run: dir.join("wide"),
        ..paths.clone()
    };
    let mut w = Trainer::open(&tiny_config(), &wide, Device::Cpu, false).unwrap();
    w.init_from_pack(pack_dir).unwrap();
    let packed = weights::read_safetensors(&pack_dir.join("denoiser.safetensors"))
        .unwrap()
        .tensors;
    let p_in = &w.opt.params["dit.proj_in.weight"];
    assert_eq!(p_in.size()[1], 128);
    let want = tutti_train::widen::widen("proj_in.weight", &packed["proj_in.weight"], 64, 128)
        .unwrap()
        .unwrap();
    assert!(p_in.allclose(&want, 1e-6, 1e-6, false));
    let blocks = "dit.transformer_blocks.0.attn1.to_q.weight";
    let q = blocks.strip_prefix("dit.").unwrap();
    assert!(w.opt.params[blocks].to_kind(Kind::Half).equal(&packed[q]));
    assert!(w.run(1, 100, 1e9, 1, false).unwrap().is_finite());
    // Trained on 64-band features computed from the 128-band dataset's audio (id 0 held out).
    let clf = eval::classifier::Classifier::train(&ds, 10).unwrap();
    assert!((0.0..=1.0).contains(&clf.held_out_accuracy));
    let cal = eval::calibrate(&ds, 2).unwrap();
    assert_eq!(cal.clips, 2);
    for v in [cal.tempo, cal.tempo_metrical, cal.mode, cal.mode_relative] {
        assert!((0.0..=1.0).contains(&v));
    }
    assert!(cal.tempo <= cal.tempo_metrical && cal.mode + cal.mode_relative <= 1.0);
}

/// `tutti train ceiling` on two held-out clips: the source row and a Griffin-Lim round trip,
/// scored on the same clips.
fn round_trip_ceiling(ds: &Path, sf: &Path) {
    use tutti_model::mel::MelConfig;
    use tutti_train::ceiling::{self, Candidate, CeilingOptions};
    let cands = vec![Candidate::griffin_lim("gl4", MelConfig::default(), 4).unwrap()];
    let opts = CeilingOptions {
        clips: 2,
        first_id: 1_000_000,
        dataset: ds.to_path_buf(),
        soundfont: sf.to_path_buf(),
        corpus: None,
    };
    let (scores, md) = ceiling::run(&opts, &cands, false).unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores.iter().all(|s| s.clips == 2));
    assert_eq!(
        scores[0].families, scores[1].families,
        "the same clips' labels"
    );
    assert!(
        scores[1].mrstft > 0.0,
        "a 4-iteration Griffin-Lim is not lossless"
    );
    assert!(md.contains("| source audio (no round trip) |") && md.contains("| gl4 |"));
}

/// `--gan-from 1`: the adversarial losses switch on at step 1, the discriminators train, and a
/// resumed run (discriminators and their optimizer from the checkpoint) equals the straight one.
fn vocoder_gan_resume_is_exact(base: &VocoderConfig, ds: &Path, dir: &Path) {
    let cfg = VocoderConfig {
        gan: Some(tutti_train::gan::GanConfig {
            from_step: 1,
            periods: vec![2, 3],
            resolutions: vec![256],
            channels: 4,
            mrd_channels: 4,
            ..Default::default()
        }),
        ..base.clone()
    };
    let mut a = VocoderTrainer::open(&cfg, ds, &dir.join("gan-a"), Device::Cpu).unwrap();
    assert!(a.run(3, 100, 1e9, 1, false).unwrap().is_finite());
    let mut b = VocoderTrainer::open(&cfg, ds, &dir.join("gan-b"), Device::Cpu).unwrap();
    b.run(2, 100, 1e9, 1, false).unwrap();
    drop(b);
    let mut b = VocoderTrainer::open(&cfg, ds, &dir.join("gan-b"), Device::Cpu).unwrap();
    b.run(3, 100, 1e9, 1, false).unwrap();
    assert!(
        same(&a.opt.params, &b.opt.params),
        "generator differs after resuming"
    );
    let (da, db) = (a.disc_params().unwrap(), b.disc_params().unwrap());
    assert!(same(&da, &db), "discriminators differ after resuming");
    let init = VocoderTrainer::open(&cfg, ds, &dir.join("gan-c"), Device::Cpu).unwrap();
    let init = init.disc_params().unwrap();
    assert!(!same(&da, &init), "the discriminators trained");
}

#[test]
fn dataset_training_resume_pack_and_eval() {
    let Some(sf) = soundfont() else {
        // CI's setup installs one, so there a missing SoundFont is a failure, not a skip.
        assert!(
            std::env::var("CI").is_err(),
            "no SoundFont found under CI (scripts/setup installs timgm6mb-soundfont)"
        );
        eprintln!(
            "no SoundFont found (install timgm6mb-soundfont or set TUTTI_SOUNDFONT): skipped"
        );
        return;
    };
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A tiny pack provides a tiny BERT text encoder with the real tokenizer.
    tiny::write_tiny_pack(&dir.join("tiny"), 1).unwrap();
    let te = dir.join("tiny/text_encoder");

    let ds = dir.join("ds");
    let cfg = DatasetConfig::new(6, 3.0, 7);
    let paths = DatasetPaths {
        out: ds.clone(),
        soundfont: sf.clone(),
        corpus: None,
    };
    assert_eq!(
        dataset::make(
            &DatasetConfig {
                clips: 4,
                ..cfg.clone()
            },
            &paths,
            false
        )
        .unwrap(),
        4
    );
    assert_eq!(
        dataset::make(&cfg, &paths, false).unwrap(),
        2,
        "resume renders only the missing clips"
    );
    let rows = data::read_manifest(&ds).unwrap();
    assert_eq!(rows.len(), 6);
    let mel = data::read_mel(&ds, 5, 64, rows[5].frames).unwrap();
    assert!(mel.iter().all(|v| v.is_finite()));

    round_trip_ceiling(&ds, &sf);

    let run = RunPaths {
        dataset: ds.clone(),
        text_encoder: te.clone(),
        run: dir.join("den"),
    };
    denoiser_resume_is_exact(&run, dir);

    let vcfg = VocoderConfig {
        batch: 2,
        segment_frames: 16,
        ..Default::default()
    };
    let mut vcfg = vcfg;
    vcfg.vocos.dim = 16;
    vcfg.vocos.intermediate_dim = 32;
    vcfg.vocos.num_layers = 1;
    let mut v = VocoderTrainer::open(&vcfg, &ds, &dir.join("voc"), Device::Cpu).unwrap();
    assert!(v.run(2, 100, 1e9, 1, false).unwrap().is_finite());
    vocoder_gan_resume_is_exact(&vcfg, &ds, dir);

    let out = dir.join("pack");
    pack::write_pack(
        &out,
        &dir.join("straight"),
        Some(&dir.join("voc")),
        Some(&te),
        "smoke",
    )
    .unwrap();
    pack_starts_a_new_run(&out, &run, dir);
    a_pack_widens_to_more_bands(&out, &run, dir, &sf);
    frame_controls_grow_from_a_pack(&out, &run, dir);

    let p = Pipeline::load(&out, Device::Cpu).unwrap();
    let mut params = p.default_params("happy rock with piano, 120 BPM, in C major", 2.0);
    params.steps = 3;
    let mut st = p.prepare(&params).unwrap();
    p.denoise(&mut st, 3, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    let audio = p.render(&st).unwrap();
    assert_eq!(audio[0].len(), 32000);
    assert!(audio[0].iter().all(|x| x.is_finite()));

    let report = eval::evaluate(
        &out,
        &dir.join("eval"),
        &eval::EvalOptions {
            steps: 2,
            seconds: 2.0,
            seeds: 2,
            limit: Some(2),
            classifier_dataset: Some(ds.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    eval::write_report(&dir.join("eval"), &report).unwrap();
    assert!(report.rows.len() == 2 && dir.join("eval/report.md").exists());
    assert!(dir.join("eval/prompt00.png").exists());
}
