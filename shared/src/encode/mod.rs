//! Delivery formats: WAV and FLAC (lossless, [`crate::audio`]), MP3 (LAME through
//! `mp3lame-encoder`) and Ogg Opus (libopus through `opus`, Ogg pages through `ogg`), the rules a
//! request's bitrate follows, and resampling (`rubato`) where a format wants another rate than
//! the pack's (Opus is 48 kHz only; MP3 has nine rates).
//!
//! The waveform given here has been through the gain stage ([`crate::loudness`]): the encoders
//! change no level.

mod mp3;
mod ogg_opus;
mod resample;

use std::fmt;

pub use resample::resample;

use crate::audio::{self, AudioError};
use crate::job::AudioFormat;

/// The rate of every Opus stream (decoders output 48 kHz whatever the input was).
pub const OPUS_RATE: u32 = 48_000;
/// Opus bitrates, kbps (RFC 6716's 6 to 510 kbit/s).
pub const OPUS_BITRATE_KBPS: (u32, u32) = (6, 510);
/// The MPEG-1 Layer III sample rates: every MP3 tutti writes is at one of them (a pack at a
/// lower rate is resampled up: MPEG-2's low rates would cap the bitrate at 160 kbps and make
/// LAME low-pass under the pack's own bandwidth, which costs loudness and treble).
pub const MP3_RATES: [u32; 3] = [32_000, 44_100, 48_000];
/// MP3 constant bitrates, kbps (MPEG-1 Layer III's, less 56, which LAME's binding lacks).
pub const MP3_KBPS: &[u32] = &[32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];

/// Encoded audio: the file's bytes and the sample rate it plays at.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub sample_rate: u32,
}

/// The bitrates a format takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitrateRule {
    /// Lossless: no bitrate.
    None,
    /// One of these, kbps.
    OneOf(&'static [u32]),
    /// Any whole kbps in this range, inclusive.
    Range(u32, u32),
}

impl BitrateRule {
    pub fn allows(self, kbps: u32) -> bool {
        match self {
            BitrateRule::None => false,
            BitrateRule::OneOf(list) => list.contains(&kbps),
            BitrateRule::Range(lo, hi) => (lo..=hi).contains(&kbps),
        }
    }
}

impl fmt::Display for BitrateRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitrateRule::None => f.write_str("no bitrate (lossless)"),
            BitrateRule::OneOf(list) => {
                let l: Vec<String> = list.iter().map(u32::to_string).collect();
                write!(f, "one of {} kbps", l.join(", "))
            }
            BitrateRule::Range(lo, hi) => write!(f, "between {lo} and {hi} kbps"),
        }
    }
}

/// The sample rate a `format` file of audio at `rate` is at: the same, except Opus (48 kHz)
/// and MP3 at a rate other than 32, 44.1 or 48 kHz (the next of them up, at most 48 kHz).
pub fn file_rate(format: AudioFormat, rate: u32) -> u32 {
    match format {
        AudioFormat::Wav | AudioFormat::Flac => rate,
        AudioFormat::Opus => OPUS_RATE,
        AudioFormat::Mp3 => MP3_RATES
            .iter()
            .copied()
            .find(|r| *r >= rate)
            .unwrap_or(48_000),
    }
}

/// The bitrates `format` takes.
pub fn bitrate_rule(format: AudioFormat) -> BitrateRule {
    match format {
        AudioFormat::Wav | AudioFormat::Flac => BitrateRule::None,
        AudioFormat::Opus => BitrateRule::Range(OPUS_BITRATE_KBPS.0, OPUS_BITRATE_KBPS.1),
        AudioFormat::Mp3 => BitrateRule::OneOf(MP3_KBPS),
    }
}

/// The bitrate a lossy format gets when the request names none: MP3 128 kbps mono, 192 kbps
/// stereo; Opus 64 kbps a channel.
pub fn default_bitrate_kbps(format: AudioFormat, channels: u16) -> Option<u32> {
    let ch = u32::from(channels.max(1));
    match format {
        AudioFormat::Wav | AudioFormat::Flac => None,
        AudioFormat::Opus => Some((64 * ch).clamp(OPUS_BITRATE_KBPS.0, OPUS_BITRATE_KBPS.1)),
        AudioFormat::Mp3 => Some(if ch == 1 { 128 } else { 192 }),
    }
}

/// A request's bitrate for `format` and the pack's `channels`: the default when it names none,
/// the rule it broke otherwise (for an INVALID_ARGUMENT on `bitrate_kbps`).
pub fn check_bitrate(
    format: AudioFormat,
    channels: u16,
    requested: Option<u32>,
) -> Result<Option<u32>, String> {
    let rule = bitrate_rule(format);
    match (requested, rule) {
        (None, _) => Ok(default_bitrate_kbps(format, channels)),
        (Some(_), BitrateRule::None) => Err(format!(
            "applies to mp3 and opus only; {format} is lossless (leave it unset)"
        )),
        (Some(k), rule) if rule.allows(k) => Ok(Some(k)),
        (Some(k), rule) => Err(format!("must be {rule} for {format} (got {k})")),
    }
}

/// Encodes `samples` (`channels` interleaved at `rate`) as `format`; `bitrate_kbps` for the
/// lossy formats (their default when `None`).
pub fn encode(
    format: AudioFormat,
    samples: &[f32],
    channels: u16,
    rate: u32,
    bitrate_kbps: Option<u32>,
) -> Result<Encoded, AudioError> {
    let bitrate = check_bitrate(format, channels, bitrate_kbps)
        .map_err(|e| AudioError::Format(format!("bitrate: {e}")))?;
    let lossy = |bitrate: Option<u32>| bitrate.expect("lossy formats have a default");
    let out_rate = file_rate(format, rate);
    let resampled;
    let pcm = if out_rate == rate {
        samples
    } else {
        resampled = resample(samples, channels, rate, out_rate)?;
        &resampled[..]
    };
    let bytes = match format {
        AudioFormat::Wav => audio::encode_wav(pcm, channels, out_rate)?,
        AudioFormat::Flac => audio::encode_flac(pcm, channels, out_rate)?,
        AudioFormat::Mp3 => mp3::encode(pcm, channels, out_rate, lossy(bitrate))?,
        AudioFormat::Opus => ogg_opus::encode(pcm, channels, rate, lossy(bitrate))?,
    };
    Ok(Encoded {
        bytes,
        sample_rate: out_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrate_rules_per_format_and_rate() {
        assert_eq!(check_bitrate(AudioFormat::Wav, 1, None), Ok(None));
        let e = check_bitrate(AudioFormat::Flac, 1, Some(128)).unwrap_err();
        assert!(e.contains("mp3 and opus only"), "{e}");
        assert_eq!(check_bitrate(AudioFormat::Mp3, 2, None), Ok(Some(192)));
        assert_eq!(check_bitrate(AudioFormat::Mp3, 1, None), Ok(Some(128)));
        assert_eq!(check_bitrate(AudioFormat::Mp3, 2, Some(320)), Ok(Some(320)));
        assert_eq!(check_bitrate(AudioFormat::Mp3, 1, Some(32)), Ok(Some(32)));
        let e = check_bitrate(AudioFormat::Mp3, 2, Some(150)).unwrap_err();
        assert_eq!(
            e,
            "must be one of 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320 kbps \
             for mp3 (got 150)"
        );
        assert_eq!(check_bitrate(AudioFormat::Opus, 2, None), Ok(Some(128)));
        assert_eq!(check_bitrate(AudioFormat::Opus, 1, Some(6)), Ok(Some(6)));
        let e = check_bitrate(AudioFormat::Opus, 1, Some(511)).unwrap_err();
        assert_eq!(e, "must be between 6 and 510 kbps for opus (got 511)");
        assert_eq!(file_rate(AudioFormat::Mp3, 16_000), 32_000);
        assert_eq!(file_rate(AudioFormat::Mp3, 44_100), 44_100);
        assert_eq!(file_rate(AudioFormat::Mp3, 96_000), 48_000);
        assert_eq!(file_rate(AudioFormat::Opus, 16_000), 48_000);
    }

    fn tone(rate: u32, channels: u16, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .flat_map(|i| {
                let t = i as f32 / rate as f32;
                let s = 0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin();
                (0..channels).map(move |c| if c == 0 { s } else { s * 0.5 })
            })
            .collect()
    }

    #[test]
    fn every_format_encodes_mono_and_stereo() {
        for (rate, ch) in [(16_000, 1), (44_100, 2)] {
            let pcm = tone(rate, ch, 1.0);
            for f in AudioFormat::ALL {
                let e = encode(*f, &pcm, ch, rate, None).unwrap();
                assert_eq!(e.sample_rate, file_rate(*f, rate), "{f}");
                let magic: &[u8] = match f {
                    AudioFormat::Wav => b"RIFF",
                    AudioFormat::Flac => b"fLaC",
                    AudioFormat::Opus => b"OggS",
                    // A LAME "Info" frame first: an MPEG frame sync.
                    AudioFormat::Mp3 => &[0xff],
                };
                assert!(e.bytes.starts_with(magic), "{f} {rate}");
            }
        }
        assert!(encode(AudioFormat::Mp3, &[0.0; 3], 2, 44_100, None).is_err());
        assert!(encode(AudioFormat::Opus, &tone(16_000, 1, 0.1), 1, 16_000, Some(5)).is_err());
    }
}
