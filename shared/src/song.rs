//! The two texts a song model (ACE-Step 1.5) reads (diffusers `AceStepPipeline._format_prompt`):
//! the caption with its instruction and metadata block, run through the text encoder; and the
//! lyrics with their language, of which only the token embeddings are taken. tutti's structured
//! controls fill the metadata (tempo, key and mode, duration), so they are ACE-Step's own
//! controls. Here rather than in the model crate so that the coordinator's prompt preview shows
//! what the model reads.

use crate::prompt::{Controls, Mode};

/// What the pipeline is asked to do; each task has its instruction line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A song from the text and lyrics alone.
    Text2Music,
    /// Regenerate a span of a given song, the rest kept.
    Repaint,
}

impl Task {
    fn instruction(self) -> &'static str {
        match self {
            Task::Text2Music => "Fill the audio semantic mask based on the given conditions:",
            Task::Repaint => "Repaint the mask area based on the given conditions:",
        }
    }
}

/// Pitch names as ACE-Step's key scales spell them (sharps).
const PITCH_NAMES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

/// A song request as the texts need it.
#[derive(Debug, Clone, PartialEq)]
pub struct SongText<'a> {
    pub task: Task,
    pub caption: &'a str,
    pub lyrics: &'a str,
    /// An ISO 639-1 code such as `en` (ACE-Step's list also has `yue` and `unknown`).
    pub language: &'a str,
    pub controls: &'a Controls,
    /// Beats per bar (`4` for 4/4); `None` when not asked.
    pub time_signature: Option<u8>,
}

impl SongText<'_> {
    /// The caption text: instruction, caption and metadata, closed by the end-of-text token.
    pub fn caption_text(&self) -> String {
        let c = self.controls;
        // diffusers prints an int tempo; a fractional one keeps its decimals.
        let bpm = match c.bpm {
            Some(b) if b > 0.0 && b.fract() == 0.0 => format!("{}", b as i64),
            Some(b) if b > 0.0 => format!("{b}"),
            _ => "N/A".to_string(),
        };
        let ts = self
            .time_signature
            .map_or_else(|| "N/A".to_string(), |t| t.to_string());
        let key = match (c.key, c.mode) {
            (Some(k), Some(m)) => format!(
                "{} {}",
                PITCH_NAMES[usize::from(k % 12)],
                match m {
                    Mode::Major => "major",
                    Mode::Minor => "minor",
                }
            ),
            (Some(k), None) => PITCH_NAMES[usize::from(k % 12)].to_string(),
            _ => "N/A".to_string(),
        };
        let duration = if c.duration_s > 0.0 {
            format!("{} seconds", c.duration_s.floor() as i64)
        } else {
            "30 seconds".to_string()
        };
        format!(
            "# Instruction\n{}\n\n# Caption\n{}\n\n# Metas\n- bpm: {bpm}\n- timesignature: {ts}\n\
             - keyscale: {key}\n- duration: {duration}\n<|endoftext|>\n",
            self.task.instruction(),
            self.caption
        )
    }

    /// The lyric text: the language and the lyrics, closed by the end-of-text token.
    pub fn lyric_text(&self) -> String {
        format!(
            "# Languages\n{}\n\n# Lyric\n{}<|endoftext|>",
            self.language, self.lyrics
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_follow_the_pipeline_template() {
        let controls = Controls {
            duration_s: 11.5,
            bpm: Some(120.0),
            key: Some(0),
            mode: Some(Mode::Major),
        };
        let song = SongText {
            task: Task::Text2Music,
            caption: "upbeat pop, female vocals",
            lyrics: "[verse]\nla la la",
            language: "en",
            controls: &controls,
            time_signature: Some(4),
        };
        assert_eq!(
            song.caption_text(),
            "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n\
             # Caption\nupbeat pop, female vocals\n\n# Metas\n- bpm: 120\n- timesignature: 4\n\
             - keyscale: C major\n- duration: 11 seconds\n<|endoftext|>\n"
        );
        assert_eq!(
            song.lyric_text(),
            "# Languages\nen\n\n# Lyric\n[verse]\nla la la<|endoftext|>"
        );
        let bare = Controls {
            duration_s: 30.0,
            ..Default::default()
        };
        let text = SongText {
            controls: &bare,
            time_signature: None,
            ..song
        }
        .caption_text();
        assert!(text
            .contains("- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds"));
    }
}
