//! ACE-Step packs on the farm's path: `tutti model import` of the diffusers folders (the real
//! 2B turbo and XL configs, and a tiny random pipeline that diffusers' own classes build,
//! `scripts/fixtures/ace_step_tiny.py`), then the family through the shared step loop: a
//! guided (APG) job chunked through a checkpoint equals the one-shot job bit for bit, and
//! renders stereo 48 kHz clips of the asked length; a request the model does not take is refused.

mod common;

use std::path::Path;

use tch::Device;
use tutti_model::device::Precision;
use tutti_model::families::ace_step::pack::{self, AceStepConfig, AceStepPack, ImportOptions};
use tutti_model::families::{self, Family};
use tutti_model::state::DenoiseState;
use tutti_model::step;
use tutti_shared::job::{RepaintSpan, Song};
use tutti_shared::models::{ModelFamily, ModelInput};

/// The transformer config the diffusers converter writes for the 2B turbo.
const TURBO_2B: &str = r#"{"_class_name":"AceStepTransformer1DModel","_diffusers_version":"0.42.1",
  "hidden_size":2048,"intermediate_size":6144,"num_hidden_layers":24,"num_attention_heads":16,
  "num_key_value_heads":8,"head_dim":128,"in_channels":192,"audio_acoustic_hidden_dim":64,
  "patch_size":2,"rope_theta":1000000.0,"attention_bias":false,"attention_dropout":0.0,
  "rms_norm_eps":1e-06,"sliding_window":128,"layer_types":null,"encoder_hidden_size":2048,
  "is_turbo":true,"model_version":"turbo"}"#;
const CONDITION: &str = r#"{"_class_name":"AceStepConditionEncoder","hidden_size":2048,
  "intermediate_size":6144,"text_hidden_dim":1024,"timbre_hidden_dim":64,
  "num_lyric_encoder_hidden_layers":8,"num_timbre_encoder_hidden_layers":4,
  "num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"rope_theta":1000000.0,
  "attention_bias":false,"attention_dropout":0.0,"rms_norm_eps":1e-06,"sliding_window":128,
  "layer_types":null}"#;
const QWEN3: &str = r#"{"architectures":["Qwen3Model"],"attention_bias":false,"head_dim":128,
  "hidden_act":"silu","hidden_size":1024,"intermediate_size":3072,"max_position_embeddings":32768,
  "model_type":"qwen3","num_attention_heads":16,"num_hidden_layers":28,"num_key_value_heads":8,
  "rms_norm_eps":1e-6,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,
  "tie_word_embeddings":true,"use_sliding_window":false,"vocab_size":151669}"#;
const VAE: &str = r#"{"_class_name":"AutoencoderOobleck","encoder_hidden_size":128,
  "downsampling_ratios":[2,4,4,6,10],"channel_multiples":[1,2,4,8,16],"decoder_channels":128,
  "decoder_input_channels":64,"audio_channels":2,"sampling_rate":48000}"#;

/// A folder with the published configs and placeholder weight files (the importer checks that
/// the weights are there; their shapes are checked when a worker loads them).
fn real_folder(dir: &Path, transformer: &str, tokenizer_from: &Path) -> anyhow::Result<()> {
    let write = |rel: &str, text: &str| -> anyhow::Result<()> {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("a file in a folder"))?;
        std::fs::write(p, text)?;
        Ok(())
    };
    write(
        "model_index.json",
        r#"{"_class_name":"AceStepPipeline","_diffusers_version":"0.42.1"}"#,
    )?;
    write("transformer/config.json", transformer)?;
    write("condition_encoder/config.json", CONDITION)?;
    write("text_encoder/config.json", QWEN3)?;
    write("vae/config.json", VAE)?;
    for w in [
        "transformer/diffusion_pytorch_model.safetensors",
        "condition_encoder/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        write(w, "")?;
    }
    std::fs::create_dir_all(dir.join("tokenizer"))?;
    std::fs::copy(tokenizer_from, dir.join("tokenizer/tokenizer.json"))?;
    Ok(())
}

#[test]
fn the_published_configs_import() -> anyhow::Result<()> {
    let Some(fixture) = common::run_fixture("ace_step_tiny.py", "diffusers")? else {
        return Ok(());
    };
    let tokenizer = fixture.path().join("pipeline/tokenizer/tokenizer.json");
    let tmp = tempfile::tempdir()?;
    let xl = TURBO_2B
        .replace(r#""hidden_size":2048"#, r#""hidden_size":2560"#)
        .replace(r#""intermediate_size":6144"#, r#""intermediate_size":9728"#)
        .replace(r#""num_hidden_layers":24"#, r#""num_hidden_layers":32"#)
        .replace(r#""num_attention_heads":16"#, r#""num_attention_heads":32"#);
    let base = TURBO_2B
        .replace(r#""is_turbo":true"#, r#""is_turbo":false"#)
        .replace(r#""model_version":"turbo""#, r#""model_version":"base""#);
    for (name, transformer, want_name, turbo, steps, guidance) in [
        (
            "2b-turbo",
            TURBO_2B.to_string(),
            "acestep-v15-turbo",
            true,
            8,
            1.0,
        ),
        ("xl-turbo", xl, "acestep-v15-xl-turbo", true, 8, 1.0),
        ("2b-base", base, "acestep-v15-base", false, 32, 7.0),
    ] {
        let src = tmp.path().join(name);
        real_folder(&src, &transformer, &tokenizer)?;
        assert!(pack::is_ace_step_folder(&src));
        let cfg = AceStepConfig::read(&src)?;
        assert_eq!(cfg.latents_per_second(), 25.0);
        assert_eq!(cfg.frames(600.0), 15_000);
        assert_eq!(cfg.timbre_frames(), 750);
        let out = tmp.path().join(format!("{name}-pack"));
        let pack: AceStepPack = pack::import(&src, &out, &ImportOptions::default())?;
        assert_eq!(pack.model.name, want_name);
        assert_eq!((pack.model.sample_rate, pack.model.channels), (48_000, 2));
        assert_eq!(pack.ace_step.turbo, turbo);
        assert_eq!(
            (pack.defaults.steps, pack.defaults.guidance_scale),
            (steps, guidance)
        );
        assert_eq!(pack.limits.max_duration_s, 600.0);
        // The farm's registry reads the same model.toml: the family and the request fields.
        let info = families::read_info(&out)?;
        assert_eq!(info.family, ModelFamily::AceStep);
        assert!(info.takes(ModelInput::Lyrics) && info.takes(ModelInput::VocalLanguage));
        assert!(!info.takes(ModelInput::NegativePrompt));
        assert_eq!(info.takes(ModelInput::Guidance), !turbo);
        // A second import into the same folder is refused rather than overwriting it.
        assert!(pack::import(&src, &out, &ImportOptions::default()).is_err());
    }
    // A folder whose transformer and condition encoder disagree is refused at import.
    let bad = tmp.path().join("bad");
    real_folder(
        &bad,
        &TURBO_2B.replace(
            r#""encoder_hidden_size":2048"#,
            r#""encoder_hidden_size":1024"#,
        ),
        &tokenizer,
    )?;
    let e = pack::import(
        &bad,
        &tmp.path().join("bad-pack"),
        &ImportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("condition"), "{e}");
    Ok(())
}

fn run(model: &dyn Family, state: &mut DenoiseState, to: usize) -> anyhow::Result<()> {
    step::denoise(model, state, to, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(())
}

#[test]
fn a_chunked_guided_song_equals_the_one_shot_one() -> anyhow::Result<()> {
    let Some(fixture) = common::run_fixture("ace_step_tiny.py", "diffusers")? else {
        return Ok(());
    };
    let out = fixture.path().join("pack");
    pack::import(
        &fixture.path().join("pipeline"),
        &out,
        &ImportOptions {
            name: Some("ace-tiny".into()),
            version: None,
        },
    )?;
    let info = families::read_info(&out)?;
    let model = families::load(&info, Device::Cpu, Precision::F32)?;
    assert_eq!((model.sample_rate(), model.channels()), (48_000, 2));

    let mut p = model.default_params("upbeat pop, female vocals, 120 BPM, C major", 1.5);
    p.steps = 4;
    p.guidance_scale = 3.0;
    p.seed = 11;
    p.variations = 2;
    p.song = Some(Song {
        lyrics: "[verse]\nla la la\n[chorus]\noh oh".into(),
        language: "en".into(),
        time_signature: Some(4),
        repaint: None,
    });
    assert!(model.guided(&p));

    let mut one_shot = model.prepare(&p)?;
    run(&*model, &mut one_shot, 4)?;

    let mut first = model.prepare(&p)?;
    run(&*model, &mut first, 2)?;
    let bytes = first.to_checkpoint()?;
    let mut resumed = DenoiseState::from_checkpoint(&bytes, Device::Cpu)?;
    run(&*model, &mut resumed, 4)?;
    assert!(
        resumed.latent().equal(one_shot.latent()),
        "a job resumed from its checkpoint (APG momentum included) must equal the one-shot job"
    );

    let clips = model.render(&resumed)?;
    assert_eq!(clips.len(), 2);
    assert_eq!(clips[0].len(), (1.5 * 48_000.0) as usize * 2);
    assert!(clips[0].iter().all(|x| x.is_finite()));
    assert_ne!(clips[0], clips[1], "variations must differ");

    // Lyrics change the song; the model refuses what it does not take.
    let mut other = p.clone();
    other.song = Some(Song {
        lyrics: "[verse]\nsomething else entirely".into(),
        ..p.song.clone().unwrap_or_default()
    });
    let mut s = model.prepare(&other)?;
    run(&*model, &mut s, 4)?;
    assert!(!s.latent().equal(one_shot.latent()));
    let mut neg = p.clone();
    neg.negative_prompt = "drums".into();
    assert!(model.prepare(&neg).is_err());
    let mut sampler = p.clone();
    sampler.sampler = tutti_model::samplers::SamplerKind::Ddim;
    assert!(model.prepare(&sampler).is_err());

    // Repaint the middle of the first take: the song goes in as context, chunked like any job.
    let song = tch::Tensor::from_slice(&clips[0])
        .view([-1, 2])
        .transpose(0, 1)
        .contiguous();
    let mut r = p.clone();
    r.variations = 1;
    r.song = Some(Song {
        repaint: Some(RepaintSpan {
            start_s: 0.4,
            end_s: Some(1.0),
        }),
        ..p.song.clone().unwrap_or_default()
    });
    assert!(model.prepare(&r).is_err(), "a repaint needs its song");
    assert!(
        model.prepare_from_audio(&p, &song, 1.0).is_err(),
        "init audio needs a span"
    );
    let mut one_shot = model.prepare_from_audio(&r, &song, 1.0)?;
    let context = one_shot.cond("context")?.shallow_clone();
    assert_eq!(context.size(), [1, 38, 16]);
    // The span's mask: frames 10..25 regenerated, the rest kept.
    let mask: Vec<f32> = Vec::try_from(context.get(0).select(1, 8))?;
    let want: Vec<f32> = (0..38)
        .map(|f| if (10..25).contains(&f) { 1.0 } else { 0.0 })
        .collect();
    assert_eq!(mask, want);
    run(&*model, &mut one_shot, 4)?;
    let mut first = model.prepare_from_audio(&r, &song, 1.0)?;
    run(&*model, &mut first, 2)?;
    let mut resumed = DenoiseState::from_checkpoint(&first.to_checkpoint()?, Device::Cpu)?;
    run(&*model, &mut resumed, 4)?;
    assert!(resumed.latent().equal(one_shot.latent()));
    let repainted = model.render(&resumed)?;
    assert_eq!(repainted[0].len(), clips[0].len());
    assert_ne!(repainted[0], clips[0]);
    Ok(())
}
