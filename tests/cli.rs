//! `tutti` as a person runs it: spawn the binary, check exit codes, messages and the WAV.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn tiny_pack(dir: &Path) -> String {
    let models = dir.join("models");
    tutti_model::tiny::write_tiny_pack(&models.join("tiny"), 7).expect("tiny pack");
    models.display().to_string()
}

const PROMPT: &str = "melancholic lo-fi piano, 75 BPM, late night study session";

#[test]
fn generate_runs_embedded_and_writes_the_wav_it_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = tiny_pack(dir.path());
    let run = |name: &str| {
        let out = tutti(
            &[
                "generate",
                PROMPT,
                "-o",
                name,
                "--models-dir",
                &models,
                "--duration",
                "2",
                "--steps",
                "4",
                "--seed",
                "5",
            ],
            dir.path(),
        );
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "exit {:?}\n{stdout}\n{stderr}",
            out.status
        );
        (stdout, stderr)
    };
    let (stdout, stderr) = run("track.wav");
    assert!(stdout.contains("track.wav"), "{stdout}");
    assert!(stdout.contains("2.00 s at 16000 Hz"), "{stdout}");
    assert!(stdout.contains("seed     5"), "{stdout}");
    assert!(
        stdout.contains("denoise") && stdout.contains("vocode"),
        "{stdout}"
    );
    assert!(
        !stderr.contains(" INFO "),
        "logs stay quiet by default: {stderr}"
    );
    let wav = hound::WavReader::open(dir.path().join("track.wav")).expect("a WAV file");
    assert_eq!(wav.spec().sample_rate, 16000);
    assert_eq!(wav.duration(), 32000);
    // The same seed gives the same bytes, run after run.
    run("again.wav");
    let a = std::fs::read(dir.path().join("track.wav")).expect("read");
    let b = std::fs::read(dir.path().join("again.wav")).expect("read");
    assert_eq!(a, b);
}

#[test]
fn bad_flags_say_what_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tutti(&["generate", PROMPT, "--format", "aac"], dir.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'aac'") && stderr.contains("wav, flac, mp3, opus"),
        "{stderr}"
    );
    let out = tutti(&["generate", PROMPT, "--sampler", "euler"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("flow-euler"), "{}", text(&out).1);
    let out = tutti(&["generate", PROMPT, "--bogus"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--bogus"), "{}", text(&out).1);
}

#[test]
fn out_of_range_values_come_back_from_the_validator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = tiny_pack(dir.path());
    let out = tutti(
        &["generate", PROMPT, "--models-dir", &models, "--duration=-3"],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("duration"),
        "{stderr}"
    );
    // The delivery flags' rules (a negative --loudness reads as a number, not a flag).
    let out = tutti(
        &[
            "generate",
            PROMPT,
            "--models-dir",
            &models,
            "--format",
            "opus",
            "--bitrate",
            "600",
        ],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bitrate_kbps: must be between 6 and 510 kbps for opus"),
        "{stderr}"
    );
    let out = tutti(
        &[
            "generate",
            PROMPT,
            "--models-dir",
            &models,
            "--loudness",
            "-3",
        ],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("loudness_lufs: must be between -40 and -8 LUFS"),
        "{stderr}"
    );
}

#[test]
fn a_deadline_is_a_time_the_validator_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = tiny_pack(dir.path());
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            PROMPT,
            "--models-dir",
            &models,
            "--duration",
            "1",
            "--steps",
            "2",
            "-o",
            "d.wav",
        ];
        args.extend_from_slice(extra);
        let out = tutti(&args, dir.path());
        let (_, stderr) = text(&out);
        (out.status.code(), stderr)
    };
    let (code, stderr) = gen(&["--deadline", "2020-01-01T00:00:00Z"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("deadline: must be in the future, at most 7 days ahead"),
        "{stderr}"
    );
    let (code, stderr) = gen(&["--deadline", "tomorrow"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--deadline"), "{stderr}");
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    let (code, stderr) = gen(&["--deadline", &soon, "--cancel-after", "10m"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    // An hour ahead: accepted, and the job finishes well inside it.
    let (code, stderr) = gen(&["--deadline", &soon]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(dir.path().join("d.wav").exists());
}

/// `tutti models` says how the built-in pack serves asked keys: the tonics "in a minor key"
/// gets and the varispeed reach (read from the shipped `model.toml`, as a farm reads it).
#[test]
fn the_catalogue_shows_how_the_built_in_pack_serves_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = dir.path().join("models/tutti-mini");
    std::fs::create_dir_all(&pack).expect("pack dir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tutti-mini/model.toml");
    std::fs::copy(shipped, pack.join("model.toml")).expect("copy model.toml");
    let out = tutti(&["models", "--models-dir", "models"], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "  keys: \"minor\" alone is served in C#, D, E, G, A (the seed picks); other minor \
             tonics are rendered up to 1 semitone away and played back in the asked key\n"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("\"major\" alone"), "{stdout}");
    let out = tutti(
        &["models", "tutti-mini", "--models-dir", "models", "--json"],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let m: serde_json::Value = serde_json::from_str(&stdout).expect("a Model as JSON");
    let keys = &m["key_serving"];
    assert_eq!(
        keys["minor_tonics"],
        serde_json::json!(["C#", "D", "E", "G", "A"]),
        "{m}"
    );
    assert_eq!(keys["varispeed_semitones"], 1, "{m}");
}

#[test]
fn a_missing_model_pack_says_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tutti(
        &["generate", PROMPT, "--models-dir", "no-such-dir"],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
    assert!(stderr.contains("tutti model tiny"), "{stderr}");
    assert!(!dir.path().join("models").exists());
}

#[test]
fn an_unreachable_server_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tutti(
        &["generate", PROMPT, "--server", "http://127.0.0.1:9"],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:9"), "{stderr}");
    let out = tutti(&["job", "x", "--server", "127.0.0.1:9"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("http://127.0.0.1:9"),
        "{}",
        text(&out).1
    );
}

/// A farm that takes the connection and never answers (a TLS 1.3 server that rejected the
/// client's certificate after the handshake looks like this to the call): the command fails
/// within `--answer-timeout` and says what to check, instead of waiting forever.
#[test]
fn a_farm_that_never_answers_fails_the_call_within_the_answer_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts and holds every connection, reading nothing and writing nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let server = format!("http://{addr}");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(["list", "--server", &server, "--answer-timeout", "1s"])
        .current_dir(dir.path())
        .env_remove("TUTTI_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tutti");
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("tutti list still waiting on a silent farm after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not answer within --answer-timeout"),
        "{stderr}"
    );
    assert!(stderr.contains("--tls-client-cert"), "{stderr}");
}

/// `tutti dev` serves the API; `generate --server --no-wait`, `watch` and `job` follow a job.
#[test]
fn dev_serves_the_client_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = tiny_pack(dir.path());
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args([
            "dev",
            "--listen",
            &addr,
            "--models-dir",
            &models,
            "--device",
            "cpu",
            // Any free port: the default 8080 may be taken on a test machine.
            "--studio-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn tutti dev");
    let server = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let out = tutti(
            &[
                "generate",
                PROMPT,
                "--server",
                &server,
                "--no-wait",
                "--steps",
                "4",
                "--duration",
                "2",
            ],
            dir.path(),
        );
        if out.status.success() {
            break text(&out).0.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "tutti dev did not come up: {:?}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(id.len(), 36, "--no-wait prints the job id: {id}");
    let watch = tutti(&["watch", &id, "--server", &server], dir.path());
    assert!(watch.status.success(), "{:?}", text(&watch));
    let job = tutti(&["job", &id, "--server", &server], dir.path());
    let (stdout, _) = text(&job);
    assert!(job.status.success());
    assert!(stdout.contains("state    succeeded"), "{stdout}");
    assert!(stdout.contains("file://"), "{stdout}");
    let unknown = tutti(
        &[
            "job",
            "00000000-0000-0000-0000-000000000000",
            "--server",
            &server,
        ],
        dir.path(),
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown).1.contains("NotFound"),
        "{:?}",
        text(&unknown)
    );
    // The operator commands (auth off: the local operator may look).
    let workers = tutti(&["workers", "--server", &server], dir.path());
    let (stdout, stderr) = text(&workers);
    assert!(workers.status.success(), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("embedded-w0") && l.contains("live")),
        "{stdout}"
    );
    let queues = tutti(&["queues", "--server", &server], dir.path());
    let (stdout, stderr) = text(&queues);
    assert!(queues.status.success(), "{stderr}");
    assert!(stdout.contains("jobs: 0 queued, 0 running"), "{stdout}");
    assert!(
        stdout.contains("default"),
        "the tenant's share is missing: {stdout}"
    );
    // SIGTERM drains and exits cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dev.try_wait().expect("wait tutti dev") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = dev.kill();
            panic!("tutti dev did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
