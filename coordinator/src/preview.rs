//! `RenderPrompt`: the text the model reads for a prompt as people write it, a structured
//! prompt, or both (the builder then adds after the written prompt only what it lacks), the
//! controls parsed from that text ("75 BPM" -> tempo) as a submission would get them, and the
//! words the form suggests. Stores nothing.

use tutti_proto::v1 as pb;
use tutti_shared::models::{ModelInfo, ModelInput};
use tutti_shared::prompt::{self, key_name, vocab, Controls, Mode, STRUCTURE_WORDS};
use tutti_shared::song::{SongText, Task};

use crate::error::Result;
use crate::validate;

/// The preview of a RenderPrompt request, under the rules of a submission: the written prompt
/// and the completed text are `prompt`'s (the page submits the text as the prompt), the
/// structured fields `structured.*`'s.
pub fn render(req: &pb::RenderPromptRequest) -> Result<pb::RenderPromptResponse> {
    render_for(req, None)
}

/// As [`render`], and for a song `model` the texts it reads.
pub fn render_for(
    req: &pb::RenderPromptRequest,
    model: Option<&ModelInfo>,
) -> Result<pb::RenderPromptResponse> {
    let structured = req.structured.clone().unwrap_or_default();
    let (prompt_text, controls, added) = if req.prompt.trim().is_empty() {
        let (text, controls) = validate::render_structured(&structured)?;
        (text, controls, Vec::new())
    } else {
        validate::check_text("prompt", &req.prompt)?;
        let fields = validate::structured(&structured)?;
        let (text, added) = prompt::complete(&req.prompt, &fields);
        validate::check_text("prompt", &text)?;
        // What the validator gives a plain prompt: the controls parsed from its text.
        (text.clone(), prompt::parse_controls(&text, 0.0), added)
    };
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (model_text, lyric_text) = match model.filter(|m| m.takes(ModelInput::Lyrics)) {
        Some(m) => song_texts(req, m, &prompt_text, controls)?,
        None => Default::default(),
    };
    Ok(pb::RenderPromptResponse {
        model_text,
        lyric_text,
        prompt_text,
        tempo_bpm: controls.bpm,
        key: controls
            .key
            .map(|k| key_name(k, controls.mode))
            .unwrap_or_default(),
        mode: match controls.mode {
            Some(Mode::Major) => "major",
            Some(Mode::Minor) => "minor",
            None => "",
        }
        .to_string(),
        added,
        genres: words(&vocab::genres()),
        subgenres: words(&vocab::subgenres()),
        moods: words(&vocab::moods()),
        instruments: words(vocab::INSTRUMENTS),
        structure_words: words(STRUCTURE_WORDS),
    })
}

/// A song model's caption and lyric texts for the preview, its song fields checked as a
/// submission checks them.
fn song_texts(
    req: &pb::RenderPromptRequest,
    model: &ModelInfo,
    prompt_text: &str,
    controls: Controls,
) -> Result<(String, String)> {
    let as_submit = pb::SubmitGenerationRequest {
        lyrics: req.lyrics.clone(),
        vocal_language: req.vocal_language.clone(),
        time_signature: req.time_signature,
        ..Default::default()
    };
    let song = crate::song::check(model, &as_submit)?.unwrap_or_default();
    let controls = Controls {
        duration_s: req.duration_seconds.unwrap_or(model.defaults.duration_s),
        ..controls
    };
    let text = SongText {
        task: Task::Text2Music,
        caption: prompt_text,
        lyrics: &song.lyrics,
        language: &song.language,
        controls: &controls,
        time_signature: song.time_signature,
    };
    Ok((text.caption_text(), text.lyric_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str, s: pb::StructuredPrompt) -> pb::RenderPromptRequest {
        pb::RenderPromptRequest {
            structured: Some(s),
            prompt: prompt.into(),
            ..Default::default()
        }
    }

    #[test]
    fn either_way_of_writing_gives_the_text_and_its_controls() {
        // As people write it: the controls come from the text.
        let r = render(&req(
            "melancholic lo-fi piano, 75 BPM, late night study session",
            Default::default(),
        ))
        .expect("render");
        assert_eq!(
            r.prompt_text,
            "melancholic lo-fi piano, 75 BPM, late night study session"
        );
        assert_eq!(
            (r.tempo_bpm, r.key.as_str(), r.mode.as_str()),
            (Some(75.0), "", "")
        );
        assert!(r.added.is_empty());
        // With the builder: what the text lacks is added after it.
        let r = render(&req(
            "melancholic lo-fi piano, 75 BPM",
            pb::StructuredPrompt {
                genre: "hip hop".into(),
                tempo_bpm: Some(90.0),
                key: "A minor".into(),
                instruments: vec!["piano".into()],
                ..Default::default()
            },
        ))
        .expect("render");
        assert_eq!(
            r.prompt_text,
            "melancholic lo-fi piano, 75 BPM, hip hop, in A minor"
        );
        assert_eq!(r.added, ["hip hop", "in A minor"]);
        assert_eq!(
            (r.tempo_bpm, r.key.as_str(), r.mode.as_str()),
            (Some(75.0), "A minor", "minor")
        );
        // The builder alone: the structured prompt, its own controls (as before).
        let r = render(&req(
            "",
            pb::StructuredPrompt {
                mood: "calm".into(),
                genre: "ambient".into(),
                tempo_bpm: Some(100.0),
                ..Default::default()
            },
        ))
        .expect("render");
        assert_eq!(r.prompt_text, "calm ambient, 100 BPM");
        assert_eq!(r.tempo_bpm, Some(100.0));
        assert!(!r.instruments.is_empty());
    }

    #[test]
    fn the_rules_name_the_field() {
        let long = "x".repeat(validate::MAX_PROMPT_CHARS + 1);
        let e = render(&req(&long, Default::default())).expect_err("too long");
        assert!(e.to_string().contains("prompt"), "{e}");
        let e = render(&req(
            "piano",
            pb::StructuredPrompt {
                tempo_bpm: Some(500.0),
                ..Default::default()
            },
        ))
        .expect_err("tempo");
        assert!(e.to_string().contains("structured.tempo_bpm"), "{e}");
        // The written prompt fits, the completed one does not: the prompt's rule.
        let near = "y".repeat(validate::MAX_PROMPT_CHARS - 3);
        let e = render(&req(
            &near,
            pb::StructuredPrompt {
                genre: "ambient".into(),
                ..Default::default()
            },
        ))
        .expect_err("completed too long");
        assert!(e.to_string().contains("prompt"), "{e}");
    }
}
