//! Ogg Opus (RFC 7845): libopus through `opus` (which builds libopus 1.5 from source) in 20 ms
//! frames, paged by `ogg`. The encoder's lookahead is the stream's pre-skip and the last page's
//! granule position trims the padding, so decoders play exactly the clip's samples.

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::audio::AudioError;

use super::OPUS_RATE;

/// 20 ms at 48 kHz: the frame size music encodes best at.
const FRAME: usize = 960;

fn err(what: &str, e: impl std::fmt::Display) -> AudioError {
    AudioError::Format(format!("opus {what}: {e}"))
}

/// `samples` (1 or 2 channels interleaved, at 48 kHz) as Ogg Opus at `kbps`; `input_rate` is
/// the rate the audio was made at (recorded in the header, as RFC 7845 asks).
pub(super) fn encode(
    samples: &[f32],
    channels: u16,
    input_rate: u32,
    kbps: u32,
) -> Result<Vec<u8>, AudioError> {
    let ch = usize::from(channels);
    if !(1..=2).contains(&ch) || !samples.len().is_multiple_of(ch) {
        return Err(AudioError::Channels {
            samples: samples.len(),
            channels,
        });
    }
    let mut enc = opus::Encoder::new(
        OPUS_RATE,
        if ch == 1 {
            opus::Channels::Mono
        } else {
            opus::Channels::Stereo
        },
        opus::Application::Audio,
    )
    .map_err(|e| err("encoder", e))?;
    enc.set_bitrate(opus::Bitrate::Bits(kbps as i32 * 1000))
        .map_err(|e| err("bitrate", e))?;
    let pre_skip = enc.get_lookahead().map_err(|e| err("lookahead", e))? as usize;
    let frames = samples.len() / ch;

    let serial = 0x7475_7474; // "tutt"
    let mut w = PacketWriter::new(Vec::new());
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(channels as u8);
    head.extend_from_slice(&(pre_skip as u16).to_le_bytes());
    head.extend_from_slice(&input_rate.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family 0: mono or stereo
    w.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)
        .map_err(|e| err("ogg", e))?;
    let vendor = format!("tutti {}", opus::version());
    let mut tags = Vec::new();
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor.as_bytes());
    tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
    w.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)
        .map_err(|e| err("ogg", e))?;

    // The encoder delays its output by `pre_skip` samples: feed that much silence past the end
    // so the clip's last samples come out, in whole frames.
    let total = (frames + pre_skip).div_ceil(FRAME).max(1);
    let end_granule = (pre_skip + frames) as u64;
    let mut pcm = vec![0f32; FRAME * ch];
    let mut packet = vec![0u8; 4000];
    for k in 0..total {
        let from = (k * FRAME).min(frames);
        let to = ((k + 1) * FRAME).min(frames);
        let have = (to - from) * ch;
        pcm[..have].copy_from_slice(&samples[from * ch..to * ch]);
        pcm[have..].fill(0.0);
        let n = enc
            .encode_float(&pcm, &mut packet)
            .map_err(|e| err("encode", e))?;
        let last = k + 1 == total;
        // Samples decoded once this packet is (pre-skip included); the last page's position
        // is where the clip ends, which trims the padding.
        let granule = if last {
            end_granule
        } else {
            (((k + 1) * FRAME) as u64).min(end_granule)
        };
        let end = if last {
            PacketWriteEndInfo::EndStream
        } else if (k + 1) % 50 == 0 {
            // A page a second: seeking needs no more.
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        w.write_packet(packet[..n].to_vec(), serial, end, granule)
            .map_err(|e| err("ogg", e))?;
    }
    Ok(w.into_inner())
}
