//! MP3 through LAME (`mp3lame-encoder`, which builds LAME 3.100 from source): constant bitrate,
//! joint stereo, with the LAME "Info" tag in the first frame so that players and decoders know
//! the encoder delay and padding and play exactly the clip's length (gapless).

use mp3lame_encoder::{Bitrate, Builder, FlushGap, InterleavedPcm, Mode, MonoPcm, Quality};

use crate::audio::AudioError;

fn err(what: &str, e: impl std::fmt::Display) -> AudioError {
    AudioError::Format(format!("mp3 {what}: {e}"))
}

fn bitrate(kbps: u32) -> Result<Bitrate, AudioError> {
    Ok(match kbps {
        8 => Bitrate::Kbps8,
        16 => Bitrate::Kbps16,
        24 => Bitrate::Kbps24,
        32 => Bitrate::Kbps32,
        40 => Bitrate::Kbps40,
        48 => Bitrate::Kbps48,
        64 => Bitrate::Kbps64,
        80 => Bitrate::Kbps80,
        96 => Bitrate::Kbps96,
        112 => Bitrate::Kbps112,
        128 => Bitrate::Kbps128,
        160 => Bitrate::Kbps160,
        192 => Bitrate::Kbps192,
        224 => Bitrate::Kbps224,
        256 => Bitrate::Kbps256,
        320 => Bitrate::Kbps320,
        k => return Err(err("bitrate", format!("{k} kbps is not an MP3 bitrate"))),
    })
}

/// LAME's CBR mode borrows its ABR presets, whose input scale guards against clipping at low
/// bitrates (`abr_switch_map` in LAME 3.100's presets.c): 0.95 up to 160 kbps, 0.97 at 192,
/// 0.98 at 224. The gain stage already left a true-peak margin, so tutti undoes it: otherwise an
/// MP3 would play up to 0.45 dB under its loudness target.
fn lame_input_scale(kbps: u32) -> f32 {
    match kbps {
        ..=160 => 0.95,
        161..=192 => 0.97,
        193..=224 => 0.98,
        _ => 1.0,
    }
}

/// `samples` (1 or 2 channels interleaved, at an MP3 rate) as a CBR MP3 of `kbps`.
pub(super) fn encode(
    samples: &[f32],
    channels: u16,
    rate: u32,
    kbps: u32,
) -> Result<Vec<u8>, AudioError> {
    if !(1..=2).contains(&channels) || !samples.len().is_multiple_of(usize::from(channels)) {
        return Err(AudioError::Channels {
            samples: samples.len(),
            channels,
        });
    }
    let mut b = Builder::new().ok_or_else(|| err("encoder", "out of memory"))?;
    b.set_num_channels(channels as u8)
        .map_err(|e| err("channels", e))?;
    b.set_sample_rate(rate).map_err(|e| err("sample rate", e))?;
    // No resampling inside LAME: the file is at the rate it was given.
    b.set_output_sample_rate(std::num::NonZeroU32::new(rate))
        .map_err(|e| err("sample rate", e))?;
    b.set_brate(bitrate(kbps)?).map_err(|e| err("bitrate", e))?;
    b.set_mode(if channels == 1 {
        Mode::Mono
    } else {
        Mode::JointStereo
    })
    .map_err(|e| err("mode", e))?;
    // LAME's recommended "-q 2": near-best psychoacoustics at a fraction of "-q 0"'s time.
    b.set_quality(Quality::NearBest)
        .map_err(|e| err("quality", e))?;
    b.set_to_write_vbr_tag(true)
        .map_err(|e| err("lame tag", e))?;
    let mut enc = b.build().map_err(|e| err("encoder", e))?;
    let frames = samples.len() / usize::from(channels);
    let undo = 1.0 / lame_input_scale(kbps);
    let samples: Vec<f32> = samples.iter().map(|s| s * undo).collect();
    let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(frames) + 7200);
    // LAME takes at most an int's worth of samples a call; feed it a second or so at a time.
    let chunk = 65_536;
    for part in samples.chunks(chunk * usize::from(channels)) {
        out.reserve(mp3lame_encoder::max_required_buffer_size(chunk));
        if channels == 1 {
            enc.encode_to_vec(MonoPcm(part), &mut out)
        } else {
            enc.encode_to_vec(InterleavedPcm(part), &mut out)
        }
        .map_err(|e| err("encode", e))?;
    }
    out.reserve(7200);
    enc.flush_to_vec::<FlushGap>(&mut out)
        .map_err(|e| err("flush", e))?;
    // The first frame LAME wrote is a blank placeholder for the tag: overwrite it.
    let mut tag = Vec::with_capacity(enc.lame_tag_size());
    if enc.lame_tag_encode_to_vec(&mut tag).is_some() && tag.len() <= out.len() {
        out[..tag.len()].copy_from_slice(&tag);
    }
    Ok(out)
}
