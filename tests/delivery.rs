//! Delivery formats and loudness end to end, on both farms: an MP3 and an Ogg Opus output are
//! decoded by an independent decoder (Debian's ffmpeg/ffprobe, which scripts/setup installs)
//! and measured: codec, channels, rate, duration and EBU R128 integrated loudness, within
//! 0.5 LU of the requested target.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{request, state, Backend, Farm, FarmOptions};
use tutti_proto::v1 as pb;

both_backends!(mp3_and_opus_outputs_decode_to_the_clip_at_the_loudness_target);

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
    let mut client = farm.client().await;
    // (format, extension, bitrate asked, loudness asked, file rate, codec, content type)
    let cases = [
        (
            pb::AudioFormat::Mp3,
            "mp3",
            None,
            None,
            32_000,
            "mp3",
            "audio/mpeg",
        ),
        (
            pb::AudioFormat::Opus,
            "opus",
            Some(48),
            Some(-18.0),
            48_000,
            "opus",
            "audio/ogg; codecs=opus",
        ),
    ];
    let mut jobs = Vec::new();
    for (format, _, kbps, lufs, ..) in &cases {
        let mut req = request("warm analog synth pads with a slow kick, 90 BPM");
        req.duration_seconds = Some(3.0);
        req.steps = Some(4);
        req.format = *format as i32;
        req.bitrate_kbps = *kbps;
        req.loudness_lufs = *lufs;
        let job = client
            .submit_generation(req)
            .await
            .expect("submit")
            .into_inner();
        jobs.push(job.id);
    }
    let dir = tempfile::tempdir().expect("a temp folder");
    for ((format, ext, kbps, lufs, rate, codec, content_type), id) in cases.iter().zip(&jobs) {
        let job = farm.wait_job(id, Duration::from_secs(120)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        // The accepted request says what was applied: the format's default bitrate when none
        // was asked (MP3 mono: 128 kbps) and the default target (-14 LUFS).
        let accepted = job.request.as_ref().expect("the accepted request");
        assert_eq!(accepted.bitrate_kbps, Some(kbps.unwrap_or(128)));
        let target = lufs.unwrap_or(-14.0);
        assert_eq!(accepted.loudness_lufs, Some(target));

        let out = &job.outputs[0];
        assert_eq!(out.format, *format as i32);
        assert_eq!(
            out.uri,
            farm.uri(&format!("outputs/default/{}/0.{ext}", job.id))
        );
        assert_eq!((out.sample_rate, out.channels), (*rate, 1));
        assert!((out.duration_seconds - 3.0).abs() < 1e-3, "{out:?}");
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
                Some(*content_type),
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
            (*codec, 1, *rate),
            "{p:?}"
        );
        assert!((p.decoded_s - 3.0).abs() < 0.005, "{ext}: {p:?}");
        assert!(
            (p.lufs - f64::from(target)).abs() < 0.5,
            "{ext}: {} LUFS decoded, target {target}",
            p.lufs
        );
    }
}
