//! Audio utilities: WAV and FLAC encoding, WAV decoding, content hashes. Loudness is
//! [`crate::loudness`]; the lossy formats are [`crate::encode`].

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("wav: {0}")]
    Wav(#[from] hound::Error),
    #[error("flac: {0}")]
    Flac(String),
    #[error("unsupported wav: {0}")]
    Format(String),
    #[error("{samples} samples are not whole frames of {channels} channels")]
    Channels { samples: usize, channels: u16 },
}

/// 16-bit PCM WAV of `channels` interleaved channels (1: mono, 2: stereo, frame by frame).
pub fn encode_wav(samples: &[f32], channels: u16, sample_rate: u32) -> Result<Vec<u8>, AudioError> {
    check_frames(samples, channels)?;
    let spec = hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    {
        let mut w = hound::WavWriter::new(&mut cursor, spec)?;
        for s in samples {
            w.write_sample(to_i16(*s))?;
        }
        w.finalize()?;
    }
    Ok(cursor.into_inner())
}

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16
}

/// A whole number of frames of at least one channel.
fn check_frames(samples: &[f32], channels: u16) -> Result<(), AudioError> {
    if channels == 0 || !samples.len().is_multiple_of(usize::from(channels)) {
        return Err(AudioError::Channels {
            samples: samples.len(),
            channels,
        });
    }
    Ok(())
}

/// 16-bit FLAC of `channels` interleaved channels (lossless; about half the size of the WAV).
pub fn encode_flac(
    samples: &[f32],
    channels: u16,
    sample_rate: u32,
) -> Result<Vec<u8>, AudioError> {
    check_frames(samples, channels)?;
    use flacenc::component::BitRepr;
    use flacenc::error::Verify;
    let pcm: Vec<i32> = samples.iter().map(|s| i32::from(to_i16(*s))).collect();
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| AudioError::Flac(format!("{e:?}")))?;
    let source = flacenc::source::MemSource::from_samples(
        &pcm,
        usize::from(channels),
        16,
        sample_rate as usize,
    );
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| AudioError::Flac(format!("{e:?}")))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream
        .write(&mut sink)
        .map_err(|e| AudioError::Flac(format!("{e:?}")))?;
    Ok(sink.as_slice().to_vec())
}

/// A decoded WAV: samples in [-1, 1], channels interleaved frame by frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub samples: Vec<f32>,
    pub channels: u16,
    pub sample_rate: u32,
}

impl Pcm {
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }
}

/// Reads a 16-bit integer or 32-bit float PCM WAV (what tutti and most tools write).
pub fn decode_wav(bytes: &[u8]) -> Result<Pcm, AudioError> {
    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes))?;
    let spec = r.spec();
    let samples = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => r
            .samples::<i16>()
            .map(|s| s.map(|s| f32::from(s) / f32::from(i16::MAX)))
            .collect::<Result<Vec<f32>, _>>()?,
        (hound::SampleFormat::Float, 32) => r.samples::<f32>().collect::<Result<Vec<f32>, _>>()?,
        (f, b) => {
            return Err(AudioError::Format(format!(
                "{b}-bit {f:?} samples (16-bit int or 32-bit float only)"
            )))
        }
    };
    Ok(Pcm {
        samples,
        channels: spec.channels,
        sample_rate: spec.sample_rate,
    })
}

/// Lowercase hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trips_length_and_rate() {
        let samples: Vec<f32> = (0..16000).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let bytes = encode_wav(&samples, 1, 16000).unwrap();
        let r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(r.spec().sample_rate, 16000);
        assert_eq!(r.duration(), 16000);
    }

    #[test]
    fn stereo_wav_and_flac_keep_their_frames() {
        // Left a sine, right silent: the channels must come back apart, frame by frame.
        let frames: Vec<f32> = (0..4410)
            .flat_map(|i| [(i as f32 * 0.05).sin() * 0.5, 0.0])
            .collect();
        let bytes = encode_wav(&frames, 2, 44100).unwrap();
        let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!((r.spec().channels, r.spec().sample_rate), (2, 44100));
        assert_eq!(r.duration(), 4410);
        let pcm: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(pcm.len(), 8820);
        assert!(pcm.iter().skip(1).step_by(2).all(|s| *s == 0));
        assert!(pcm.iter().step_by(2).any(|s| *s != 0));
        let flac = encode_flac(&frames, 2, 44100).unwrap();
        assert_eq!(&flac[..4], b"fLaC");
        // STREAMINFO: 3 bits of (channels - 1) at byte 8 + 12 of the stream.
        assert_eq!(((flac[20] >> 1) & 0x07) + 1, 2);
        assert!(encode_wav(&frames[..3], 2, 44100).is_err());
        let pcm = decode_wav(&encode_wav(&frames, 2, 44100).unwrap()).unwrap();
        assert_eq!(
            (pcm.channels, pcm.sample_rate, pcm.frames()),
            (2, 44100, 4410)
        );
        assert!((pcm.samples[2] - frames[2]).abs() < 1e-4);
        assert!(decode_wav(b"RIFF not a wav").is_err());
    }

    #[test]
    fn flac_has_a_stream_header() {
        let samples: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.01).sin() * 0.3).collect();
        let bytes = encode_flac(&samples, 1, 16000).unwrap();
        assert_eq!(&bytes[..4], b"fLaC");
        assert!(bytes.len() < encode_wav(&samples, 1, 16000).unwrap().len());
    }
}
