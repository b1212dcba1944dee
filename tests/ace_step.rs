//! ACE-Step songs served like every pack: a tiny random pipeline built by diffusers' own classes
//! (`scripts/fixtures/ace_step_tiny.py`: narrow networks, the real VAE's 48 kHz stereo and 25
//! latent frames a second), imported with `tutti model import`, sings lyrics through the farm
//! (real Postgres, RabbitMQ and S3; chunked denoising) and through `tutti generate` embedded; the
//! song fields are refused, naming the field and the model, where a model does not take them.
//! Skipped with a message when the Python reference (scripts/setup) is not installed.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::browser::Browser;
use common::{request, state, Farm, FarmOptions};
use tutti_model::families::ace_step::pack::{import, ImportOptions};
use tutti_proto::v1 as pb;

fn tutti_home() -> PathBuf {
    std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tutti")
        })
}

fn python() -> PathBuf {
    std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| tutti_home().join("venv"))
        .join("bin/python")
}

/// Whether the reference that builds the fixture is installed (else the tests say SKIPPED).
fn reference_installed() -> bool {
    let ok = tutti_home().join("pyref/diffusers").is_dir() && python().exists();
    if !ok {
        println!("SKIPPED: diffusers is not installed in $TUTTI_HOME/pyref (run scripts/setup)");
    }
    ok
}

/// The tiny diffusers folder, written under `root` (its `pipeline/`).
fn fixture(root: &Path) -> PathBuf {
    let out = root.join("ace-src");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixtures/ace_step_tiny.py");
    let run = Command::new(python())
        .arg(&script)
        .arg(&out)
        .env("PYTHONPATH", tutti_home().join("pyref"))
        .output()
        .expect("run the fixture script");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out.join("pipeline")
}

fn write_pack(models: &Path) {
    let root = models.parent().expect("the farm's folder");
    let opts = ImportOptions {
        name: Some("ace-tiny".into()),
        version: None,
    };
    import(&fixture(root), &models.join("ace-tiny"), &opts).expect("import");
}

fn song(prompt: &str, model: &str) -> pb::SubmitGenerationRequest {
    let mut req = request(prompt);
    req.model = Some(pb::ModelRef {
        name: model.into(),
        version: String::new(),
    });
    req.duration_seconds = Some(1.5);
    req
}

fn wav_shape(bytes: &[u8]) -> (u16, u32, u32) {
    let r = hound::WavReader::new(std::io::Cursor::new(bytes)).expect("a WAV");
    (r.spec().channels, r.spec().sample_rate, r.duration())
}

#[tokio::test]
async fn the_farm_sings_lyrics_on_an_ace_step_pack() {
    if !reference_installed() {
        return;
    }
    let farm = Farm::start(FarmOptions {
        chunk_steps: 2,
        packs: Some(write_pack),
        ..Default::default()
    })
    .await;
    let mut client = farm.client().await;

    // The catalogue says what the song model takes.
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .models;
    let ace = models
        .iter()
        .find(|m| m.name == "ace-tiny")
        .expect("the ACE-Step pack is listed");
    assert_eq!(
        (ace.family.as_str(), ace.sample_rate, ace.channels),
        ("ace_step", 48_000, 2)
    );
    assert!(ace.lyrics_languages.iter().any(|l| l == "es"));
    assert!(ace.inputs.contains(&(pb::ModelInput::Lyrics as i32)));
    assert!(!ace
        .inputs
        .contains(&(pb::ModelInput::NegativePrompt as i32)));

    // Each song field is refused where it does not apply, naming the field and the rule.
    let mut on_mel = song("a calm piano", "tiny");
    on_mel.duration_seconds = Some(2.0);
    on_mel.lyrics = "[verse]\nla la".into();
    let cases: Vec<(pb::SubmitGenerationRequest, &str, &str)> = vec![
        (on_mel, "lyrics", "does not sing"),
        (
            pb::SubmitGenerationRequest {
                vocal_language: "xx".into(),
                ..song("pop", "ace-tiny")
            },
            "vocal_language",
            "must be one of",
        ),
        (
            pb::SubmitGenerationRequest {
                time_signature: Some(5),
                ..song("pop", "ace-tiny")
            },
            "time_signature",
            "2, 3, 4 or 6",
        ),
        (
            pb::SubmitGenerationRequest {
                lyrics: "x".repeat(5000),
                ..song("pop", "ace-tiny")
            },
            "lyrics",
            "at most 4096",
        ),
        (
            pb::SubmitGenerationRequest {
                negative_prompt: "drums".into(),
                ..song("pop", "ace-tiny")
            },
            "negative_prompt",
            "ace_step family",
        ),
    ];
    for (req, field, rule) in cases {
        let e = client.submit_generation(req).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with(field) && e.message().contains(rule),
            "{}",
            e.message()
        );
    }

    // A song: lyrics in Spanish, three beats a bar, 4 guided steps in two chunks of two.
    let mut req = song(
        "upbeat latin pop, female vocals, 100 BPM, in A minor",
        "ace-tiny",
    );
    req.lyrics = "[verse]\nla noche es joven\n[chorus]\nbaila conmigo".into();
    req.vocal_language = "es".into();
    req.time_signature = Some(3);
    req.steps = Some(4);
    req.seed = Some(3);
    // The same song again is the same audio; other lyrics are another song. One job at a time:
    // the same rows in every forward. (Batched beside another job, a song may differ in the
    // last bits on processors whose GEMM kernels block by the row count: on an AMD EPYC the
    // same request ran alone and beside its twin gave two hashes.)
    let mut ids = Vec::new();
    for lyrics in [None, None, Some("[verse]\notra letra")] {
        if let Some(l) = lyrics {
            req.lyrics = l.into();
        }
        let job = client
            .submit_generation(req.clone())
            .await
            .expect("submit")
            .into_inner();
        farm.wait_job(&job.id, Duration::from_secs(180)).await;
        ids.push(job.id);
    }
    let mut outputs = Vec::new();
    for id in &ids {
        let job = farm.wait_job(id, Duration::from_secs(180)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        let out = &job.outputs[0];
        assert_eq!((out.sample_rate, out.channels), (48_000, 2));
        let object = farm.fetch(&out.url).await;
        assert_eq!(wav_shape(&object), (2, 48_000, 72_000));
        let accepted = job.request.as_ref().expect("the accepted request");
        assert_eq!(accepted.vocal_language, "es");
        let chunks = farm
            .events(id)
            .await
            .iter()
            .filter(|e| e.0 == "chunk_done" && e.3["kind"] == "denoise")
            .count();
        assert_eq!(chunks, 2, "denoise chunks of {id}");
        outputs.push(out.sha256.clone());
    }
    assert_eq!(
        outputs[0], outputs[1],
        "the same request and seed give the same song"
    );
    assert_ne!(outputs[0], outputs[2], "other lyrics give another song");
}

fn tutti(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TUTTI_SERVER")
        .env_remove("TUTTI_MODELS_DIR")
        .env_remove("RUST_LOG")
        .env("TUTTI_DEVICE", "cpu")
        .stdin(Stdio::null())
        .output()
        .expect("run tutti")
}

#[test]
fn generate_embedded_sings_a_lyrics_file() {
    if !reference_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixture(dir.path()).display().to_string();
    let o = tutti(
        &["model", "import", &src, "-o", "models/ace-tiny"],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("ACE-Step 1.5"), "{stdout}");
    std::fs::write(
        dir.path().join("song.txt"),
        "[verse]\nhello world\n[chorus]\noh oh\n",
    )
    .expect("lyrics file");
    let o = tutti(
        &[
            "generate",
            "--model",
            "acestep-v15-base",
            "upbeat pop, female vocals, 120 BPM, C major",
            "--lyrics-file",
            "song.txt",
            "--language",
            "en",
            "--models-dir",
            "models",
            "--duration",
            "1.2",
            "--steps",
            "2",
            "--seed",
            "1",
            "-o",
            "song.wav",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let wav = std::fs::read(dir.path().join("song.wav")).expect("the WAV");
    assert_eq!(wav_shape(&wav), (2, 48_000, 57_600));
}

/// The studio with a song model: its card, the lyrics box and the languages it sings, the
/// preview of the two texts it reads, and a song submitted from the page.
#[tokio::test]
async fn the_studio_writes_and_plays_a_song() {
    if !reference_installed() {
        return;
    }
    let farm = Farm::start(FarmOptions {
        packs: Some(write_pack),
        ..Default::default()
    })
    .await;
    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    let card = r#"#models .model-card[data-model="ace-tiny"]"#;
    b.wait_js(
        &format!("return !!document.querySelector('{card}')"),
        "the song model's card",
    )
    .await;
    b.click(&format!("{card} input")).await;
    let shown =
        |input: &str| format!("return !document.querySelector('[data-input=\"{input}\"]').hidden");
    b.wait_js(&shown("MODEL_INPUT_LYRICS"), "the lyrics box")
        .await;
    assert_eq!(b.js(&shown("MODEL_INPUT_VOCAL_LANGUAGE")).await, true);
    assert_eq!(b.js(&shown("MODEL_INPUT_REPAINT")).await, true);
    assert_eq!(b.js(&shown("MODEL_INPUT_NEGATIVE_PROMPT")).await, false);
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#f-language option')).some(o => o.value === 'ja')")
            .await,
        true
    );
    b.fill("#f-prompt", "dreamy city pop, 96 BPM").await;
    b.fill("#f-lyrics", "[verse]\nneon lights\n[chorus]\nstay tonight")
        .await;
    b.select("#f-language", "ja").await;
    b.select("#f-time-signature", "3").await;
    b.fill("#f-duration", "1.5").await;
    b.fill("#f-steps", "2").await;
    // The preview shows the caption with its metadata block and the lyrics with their language.
    b.wait_js(
        "const t = document.querySelector('#preview').textContent; \
         return t.includes('# Caption\\ndreamy city pop, 96 BPM') && t.includes('- bpm: 96') && \
         t.includes('- timesignature: 3') && t.includes('# Languages\\nja') && t.includes('[chorus]\\nstay tonight')",
        "the song texts in the preview",
    )
    .await;
    b.screenshot("song").await;
    b.click("#submit").await;
    b.wait_js_for(
        "const c = document.querySelector('#jobs .job'); return !!c && c.dataset.state === 'succeeded'",
        "the song from the page",
        Duration::from_secs(180),
    )
    .await;
    let id = b
        .js("return document.querySelector('#jobs .job').dataset.jobId")
        .await;
    let job = farm
        .client()
        .await
        .get_job(pb::GetJobRequest {
            id: id.as_str().unwrap_or_default().into(),
        })
        .await
        .expect("the page's job")
        .into_inner();
    let sent = job.request.expect("request");
    assert_eq!(sent.lyrics, "[verse]\nneon lights\n[chorus]\nstay tonight");
    assert_eq!(
        (sent.vocal_language.as_str(), sent.time_signature),
        ("ja", Some(3))
    );
    assert_eq!(
        (job.outputs[0].sample_rate, job.outputs[0].channels),
        (48_000, 2)
    );
    b.close().await;
}
