//! The request fields a song model sings from (`lyrics`, `vocal_language`, `time_signature`):
//! refused, naming the field and the model, for a model that does not take them; checked
//! against the model's own rules otherwise; a song model's job always carries a [`Song`] (an
//! instrumental has empty lyrics).

use tutti_proto::v1 as pb;
use tutti_shared::job::{RepaintSpan, Song, SONG_LANGUAGES, SONG_TIME_SIGNATURES};
use tutti_shared::models::{ModelInfo, ModelInput};

use crate::error::{Error, Result};
use crate::text::{self, TextRule};

/// Lyrics of a 10-minute song fit in well under this; ACE-Step reads at most 2048 tokens of them.
pub const MAX_LYRICS_CHARS: usize = 4096;
const LYRICS: TextRule = TextRule::lines(MAX_LYRICS_CHARS);
/// The language a song request gets when it names none (ACE-Step's default).
const DEFAULT_LANGUAGE: &str = "en";

/// The song of a request for `model`, or `None` for a model that does not sing.
pub fn check(model: &ModelInfo, req: &pb::SubmitGenerationRequest) -> Result<Option<Song>> {
    let sings = model.takes(ModelInput::Lyrics);
    let not_taken = |field: &str| {
        Error::invalid(
            field,
            format!(
                "model {} ({} family) does not sing; lyrics, vocal_language and time_signature \
                 need a song model",
                model.name,
                model.family.as_str()
            ),
        )
    };
    if !sings {
        if !req.lyrics.is_empty() {
            return Err(not_taken("lyrics"));
        }
        if !req.vocal_language.is_empty() {
            return Err(not_taken("vocal_language"));
        }
        if req.time_signature.is_some() {
            return Err(not_taken("time_signature"));
        }
        if req.repaint_start_seconds.is_some() {
            return Err(not_taken("repaint_start_seconds"));
        }
        if req.repaint_end_seconds.is_some() {
            return Err(not_taken("repaint_end_seconds"));
        }
        return Ok(None);
    }
    text::check("lyrics", &req.lyrics, LYRICS)?;
    let language = match req.vocal_language.trim() {
        "" => DEFAULT_LANGUAGE.to_string(),
        l if SONG_LANGUAGES.contains(&l) => l.to_string(),
        l => {
            return Err(Error::invalid(
                "vocal_language",
                format!(
                    "must be one of model {}'s languages ({}), got {}",
                    model.name,
                    SONG_LANGUAGES.join(", "),
                    text::quote(l)
                ),
            ))
        }
    };
    let time_signature = match req.time_signature {
        None => None,
        Some(t) => match u8::try_from(t)
            .ok()
            .filter(|t| SONG_TIME_SIGNATURES.contains(t))
        {
            Some(t) => Some(t),
            None => {
                return Err(Error::invalid(
                    "time_signature",
                    format!("must be 2, 3, 4 or 6 beats per bar, got {t}"),
                ))
            }
        },
    };
    Ok(Some(Song {
        lyrics: req.lyrics.trim_end().to_string(),
        language,
        time_signature,
        repaint: repaint(model, req)?,
    }))
}

/// The span to repaint: a start of at least 0, an end past it (or none: to the end), and the
/// song in `init_audio`.
fn repaint(model: &ModelInfo, req: &pb::SubmitGenerationRequest) -> Result<Option<RepaintSpan>> {
    let Some(start_s) = req.repaint_start_seconds else {
        if req.repaint_end_seconds.is_some() {
            return Err(Error::invalid(
                "repaint_end_seconds",
                "only with repaint_start_seconds",
            ));
        }
        return Ok(None);
    };
    if !model.takes(ModelInput::Repaint) {
        return Err(Error::invalid(
            "repaint_start_seconds",
            format!("model {} does not repaint", model.name),
        ));
    }
    if req.init_audio.is_empty() {
        return Err(Error::invalid(
            "repaint_start_seconds",
            "needs init_audio: the song to repaint",
        ));
    }
    if !(start_s.is_finite() && start_s >= 0.0) {
        return Err(Error::invalid(
            "repaint_start_seconds",
            format!("must be 0 or more seconds, got {start_s}"),
        ));
    }
    if let Some(end) = req.repaint_end_seconds {
        if !(end.is_finite() && end > start_s) {
            return Err(Error::invalid(
                "repaint_end_seconds",
                format!("must be after repaint_start_seconds ({start_s}), got {end}"),
            ));
        }
    }
    Ok(Some(RepaintSpan {
        start_s,
        end_s: req.repaint_end_seconds,
    }))
}
