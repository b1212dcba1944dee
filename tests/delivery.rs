//! Delivery formats and loudness end to end: MP3 and Ogg Opus outputs are decoded by an
//! independent decoder (Debian's ffmpeg/ffprobe, which scripts/setup installs) and measured:
//! codec, channels, rate, duration (every decoded sample counted) and EBU R128 integrated
//! loudness, within 0.5 LU of the requested target. The mono 16 kHz tiny pack on both farms; a
//! stereo 44.1 kHz Stable Audio pack (tiny, random, from the committed fixtures) on the
//! distributed one, for the stereo and resampling paths.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{request, state, Backend, Farm, FarmOptions};
use tutti_proto::v1 as pb;

both_backends!(mp3_and_opus_outputs_decode_to_the_clip_at_the_loudness_target);

/// One delivery to ask for and what its file must be.
struct Case {
    format: pb::AudioFormat,
    ext: &'static str,
    bitrate_kbps: Option<u32>,
    loudness_lufs: Option<f32>,
    /// The bitrate the accepted request reports (the format's default when none was asked).
    accepted_kbps: Option<u32>,
    file_rate: u32,
    codec: &'static str,
    content_type: &'static str,
    /// Whether the decoded file must measure within 0.5 LU of the target (see the stereo test
    /// for when a lossy file cannot).
    on_target: bool,
}

const MP3: Case = Case {
    format: pb::AudioFormat::Mp3,
    ext: "mp3",
    bitrate_kbps: None,
    loudness_lufs: None,
    accepted_kbps: Some(128),
    file_rate: 32_000,
    codec: "mp3",
    content_type: "audio/mpeg",
    on_target: true,
};

const OPUS: Case = Case {
    format: pb::AudioFormat::Opus,
    ext: "opus",
    bitrate_kbps: Some(48),
    loudness_lufs: Some(-18.0),
    accepted_kbps: Some(48),
    file_rate: 48_000,
    codec: "opus",
    content_type: "audio/ogg; codecs=opus",
    on_target: true,
};

/// What ffprobe and ffmpeg make of an audio file.
#[derive(Debug)]
struct Probe {
    codec: String,
    channels: u32,
    sample_rate: u32,
    /// Seconds of decoded audio (every sample counted, not a header's estimate).
    decoded_s: f64,
    /// Integrated loudness, LUFS (ffmpeg's ebur128 filter).
    lufs: f64,
}

fn ffmpeg_missing() -> String {
    "ffmpeg/ffprobe not found: scripts/setup installs Debian's ffmpeg".to_string()
}

fn probe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name,channels,sample_rate",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", ffmpeg_missing()));
    assert!(out.status.success(), "ffprobe: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("ffprobe said no {k}: {text}"))
            .trim()
            .to_string()
    };
    let (codec, channels, sample_rate) = (
        field("codec_name"),
        field("channels").parse().expect("channels"),
        field("sample_rate").parse().expect("sample rate"),
    );
    // Decode every sample as 32-bit float at the stream's own rate and channels.
    let pcm = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "f32le", "-acodec", "pcm_f32le", "-"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", ffmpeg_missing()));
    assert!(pcm.status.success(), "ffmpeg decode: {pcm:?}");
    let frames = pcm.stdout.len() / 4 / channels as usize;
    let meter = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-i"])
        .arg(path)
        .args(["-af", "ebur128=framelog=verbose", "-f", "null", "-"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", ffmpeg_missing()));
    assert!(meter.status.success(), "ffmpeg ebur128: {meter:?}");
    let log = String::from_utf8_lossy(&meter.stderr);
    // The summary's "I:         -14.0 LUFS" (per-frame lines go to the verbose log level).
    let lufs = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("I:"))
        .filter_map(|v| v.trim().strip_suffix("LUFS"))
        .next_back()
        .unwrap_or_else(|| panic!("no integrated loudness in ffmpeg's output: {log}"))
        .trim()
        .parse()
        .expect("a number of LUFS");
    Probe {
        codec,
        channels,
        sample_rate,
        decoded_s: frames as f64 / f64::from(sample_rate),
        lufs,
    }
}

async fn mp3_and_opus_outputs_decode_to_the_clip_at_the_loudness_target(backend: Backend) {
    let farm = Farm::start(FarmOptions::on(backend)).await;
    let mut base = request("warm analog synth pads with a slow kick, 90 BPM");
    base.duration_seconds = Some(3.0);
    base.steps = Some(4);
    deliver(&farm, &base, &[MP3, OPUS], 1, 3.0).await;
}

/// Stable Audio: stereo at 44.1 kHz, so MP3 stays at 44.1 kHz and Opus is resampled to 48 kHz.
/// The tiny pack's random weights make hiss, not music: most of its energy lies above 12 kHz,
/// which MP3 and Opus low-pass away (inaudible there, but K-weighting counts it), so its lossy
/// files measure 1-3 LU under the target where music loses about 0.1. Its FLAC (the same audio,
/// the same seed) checks the gain stage on stereo; the lossy files are checked for shape and
/// for not coming out louder than the target.
#[tokio::test]
async fn stereo_44k_packs_become_stereo_mp3_and_48k_opus() {
    let farm = Farm::start(FarmOptions {
        packs: Some(write_sao_pack),
        ..Default::default()
    })
    .await;
    let mut req = request("fast drums and bass");
    req.model = Some(pb::ModelRef {
        name: "stable-audio-open-1.0".into(),
        version: String::new(),
    });
    req.duration_seconds = Some(1.2);
    req.steps = Some(4);
    let flac = Case {
        format: pb::AudioFormat::Flac,
        ext: "flac",
        bitrate_kbps: None,
        loudness_lufs: Some(-16.0),
        accepted_kbps: None,
        file_rate: 44_100,
        codec: "flac",
        content_type: "audio/flac",
        on_target: true,
    };
    let mp3 = Case {
        bitrate_kbps: Some(256),
        loudness_lufs: Some(-16.0),
        accepted_kbps: Some(256),
        file_rate: 44_100,
        on_target: false,
        ..MP3
    };
    let opus = Case {
        bitrate_kbps: None,
        loudness_lufs: Some(-16.0),
        accepted_kbps: Some(128),
        on_target: false,
        ..OPUS
    };
    deliver(&farm, &req, &[flac, mp3, opus], 2, 1.2).await;
}

/// The tiny SAO 1.0 pack (32 latent frames: a 1.48 s window) under the farm's models folder.
fn write_sao_pack(models: &Path) {
    use tutti_model::stable_audio::{import, ImportOptions};
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("worker/model/tests/fixtures");
    let src = models.parent().expect("the farm's folder").join("src/open");
    tutti_model::tiny_sao::diffusers_folder(&fixtures.join("sao-tiny"), &src, 32)
        .expect("the pack's source folder");
    let opts = ImportOptions {
        name: None,
        version: None,
        t5: None,
    };
    import(&src, &models.join("stable-audio-open-1.0"), &opts).expect("import");
}

/// Submits `base` once per case, waits, and measures each output with ffprobe and ffmpeg.
async fn deliver(
    farm: &Farm,
    base: &pb::SubmitGenerationRequest,
    cases: &[Case],
    channels: u32,
    seconds: f32,
) {
    let mut client = farm.client().await;
    let mut jobs = Vec::new();
    for c in cases {
        let req = pb::SubmitGenerationRequest {
            format: c.format as i32,
            bitrate_kbps: c.bitrate_kbps,
            loudness_lufs: c.loudness_lufs,
            ..base.clone()
        };
        let job = client
            .submit_generation(req)
            .await
            .expect("submit")
            .into_inner();
        jobs.push(job.id);
    }
    let dir = tempfile::tempdir().expect("a temp folder");
    for (c, id) in cases.iter().zip(&jobs) {
        let ext = c.ext;
        let job = farm.wait_job(id, Duration::from_secs(180)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        // The accepted request says what was applied: the bitrate and the loudness target
        // (-14 LUFS unless asked).
        let accepted = job.request.as_ref().expect("the accepted request");
        assert_eq!(accepted.bitrate_kbps, c.accepted_kbps, "{ext}");
        let target = c.loudness_lufs.unwrap_or(-14.0);
        assert_eq!(accepted.loudness_lufs, Some(target));

        let out = &job.outputs[0];
        assert_eq!(out.format, c.format as i32);
        assert_eq!(
            out.uri,
            farm.uri(&format!("outputs/default/{}/0.{ext}", job.id))
        );
        assert_eq!((out.sample_rate, out.channels), (c.file_rate, channels));
        assert!((out.duration_seconds - seconds).abs() < 1e-3, "{out:?}");
        // The worker's own measurement, before encoding.
        let measured = out.loudness_lufs.expect("measured loudness");
        assert!((measured - target).abs() < 0.1, "{out:?}");
        assert!(
            out.true_peak_dbtp.expect("true peak") <= -1.0 + 1e-3,
            "{out:?}"
        );

        let object = farm.fetch(&out.uri).await;
        assert_eq!(object.len() as u64, out.size_bytes);
        if out.url.starts_with("http") {
            let r = reqwest::get(&out.url).await.expect("download");
            let ct = r.headers().get("content-type").cloned();
            assert_eq!(
                ct.as_ref().and_then(|v| v.to_str().ok()),
                Some(c.content_type),
                "{}",
                out.url
            );
            assert_eq!(r.bytes().await.expect("body").to_vec(), object);
        }
        let path = dir.path().join(format!("{}.{ext}", job.id));
        std::fs::write(&path, &object).expect("write the output");
        let p = probe(&path);
        eprintln!("{ext}: {p:?}, target {target} LUFS, the worker measured {measured}");
        assert_eq!(
            (p.codec.as_str(), p.channels, p.sample_rate),
            (c.codec, channels, c.file_rate),
            "{p:?}"
        );
        // Every sample of the clip and no more: LAME's Info tag and Opus's pre-skip and end
        // granule trim the codecs' delay and padding.
        assert!(
            (p.decoded_s - f64::from(seconds)).abs() < 0.005,
            "{ext}: {p:?}"
        );
        let miss = p.lufs - f64::from(target);
        if c.on_target {
            assert!(
                miss.abs() < 0.5,
                "{ext}: {} LUFS decoded, target {target}",
                p.lufs
            );
        } else {
            assert!(
                miss < 0.5,
                "{ext}: {} LUFS decoded, target {target}",
                p.lufs
            );
        }
    }
}

/// The studio: the format select offers MP3 and Opus, the bitrate field shows for them, a bad
/// bitrate gets the server's rule next to the field, and a good one plays as an MP3 at the
/// asked loudness, its caption saying so.
#[tokio::test]
async fn the_studio_picks_a_format_a_bitrate_and_a_loudness() {
    let farm = Farm::start(FarmOptions::on(Backend::Embedded)).await;
    let b = common::browser::Browser::start().await;
    b.open(&farm.studio_url()).await;
    b.wait_js(
        "return document.body.dataset.ready === 'true'",
        "the studio",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#f-bitrate-row').hidden")
            .await,
        true,
        "WAV takes no bitrate"
    );
    b.fill("#f-genre", "ambient").await;
    b.fill("#f-duration", "2").await;
    b.select("#f-format", "AUDIO_FORMAT_MP3").await;
    b.wait_js(
        "return !document.querySelector('#f-bitrate-row').hidden",
        "the bitrate field",
    )
    .await;
    b.fill("#f-bitrate", "100").await;
    b.fill("#f-loudness", "-16").await;
    b.click("#submit").await;
    b.wait_js(
        "return document.querySelector('#form-status').textContent.startsWith('Not submitted')",
        "the refused submit",
    )
    .await;
    let rule = b.text(r#".error[data-error-for="bitrate_kbps"]"#).await;
    assert!(rule.starts_with("must be one of 32, 40, 48"), "{rule}");
    assert_eq!(farm.job_count().await, 0, "a refused form stored a job");

    b.fill("#f-bitrate", "192").await;
    b.click("#submit").await;
    let card = "#jobs .job";
    b.wait_js(
        &format!("const c = document.querySelector('{card}'); return !!c && c.dataset.state === 'succeeded'"),
        "the job to succeed",
    )
    .await;
    b.wait_js(
        &format!(
            "const a = document.querySelector('{card} audio'); return !!a && a.readyState >= 1"
        ),
        "the MP3's metadata",
    )
    .await;
    let duration = b
        .js(&format!(
            "return document.querySelector('{card} audio').duration"
        ))
        .await
        .as_f64()
        .expect("audio duration");
    assert!((duration - 2.0).abs() < 0.05, "the MP3 plays {duration} s");
    let caption = b.text(&format!("{card} figcaption")).await;
    assert!(
        caption.contains("-16.0 LUFS") && caption.contains("Download MP3"),
        "{caption}"
    );
    let download = b
        .js(&format!(
            "return document.querySelector('{card} figcaption a').download"
        ))
        .await;
    assert!(
        download.as_str().is_some_and(|d| d.ends_with(".mp3")),
        "{download}"
    );
    let id = b
        .js(&format!(
            "return document.querySelector('{card}').dataset.jobId"
        ))
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
    b.screenshot("create-mp3").await;
    let sent = job.request.expect("request");
    assert_eq!(
        (sent.format, sent.bitrate_kbps, sent.loudness_lufs),
        (pb::AudioFormat::Mp3 as i32, Some(192), Some(-16.0))
    );
    b.close().await;
}
