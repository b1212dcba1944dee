//! Stable Audio packs served like tutti-mini: imported from tiny random 44.1 kHz stereo folders
//! (`tutti_model::tiny_sao`, built from the committed parity fixtures), run through the farm
//! (real Postgres, RabbitMQ and S3; coordinator and worker processes; chunked denoising) and
//! through `tutti generate` embedded, they give stereo 44.1 kHz audio of the asked length, and a
//! job in several chunks gives the bytes of a job in one.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{request, state, Farm, FarmOptions};
use sha2::{Digest, Sha256};
use tutti_model::stable_audio::{import, ImportOptions};
use tutti_model::tiny_sao;
use tutti_proto::v1 as pb;

/// 32 latent frames of hop 2048 at 44.1 kHz: a 1.48 s window.
const FRAMES: i64 = 32;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("worker/model/tests/fixtures")
        .join(name)
}

/// The published-layout folders next to `models`: SAO 1.0's (diffusers) and Small's
/// (stable-audio-tools, with its t5-base folder).
fn sources(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (open, small, t5) = (
        root.join("src/open"),
        root.join("src/small"),
        root.join("src/t5-base"),
    );
    tiny_sao::diffusers_folder(&fixture("sao-tiny"), &open, FRAMES).expect("open folder");
    tiny_sao::sat_folder(&fixture("sao-small-tiny"), &small, FRAMES).expect("small folder");
    tiny_sao::t5_folder(&fixture("sao-tiny"), &t5).expect("t5 folder");
    (open, small, t5)
}

/// Both packs under the farm's models folder, imported as `tutti model import` does.
fn write_packs(models: &Path) {
    let root = models.parent().expect("the farm's folder");
    let (open, small, t5) = sources(root);
    let opts = |t5: Option<PathBuf>| ImportOptions {
        name: None,
        version: None,
        t5,
    };
    import(&open, &models.join("stable-audio-open-1.0"), &opts(None)).expect("import 1.0");
    import(
        &small,
        &models.join("stable-audio-open-small"),
        &opts(Some(t5)),
    )
    .expect("import small");
}

fn on_model(prompt: &str, model: &str, duration: f32) -> pb::SubmitGenerationRequest {
    let mut req = request(prompt);
    req.model = Some(pb::ModelRef {
        name: model.into(),
        version: String::new(),
    });
    req.duration_seconds = Some(duration);
    req
}

/// Channels, rate and frames of a WAV.
fn wav_shape(bytes: &[u8]) -> (u16, u32, u32) {
    let r = hound::WavReader::new(std::io::Cursor::new(bytes)).expect("a WAV");
    (r.spec().channels, r.spec().sample_rate, r.duration())
}

#[tokio::test]
async fn the_farm_renders_stable_audio_packs_to_stereo_44k_in_chunks() {
    let farm = Farm::start(FarmOptions {
        chunk_steps: 2,
        packs: Some(write_packs),
        ..Default::default()
    })
    .await;
    let mut client = farm.client().await;

    // The sampler rule knows each model's family.
    let mut bad = on_model("a calm piano", "stable-audio-open-small", 1.0);
    bad.sampler = pb::Sampler::CosineDpmSolverPp2mSde as i32;
    let e = client.submit_generation(bad).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("sampler") && e.message().contains("ping_pong"),
        "{}",
        e.message()
    );
    let mut bad = on_model("a calm piano", "tiny", 2.0);
    bad.sampler = pb::Sampler::PingPong as i32;
    let e = client.submit_generation(bad).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("mel family"), "{}", e.message());
    let e = client
        .submit_generation(on_model("a calm piano", "stable-audio-open-small", 5.0))
        .await
        .expect_err("past the window");
    assert!(e.message().contains("duration_seconds"), "{}", e.message());

    // SAO 1.0: its defaults (the SDE sampler, guidance 7), 6 steps in three chunks of two.
    let mut req = on_model("fast drums and bass", "stable-audio-open-1.0", 1.2);
    req.steps = Some(6);
    let open = client
        .submit_generation(req.clone())
        .await
        .expect("submit")
        .into_inner();
    let mut flac = req;
    flac.format = pb::AudioFormat::Flac as i32;
    let flac = client
        .submit_generation(flac)
        .await
        .expect("submit")
        .into_inner();
    // Small: its defaults (ping-pong, 8 steps, no guidance) in four chunks.
    let small = client
        .submit_generation(on_model("a calm piano", "stable-audio-open-small", 1.0))
        .await
        .expect("submit")
        .into_inner();

    for (job, frames, chunks) in [(&open, 52920, 3), (&small, 44100, 4)] {
        let job = farm.wait_job(&job.id, Duration::from_secs(120)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        let out = &job.outputs[0];
        assert_eq!(out.sample_rate, 44100);
        assert_eq!(out.channels, 2);
        assert!(
            (out.duration_seconds - frames as f32 / 44100.0).abs() < 1e-3,
            "{out:?}"
        );
        // The presigned URL gives the object, a stereo 44.1 kHz WAV of the asked length.
        let object = farm.fetch(&out.url).await;
        assert_eq!(hex::encode(Sha256::digest(&object)), out.sha256);
        assert_eq!(wav_shape(&object), (2, 44100, frames));
        let denoise = farm
            .events(&job.id)
            .await
            .iter()
            .filter(|e| e.0 == "chunk_done" && e.3["kind"] == "denoise")
            .count();
        assert_eq!(denoise, chunks, "denoise chunks of {}", job.id);
    }
    // Audio-to-audio on Small: the clip is checked, stored, and the job starts from it. At
    // strength 1 ping-pong keeps nothing of the clip: the bytes of the text-only job.
    for (field, change, rule) in [
        (
            "init_audio",
            ("tiny", 2.0, common::sine_wav(1.0, 16000, 1), None),
            "mel family",
        ),
        (
            "init_audio",
            (
                "stable-audio-open-small",
                1.0,
                common::sine_wav(1.0, 22050, 2),
                None,
            ),
            "44100 Hz",
        ),
        (
            "init_audio",
            (
                "stable-audio-open-small",
                1.0,
                b"RIFF....WAVE".to_vec(),
                None,
            ),
            "WAV file",
        ),
        (
            "init_audio",
            (
                "stable-audio-open-small",
                1.0,
                common::sine_wav(3.0, 44100, 2),
                None,
            ),
            "long",
        ),
        (
            "init_strength",
            (
                "stable-audio-open-small",
                1.0,
                common::sine_wav(1.0, 44100, 2),
                Some(0.0),
            ),
            "(0, 1]",
        ),
    ] {
        let (model, duration, wav, strength) = change;
        let mut bad = on_model("a calm piano", model, duration);
        bad.init_audio = wav;
        bad.init_strength = strength;
        let e = client.submit_generation(bad).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with(field) && e.message().contains(rule),
            "{}",
            e.message()
        );
    }
    let mut a2a = on_model("a calm piano", "stable-audio-open-small", 1.0);
    a2a.init_audio = common::sine_wav(1.0, 44100, 2);
    a2a.init_strength = Some(0.5);
    let half = client
        .submit_generation(a2a.clone())
        .await
        .expect("submit")
        .into_inner();
    a2a.init_strength = Some(1.0);
    let full = client
        .submit_generation(a2a)
        .await
        .expect("submit")
        .into_inner();
    let small = farm.wait_job(&small.id, Duration::from_secs(120)).await;
    let half = farm.wait_job(&half.id, Duration::from_secs(120)).await;
    let full = farm.wait_job(&full.id, Duration::from_secs(120)).await;
    for j in [&half, &full] {
        assert_eq!(state(j), pb::JobState::Succeeded, "{j:?}");
        let object = farm.fetch(&j.outputs[0].url).await;
        assert_eq!(wav_shape(&object), (2, 44100, 44100));
    }
    assert_ne!(half.outputs[0].sha256, small.outputs[0].sha256);
    assert_eq!(full.outputs[0].sha256, small.outputs[0].sha256);

    let flac = farm.wait_job(&flac.id, Duration::from_secs(120)).await;
    assert_eq!(state(&flac), pb::JobState::Succeeded, "{flac:?}");
    let object = farm.fetch(&flac.outputs[0].url).await;
    assert_eq!(&object[..4], b"fLaC");
    // STREAMINFO: 20 bits of rate, then 3 of (channels - 1).
    let rate =
        (u32::from(object[18]) << 12) | (u32::from(object[19]) << 4) | (u32::from(object[20]) >> 4);
    assert_eq!((rate, ((object[20] >> 1) & 7) + 1), (44100, 2));
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

fn ok(o: Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(
        o.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        o.status
    );
    stdout
}

#[test]
fn generate_embedded_with_an_imported_small_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, small, t5) = sources(dir.path());
    let (small, t5) = (small.display().to_string(), t5.display().to_string());
    let import = |extra: &[&str]| {
        let mut args = vec!["model", "import", &small, "--t5", &t5];
        args.extend_from_slice(extra);
        ok(tutti(&args, dir.path()))
    };
    let stdout = import(&["-o", "models/stable-audio-open-small"]);
    assert!(
        stdout.contains("imported stable-audio-open-small"),
        "{stdout}"
    );
    // The same model with its 8 steps in one chunk instead of two (a pack's defaults are the
    // operator's to edit).
    import(&["--name", "one-chunk", "-o", "models/one-chunk"]);
    let toml_path = dir.path().join("models/one-chunk/model.toml");
    let text = std::fs::read_to_string(&toml_path).expect("model.toml");
    assert!(text.contains("chunk_steps = 4"), "{text}");
    std::fs::write(
        &toml_path,
        text.replace("chunk_steps = 4", "chunk_steps = 8"),
    )
    .expect("write");

    let generate = |model: &str, out: &str| {
        ok(tutti(
            &[
                "generate",
                "--model",
                model,
                "a calm piano with soft strings",
                "--models-dir",
                "models",
                "--duration",
                "1.2",
                "--seed",
                "5",
                "-o",
                out,
            ],
            dir.path(),
        ))
    };
    let stdout = generate("stable-audio-open-small", "small.wav");
    assert!(stdout.contains("1.20 s at 44100 Hz"), "{stdout}");
    let chunked = std::fs::read(dir.path().join("small.wav")).expect("the WAV");
    assert_eq!(wav_shape(&chunked), (2, 44100, 52920));
    generate("one-chunk", "one.wav");
    let whole = std::fs::read(dir.path().join("one.wav")).expect("the WAV");
    assert!(chunked == whole, "two chunks and one give different audio");

    // Audio-to-audio from a clip on disk.
    std::fs::write(dir.path().join("clip.wav"), common::sine_wav(1.2, 44100, 1)).expect("write");
    let mut args = vec![
        "generate",
        "--model",
        "stable-audio-open-small",
        "a calm piano with soft strings",
    ];
    args.extend(["--models-dir", "models", "--duration", "1.2", "--seed", "5"]);
    args.extend([
        "--init-audio",
        "clip.wav",
        "--init-strength",
        "0.6",
        "-o",
        "a2a.wav",
    ]);
    ok(tutti(&args, dir.path()));
    let a2a = std::fs::read(dir.path().join("a2a.wav")).expect("the WAV");
    assert_eq!(wav_shape(&a2a), (2, 44100, 52920));
    assert!(a2a != chunked, "the clip changed nothing");
}
