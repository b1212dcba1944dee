//! The delivery rules of a SubmitGenerationRequest: format, bitrate and loudness target
//! (README "Delivery formats and loudness"). Each rule names its field.

use tutti_proto::v1 as pb;
use tutti_shared::encode;
use tutti_shared::job::{AudioFormat, Delivery};
use tutti_shared::loudness::{self, TARGET_RANGE_LUFS};
use tutti_shared::models::ModelInfo;

use crate::error::{Error, Result};

/// The request's format and delivery with defaults filled in, or the rule it broke.
pub fn check(
    req: &pb::SubmitGenerationRequest,
    model: &ModelInfo,
) -> Result<(AudioFormat, Delivery)> {
    let format: AudioFormat = match pb::AudioFormat::try_from(req.format) {
        Ok(f) => f.into(),
        Err(_) => return Err(Error::invalid("format", "must be wav, flac, mp3 or opus")),
    };
    let bitrate_kbps = encode::check_bitrate(format, model.channels, req.bitrate_kbps)
        .map_err(|rule| Error::invalid("bitrate_kbps", rule))?;
    let loudness_lufs = req.loudness_lufs.unwrap_or(loudness::DEFAULT_TARGET_LUFS);
    if !loudness::target_in_range(loudness_lufs) {
        return Err(Error::invalid(
            "loudness_lufs",
            format!(
                "must be between {} and {} LUFS (got {loudness_lufs})",
                TARGET_RANGE_LUFS.0, TARGET_RANGE_LUFS.1
            ),
        ));
    }
    Ok((
        format,
        Delivery {
            bitrate_kbps,
            loudness_lufs,
        },
    ))
}

/// Fills the accepted request (as GetJob reports it) with what [`check`] decided.
pub fn accept(accepted: &mut pb::SubmitGenerationRequest, format: AudioFormat, d: &Delivery) {
    accepted.format = pb::AudioFormat::from(format) as i32;
    accepted.bitrate_kbps = d.bitrate_kbps;
    accepted.loudness_lufs = Some(d.loudness_lufs);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(channels: u16) -> ModelInfo {
        let toml = format!(
            "family = \"mel\"\n[model]\nname = \"m\"\nversion = \"1\"\nsample_rate = 16000\n\
             channels = {channels}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.toml"), toml).unwrap();
        ModelInfo::read(dir.path()).unwrap()
    }

    fn field_and_rule(e: Error) -> (String, String) {
        match e {
            Error::InvalidArgument { field, rule } => (field, rule),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn defaults_per_format_and_the_rules_name_their_fields() {
        let mono = model(1);
        let stereo = model(2);
        let req = |format: pb::AudioFormat, kbps: Option<u32>, lufs: Option<f32>| {
            pb::SubmitGenerationRequest {
                format: format as i32,
                bitrate_kbps: kbps,
                loudness_lufs: lufs,
                ..Default::default()
            }
        };
        let (f, d) = check(&req(pb::AudioFormat::Unspecified, None, None), &mono).unwrap();
        assert_eq!((f, d), (AudioFormat::Wav, Delivery::default()));
        let (f, d) = check(&req(pb::AudioFormat::Mp3, None, Some(-16.0)), &stereo).unwrap();
        assert_eq!(
            (f, d.bitrate_kbps, d.loudness_lufs),
            (AudioFormat::Mp3, Some(192), -16.0)
        );
        let (_, d) = check(&req(pb::AudioFormat::Opus, None, None), &mono).unwrap();
        assert_eq!(d.bitrate_kbps, Some(64));
        let (_, d) = check(&req(pb::AudioFormat::Opus, Some(24), None), &mono).unwrap();
        assert_eq!(d.bitrate_kbps, Some(24));

        let (field, rule) =
            field_and_rule(check(&req(pb::AudioFormat::Opus, Some(600), None), &mono).unwrap_err());
        assert_eq!(field, "bitrate_kbps");
        assert_eq!(rule, "must be between 6 and 510 kbps for opus (got 600)");
        let (field, rule) =
            field_and_rule(check(&req(pb::AudioFormat::Mp3, Some(100), None), &mono).unwrap_err());
        assert_eq!(field, "bitrate_kbps");
        assert!(rule.starts_with("must be one of 32, 40,"), "{rule}");
        let (field, rule) =
            field_and_rule(check(&req(pb::AudioFormat::Flac, Some(128), None), &mono).unwrap_err());
        assert_eq!(field, "bitrate_kbps");
        assert!(rule.contains("lossless"), "{rule}");
        for bad in [-41.0, -7.5, f32::NAN, f32::INFINITY] {
            let (field, rule) = field_and_rule(
                check(&req(pb::AudioFormat::Wav, None, Some(bad)), &mono).unwrap_err(),
            );
            assert_eq!(field, "loudness_lufs");
            assert!(
                rule.starts_with("must be between -40 and -8 LUFS"),
                "{rule}"
            );
        }
        let (field, _) = field_and_rule(
            check(
                &pb::SubmitGenerationRequest {
                    format: 99,
                    ..Default::default()
                },
                &mono,
            )
            .unwrap_err(),
        );
        assert_eq!(field, "format");

        let mut accepted = req(pb::AudioFormat::Unspecified, None, None);
        let (f, d) = check(&req(pb::AudioFormat::Mp3, None, None), &mono).unwrap();
        accept(&mut accepted, f, &d);
        assert_eq!(
            (
                accepted.format,
                accepted.bitrate_kbps,
                accepted.loudness_lufs
            ),
            (pb::AudioFormat::Mp3 as i32, Some(128), Some(-14.0))
        );
    }
}
