//! Domain types of a generation job, independent of the wire format (protobuf stays at the edge).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::prompt::Controls;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// A variant equals its text (`JobState::Failed == "failed"`).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownVariant;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(UnknownVariant { kind: stringify!($name), value: other.to_string() }),
                }
            }
        }
    };
}

/// A string that names no variant of an enum (e.g. a state read back from the database).
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

string_enum!(
    /// Scheduling class; lower sorts first.
    Priority { Interactive => "interactive", Standard => "standard", Batch => "batch" }
);

// Written out: `string_enum!` generates the variants, so `#[default]` cannot mark one.
#[allow(clippy::derivable_impls)]
impl Default for Priority {
    fn default() -> Self {
        Priority::Standard
    }
}

impl Priority {
    /// The rank stored in Postgres; dispatch orders by it ascending.
    pub fn rank(self) -> i16 {
        match self {
            Priority::Interactive => 0,
            Priority::Standard => 1,
            Priority::Batch => 2,
        }
    }

    /// The class of a stored rank: the one inverse of `rank`.
    pub fn from_rank(rank: i64) -> Option<Priority> {
        Priority::ALL
            .iter()
            .copied()
            .find(|p| i64::from(p.rank()) == rank)
    }
}

string_enum!(
    /// Delivery formats; the text is also the output's file extension.
    AudioFormat {
        Wav => "wav",
        Flac => "flac",
        Mp3 => "mp3",
        /// Ogg Opus (RFC 7845), 48 kHz.
        Opus => "opus",
    }
);

/// On the command line these read as their wire names (`--priority batch`, `--format flac`).
macro_rules! value_enum {
    ($($t:ty),+) => {$(
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()))
            }
        }
    )+};
}
value_enum!(Priority, AudioFormat);

impl AudioFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            AudioFormat::Wav => "audio/wav",
            AudioFormat::Flac => "audio/flac",
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Opus => "audio/ogg; codecs=opus",
        }
    }

    /// Lossy formats take a bitrate.
    pub fn is_lossy(self) -> bool {
        matches!(self, AudioFormat::Mp3 | AudioFormat::Opus)
    }
}

/// How a job's audio is delivered besides its format: the bitrate of a lossy format and the
/// integrated loudness its outputs are brought to (README "Delivery formats and loudness").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// kbps, for MP3 and Opus; `None` for WAV and FLAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// EBU R128 integrated loudness target, LUFS.
    pub loudness_lufs: f32,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            bitrate_kbps: None,
            loudness_lufs: crate::loudness::DEFAULT_TARGET_LUFS,
        }
    }
}

string_enum!(
    JobState {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl JobState {
    /// Queued or running: results, retries and cancels still apply.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

string_enum!(Stage { Queued => "queued", Denoise => "denoise", Vocode => "vocode", Done => "done" });

string_enum!(
    /// The samplers: what a request names, a pack's default, what the runtime builds. One
    /// enum from the wire to the model.
    SamplerKind {
        /// Flow-matching Euler (rectified flow); stateless between steps.
        FlowEuler => "flow_euler",
        Ddim => "ddim",
        /// DPM-Solver++ 2M (diffusers' DPMSolverMultistepScheduler, dpmsolver++, order 2).
        DpmSolverPp2m => "dpm_solver_pp2m",
        /// The cosine-schedule DPM-Solver++ 2M that Stable Audio uses, as an ODE.
        CosineDpmSolverPp2m => "cosine_dpm_solver_pp2m",
        /// The same solver as the SDE that diffusers' CosineDPMSolverMultistepScheduler runs
        /// (stochastic: per-step noise from the job's seed).
        CosineDpmSolverPp2mSde => "cosine_dpm_solver_pp2m_sde",
        /// stable-audio-tools' ping-pong sampler for rectified-flow denoisers (SAO Small).
        PingPong => "ping_pong",
    }
);

impl SamplerKind {
    /// Samplers that draw fresh noise at each step (from the job's seed).
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::CosineDpmSolverPp2mSde | SamplerKind::PingPong
        )
    }
}

/// On the command line the samplers read as their names with dashes (`flow-euler`).
impl clap::ValueEnum for SamplerKind {
    fn value_variants<'a>() -> &'a [Self] {
        SamplerKind::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            SamplerKind::FlowEuler => "flow-euler",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmSolverPp2m => "dpm-solver-pp2m",
            SamplerKind::CosineDpmSolverPp2m => "cosine-dpm-solver-pp2m",
            SamplerKind::CosineDpmSolverPp2mSde => "cosine-dpm-solver-pp2m-sde",
            SamplerKind::PingPong => "ping-pong",
        }))
    }
}

string_enum!(TaskKind { Denoise => "denoise", Vocode => "vocode" });

string_enum!(
    /// Where a stage task is: waiting in the backlog (`pending`), sent to a worker
    /// (`dispatched`), or ended.
    TaskState {
        Pending => "pending",
        Dispatched => "dispatched",
        Done => "done",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

/// A model pack by name and (resolved) version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Everything a worker needs to run a job, fixed when the job is accepted: defaults filled in,
/// the seed chosen, the prompt rendered and its numeric controls parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub model: ModelRef,
    pub prompt: String,
    pub negative_prompt: String,
    pub controls: Controls,
    pub duration_s: f32,
    pub seed: u64,
    pub steps: u32,
    pub guidance_scale: f32,
    pub sampler: SamplerKind,
    pub variations: u32,
    pub format: AudioFormat,
    /// Bitrate and loudness target (specs from before the field: the defaults).
    #[serde(default)]
    pub delivery: Delivery,
    /// W3C trace context of the submit (`traceparent`, `tracestate`), so that every task of the
    /// job joins the submit's trace, whichever coordinator dispatches it and whenever.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub trace_context: std::collections::BTreeMap<String, String>,
    /// Audio-to-audio: the clip the job starts from (stored once at submit) and its strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_audio: Option<InitAudio>,
    /// What a song model sings (song models only; none for every other request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub song: Option<Song>,
}

/// What a song model sings: lyrics in a language, and the beats of a bar (ACE-Step reads both in
/// its lyric text and metadata block).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Song {
    /// Lyrics, with section tags such as `[verse]` and `[chorus]`; empty: an instrumental.
    pub lyrics: String,
    /// The vocals' language, an ISO 639-1 code such as `en` (ACE-Step's list also has `yue`
    /// and `unknown`).
    pub language: String,
    /// Beats per bar (2, 3, 4 or 6); none: the model decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_signature: Option<u8>,
    /// Repaint: the span of the job's init audio (the song) to regenerate; the rest is kept
    /// as the model's context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaint: Option<RepaintSpan>,
}

/// A span of a song in seconds: `[start, end)`, `end` none for "to the end".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RepaintSpan {
    pub start_s: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_s: Option<f32>,
}

/// The vocal languages ACE-Step 1.5 was trained on (its `VALID_LANGUAGES`).
pub const SONG_LANGUAGES: &[&str] = &[
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi",
    "hr", "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl",
    "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi",
    "yue", "zh", "unknown",
];

/// Beats per bar a song model's metadata takes.
pub const SONG_TIME_SIGNATURES: &[u8] = &[2, 3, 4, 6];

/// The init clip of an audio-to-audio job: a WAV in the blob store at `key`
/// ([`init_audio_key`]) and how much of it is redrawn, in (0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitAudio {
    pub key: String,
    pub strength: f32,
}

/// Where an init clip is stored: `inputs/<sha256 of the WAV>.wav`, so that a resubmitted clip
/// (a retry, or the same clip in many jobs) is one object.
pub fn init_audio_key(sha256_hex: &str) -> String {
    format!("inputs/{sha256_hex}.wav")
}

/// Where a job's own init clip is stored: `inputs/<tenant>/<clip>.wav`, a fresh id per submit,
/// so that deleting the job removes it without touching another job's input.
pub fn init_audio_job_key(tenant: &str, clip: uuid::Uuid) -> String {
    format!("inputs/{tenant}/{clip}.wav")
}

/// Output key layout: `outputs/<tenant>/<job>/<n>.<ext>`, deterministic so that a redone upload
/// overwrites the same object.
pub fn output_key(tenant: &str, job: uuid::Uuid, index: u32, format: AudioFormat) -> String {
    format!("outputs/{tenant}/{job}/{index}.{format}")
}

/// Checkpoint written at the end of denoise chunk `chunk`: `checkpoints/<job>/<chunk>`.
pub fn checkpoint_key(job: uuid::Uuid, chunk: u32) -> String {
    format!("checkpoints/{job}/{chunk}")
}

/// Splits `steps` denoising steps into chunks of at most `chunk_steps`: `[(from, to))`.
pub fn chunk_ranges(steps: u32, chunk_steps: u32) -> Vec<(u32, u32)> {
    let k = chunk_steps.max(1);
    (0..steps.div_ceil(k))
        .map(|c| (c * k, ((c + 1) * k).min(steps)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_step_once() {
        assert_eq!(chunk_ranges(10, 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(chunk_ranges(8, 8), vec![(0, 8)]);
        assert_eq!(chunk_ranges(3, 0), vec![(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn enums_round_trip_through_strings() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().ok(), Some(*s));
        }
        assert!("nope".parse::<Stage>().is_err());
    }

    #[test]
    fn formats_name_their_files_and_specs_without_delivery_read_as_the_defaults() {
        let job = uuid::Uuid::nil();
        assert_eq!(
            output_key("t", job, 1, AudioFormat::Opus),
            format!("outputs/t/{job}/1.opus")
        );
        assert_eq!(AudioFormat::Mp3.content_type(), "audio/mpeg");
        assert_eq!("mp3".parse::<AudioFormat>().ok(), Some(AudioFormat::Mp3));
        let d: Delivery = serde_json::from_str(r#"{"loudness_lufs": -16.0}"#).unwrap();
        assert_eq!((d.bitrate_kbps, d.loudness_lufs), (None, -16.0));
        assert_eq!(Delivery::default().loudness_lufs, -14.0);
    }
}
