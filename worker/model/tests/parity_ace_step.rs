//! Parity of the native ACE-Step 1.5 port with diffusers 0.42.1's `AceStepPipeline` on a tiny
//! random pipeline that diffusers' own classes build (`scripts/fixtures/ace_step_tiny.py`, run
//! into a temporary folder with the venv's python and the reference scripts/setup installs into
//! `$TUTTI_HOME/pyref`): the texts the pipeline formats, their token ids, the text encoder's
//! states and the lyric embeddings, the condition encoder's packed sequence, every DiT forward,
//! every sampler step (plain Euler as turbo runs it, and APG-guided as base/SFT run it) and the
//! decoded audio; and a repaint, whose context (the song encoded, silence in the span, the
//! span's mask) the family builds from the song as diffusers does. Skipped with a message when
//! the reference is not installed.

mod common;

use tch::{Device, Kind, Tensor};
use tutti_model::decoders::oobleck::Oobleck;
use tutti_model::device::Precision;
use tutti_model::families;
use tutti_model::families::ace_step::guidance::apg;
use tutti_model::families::ace_step::pack::{import, ImportOptions};
use tutti_model::families::ace_step::prompt::{SongText, Task};
use tutti_model::families::ace_step::{ConditionEncoder, ConditionInputs, Dit};
use tutti_model::samplers::{FlowEuler, FlowSpacing, Sampler, SamplerState, ScheduleConfig};
use tutti_model::text::qwen3::Qwen3Encoder;
use tutti_model::text::qwen3_tokenizer::Qwen3Tokenizer;
use tutti_model::weights::{self, TensorFile};
use tutti_shared::job::{RepaintSpan, Song};
use tutti_shared::prompt::{Controls, Mode};

fn reference() -> anyhow::Result<Option<tempfile::TempDir>> {
    common::run_fixture("ace_step_tiny.py", "diffusers")
}

/// The largest difference relative to the reference's largest magnitude.
fn rel_diff(ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.size(), theirs.size(), "shapes differ");
    let a = ours.to_kind(Kind::Double);
    let b = theirs.to_kind(Kind::Double);
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

#[track_caller]
fn close(what: &str, ours: &Tensor, theirs: &Tensor) {
    let d = rel_diff(ours, theirs);
    println!("{what}: max diff {d:.2e} of the largest magnitude");
    assert!(d < 1e-4, "{what}: {d:.3e}");
}

#[derive(serde::Deserialize)]
struct Call {
    prompt: String,
    lyrics: String,
    vocal_language: String,
    bpm: Option<f32>,
    keyscale: Option<String>,
    timesignature: Option<String>,
    num_inference_steps: usize,
    guidance_scale: f64,
    shift: f64,
    audio_duration: f32,
    task_type: Option<String>,
    repainting_start: Option<f32>,
    repainting_end: Option<f32>,
}

fn controls(call: &Call) -> Controls {
    let (key, mode) = match call.keyscale.as_deref() {
        Some("C major") => (Some(0), Some(Mode::Major)),
        None => (None, None),
        Some(other) => panic!("the fixture's key scale {other:?} is not mapped here"),
    };
    Controls {
        duration_s: call.audio_duration,
        bpm: call.bpm,
        key,
        mode,
    }
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, -1])
}

#[test]
fn ace_step_matches_diffusers() -> anyhow::Result<()> {
    let Some(dir) = reference()? else {
        return Ok(());
    };
    let pipe = dir.path().join("pipeline");
    let cpu = Device::Cpu;
    let text_encoder = Qwen3Encoder::load(&pipe.join("text_encoder"), cpu, Kind::Float)?;
    let prompt_tok = Qwen3Tokenizer::load(&pipe.join("tokenizer/tokenizer.json"), 256)?;
    let lyric_tok = Qwen3Tokenizer::load(&pipe.join("tokenizer/tokenizer.json"), 2048)?;
    let condition = ConditionEncoder::load(&pipe.join("condition_encoder"), cpu, Kind::Float)?;
    let dit = Dit::load(&pipe.join("transformer"), cpu, Kind::Float)?;
    let vae = Oobleck::load(&pipe.join("vae"), cpu, Kind::Float, false)?;
    assert!(!dit.config().is_turbo);
    // The family itself, for the repaint's context.
    let pack_dir = dir.path().join("pack");
    import(&pipe, &pack_dir, &ImportOptions::default())?;
    let family = families::load(&families::read_info(&pack_dir)?, cpu, Precision::F32)?;

    for run in ["guided", "plain", "repaint"] {
        println!("-- {run}");
        let io: TensorFile =
            weights::read_safetensors(&dir.path().join(format!("io_{run}.safetensors")))?;
        let t = |k: &str| -> &Tensor { &io.tensors[k] };
        let call: Call = serde_json::from_str(&io.metadata["call"])?;

        // The texts and their tokens.
        let controls = controls(&call);
        let task = match call.task_type.as_deref() {
            Some("repaint") => Task::Repaint,
            _ => Task::Text2Music,
        };
        let song = SongText {
            task,
            caption: &call.prompt,
            lyrics: &call.lyrics,
            language: &call.vocal_language,
            controls: &controls,
            time_signature: call.timesignature.as_deref().map(str::parse).transpose()?,
        };
        assert_eq!(song.caption_text(), io.metadata["text"]);
        assert_eq!(song.lyric_text(), io.metadata["lyric_text"]);
        let text_ids = ids(&prompt_tok.encode(&song.caption_text())?);
        let lyric_ids = ids(&lyric_tok.encode(&song.lyric_text())?);
        assert!(text_ids.equal(t("text_ids")), "text ids differ");
        assert!(lyric_ids.equal(t("lyric_ids")), "lyric ids differ");

        // The text encoder's states and the lyric embedding rows.
        let text = text_encoder.forward(&text_ids, None)?;
        close("text states", &text, t("text_hidden"));
        let lyrics = text_encoder.embed(&lyric_ids)?;
        close("lyric embeddings", &lyrics, t("lyric_embeds"));

        // The condition encoder, from our own inputs.
        let frames = t("noise").size()[1];
        let reference = condition.silence(t("reference").size()[1]);
        assert!(reference.equal(t("reference")), "silence reference differs");
        let text_mask = Tensor::ones([1, text.size()[1]], (Kind::Bool, cpu));
        let lyric_mask = Tensor::ones([1, lyrics.size()[1]], (Kind::Bool, cpu));
        let (cond, _) = condition.forward(&ConditionInputs {
            text: &text,
            text_mask: &text_mask,
            lyrics: &lyrics,
            lyric_mask: &lyric_mask,
            reference: &reference,
        })?;
        close("condition", &cond, t("condition"));

        // Every DiT forward on the reference's own inputs.
        let guided = call.guidance_scale > 1.0;
        let rows = if guided { 2 } else { 1 };
        let enc = if guided {
            Tensor::cat(&[&cond, &condition.null_condition().expand_as(&cond)], 0)
        } else {
            cond.shallow_clone()
        };
        let enc = dit.embed_condition(&enc);
        let latent_channels = dit.config().latent_channels;
        let context = match task {
            Task::Text2Music => Tensor::cat(
                &[
                    condition.silence(frames),
                    Tensor::ones([1, frames, latent_channels], (Kind::Float, cpu)),
                ],
                -1,
            ),
            Task::Repaint => {
                let mut p = family.default_params(&call.prompt, call.audio_duration);
                p.song = Some(Song {
                    lyrics: call.lyrics.clone(),
                    language: call.vocal_language.clone(),
                    time_signature: None,
                    repaint: Some(RepaintSpan {
                        start_s: call.repainting_start.unwrap_or(0.0),
                        end_s: call.repainting_end,
                    }),
                });
                let state = family.prepare_from_audio(&p, t("src_audio"), 1.0)?;
                let ours = state.cond("context")?.shallow_clone();
                close("repaint context", &ours, t("context"));
                ours
            }
        }
        .repeat([rows, 1, 1]);
        for i in 0..call.num_inference_steps {
            let v = dit.forward(
                t(&format!("step_{i}_x")),
                t(&format!("step_{i}_t")),
                &enc,
                &context,
            )?;
            close(&format!("dit step {i}"), &v, t(&format!("step_{i}_v")));
        }

        // The whole loop from the initial noise: schedule, guidance and sampler steps.
        let schedule = ScheduleConfig {
            shift: call.shift,
            flow_spacing: FlowSpacing::Unit,
            ..Default::default()
        };
        let sampler = FlowEuler::new(&schedule, call.num_inference_steps)?;
        let mut state = SamplerState::default();
        let mut x = t("noise").shallow_clone();
        let mut momentum: Option<Tensor> = None;
        for i in 0..call.num_inference_steps {
            let timestep = Tensor::full([rows], sampler.model_timestep(i), (Kind::Float, cpu));
            let input = if guided {
                Tensor::cat(&[&x, &x], 0)
            } else {
                x.shallow_clone()
            };
            let out = dit.forward(&input, &timestep, &enc, &context)?;
            let v = if guided {
                let (g, m) = apg(
                    &out.narrow(0, 0, 1),
                    &out.narrow(0, 1, 1),
                    call.guidance_scale,
                    momentum.as_ref(),
                    1,
                );
                momentum = Some(m);
                g
            } else {
                out
            };
            x = sampler.step(i, &x, &v, &mut state);
            close(
                &format!("latents after step {i}"),
                &x,
                t(&format!("step_{i}_latents")),
            );
        }

        // The decode and the pipeline's peak normalisation to -1 dBFS.
        let audio = vae.decode(&x.transpose(1, 2));
        let peak = audio.abs().amax([1, 2], true);
        let audio = &audio / peak.clamp_min(1.0);
        let peak = audio.abs().amax([1, 2], true).clamp_min(1e-6);
        let audio = audio * (10f64.powf(-1.0 / 20.0)) / peak;
        close("audio", &audio, t("audio"));
    }
    Ok(())
}
