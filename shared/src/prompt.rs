//! The prompt builder: structured request fields -> prompt text, and numeric controls parsed out of
//! free text ("75 BPM", "in A minor") so that tempo and key are controls, not hopes.

use serde::{Deserialize, Serialize};

/// Major or minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Major,
    Minor,
}

/// Numeric conditioning values of one generation. `None` means "unknown": the model uses the
/// conditioner's learned unknown embedding.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Controls {
    /// Requested length in seconds (always known).
    pub duration_s: f32,
    /// Tempo in beats per minute.
    pub bpm: Option<f32>,
    /// Tonic pitch class, 0 = C, 1 = C#/Db, ..., 11 = B.
    pub key: Option<u8>,
    pub mode: Option<Mode>,
}

/// Pitch-class names, sharps first; flats are parsed too.
const PITCH_NAMES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

/// Structure words a structured prompt may carry.
pub const STRUCTURE_WORDS: &[&str] = &[
    "intro",
    "verse",
    "pre-chorus",
    "chorus",
    "bridge",
    "build",
    "drop",
    "breakdown",
    "outro",
];

/// Words of the built-in model's training captions: `tutti train`'s captions
/// (worker/train/src/caption.rs) pick from these lists, and forms offer them as suggestions,
/// so a suggestion is a word the model was taught. Any other word is allowed in a request.
pub mod vocab {
    /// (subgenre, genre) wordings of a style the composer writes; the first names the style.
    pub type Wordings = &'static [(&'static str, &'static str)];

    pub const ROCK: Wordings = &[("", "rock"), ("", "rock song"), ("", "rock track")];
    pub const LOFI_HIP_HOP: Wordings = &[
        ("lo-fi", "hip hop"),
        ("lo-fi", "hip hop beat"),
        ("lofi", "beat"),
    ];
    pub const HOUSE: Wordings = &[
        ("", "house"),
        ("", "house track"),
        ("four-on-the-floor", "house"),
    ];
    pub const TRAP: Wordings = &[("", "trap"), ("", "trap beat")];
    pub const WALTZ: Wordings = &[("", "waltz"), ("", "waltz in 3/4")];
    pub const AMBIENT: Wordings = &[
        ("", "ambient"),
        ("", "ambient soundscape"),
        ("", "ambient music"),
    ];
    pub const CLASSICAL: Wordings = &[("", "classical"), ("", "classical piece")];
    pub const FOLK: Wordings = &[
        ("", "folk"),
        ("", "folk tune"),
        ("traditional", "folk melody"),
    ];
    pub const POP: Wordings = &[("", "pop"), ("", "pop song")];
    pub const JAZZ: Wordings = &[("", "jazz"), ("swing", "jazz"), ("", "jazz tune")];
    pub const TECHNO: Wordings = &[("", "techno"), ("", "techno track")];
    pub const CINEMATIC: Wordings = &[
        ("", "cinematic"),
        ("", "cinematic score"),
        ("epic", "cinematic music"),
    ];
    /// Every style's wordings.
    pub const STYLES: &[Wordings] = &[
        ROCK,
        LOFI_HIP_HOP,
        HOUSE,
        TRAP,
        WALTZ,
        AMBIENT,
        CLASSICAL,
        FOLK,
        POP,
        JAZZ,
        TECHNO,
        CINEMATIC,
    ];

    /// Mood words by mode and tempo (fast: 110 BPM and up), honest to the music they describe.
    pub const MOODS_MAJOR_FAST: &[&str] = &["upbeat", "happy", "bright", "joyful", "cheerful"];
    pub const MOODS_MAJOR_SLOW: &[&str] = &["calm", "peaceful", "warm", "gentle", "serene"];
    pub const MOODS_MINOR_FAST: &[&str] = &["dark", "intense", "driving", "tense", "urgent"];
    pub const MOODS_MINOR_SLOW: &[&str] = &["melancholic", "sad", "somber", "wistful", "moody"];
    /// Words a mood gains for loud or soft music ("upbeat powerful").
    pub const LOUD: &[&str] = &["powerful", "bold"];
    pub const SOFT: &[&str] = &["soft", "quiet"];

    pub const PIANO: &str = "piano";
    pub const ELECTRIC_PIANO: &str = "electric piano";
    pub const ORGAN: &str = "organ";
    pub const ACOUSTIC_GUITAR: &str = "acoustic guitar";
    pub const ELECTRIC_GUITAR: &str = "electric guitar";
    pub const STRINGS: &str = "strings";
    pub const FLUTE: &str = "flute";
    pub const SYNTH_PAD: &str = "synth pad";
    pub const BASS: &str = "bass";
    pub const DRUMS: &str = "drums";
    /// The instrument families' words.
    pub const INSTRUMENTS: &[&str] = &[
        PIANO,
        ELECTRIC_PIANO,
        ORGAN,
        ACOUSTIC_GUITAR,
        ELECTRIC_GUITAR,
        STRINGS,
        FLUTE,
        SYNTH_PAD,
        BASS,
        DRUMS,
    ];

    /// Each style's name (the genre of its first wording).
    pub fn genres() -> Vec<&'static str> {
        STYLES
            .iter()
            .filter_map(|w| w.first().map(|(_, genre)| *genre))
            .collect()
    }

    /// Every subgenre word of the wordings, once, in order.
    pub fn subgenres() -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for (sub, _) in STYLES.iter().flat_map(|w| w.iter()) {
            if !sub.is_empty() && !out.contains(sub) {
                out.push(sub);
            }
        }
        out
    }

    /// Every mood word, the dynamics words last.
    pub fn moods() -> Vec<&'static str> {
        [
            MOODS_MAJOR_FAST,
            MOODS_MAJOR_SLOW,
            MOODS_MINOR_FAST,
            MOODS_MINOR_SLOW,
            LOUD,
            SOFT,
        ]
        .concat()
    }
}

/// The name of a key: "A minor", "F# major", "Eb" (sharps: "D#").
pub fn key_name(tonic: u8, mode: Option<Mode>) -> String {
    let name = PITCH_NAMES[usize::from(tonic % 12)];
    match mode {
        Some(Mode::Major) => format!("{name} major"),
        Some(Mode::Minor) => format!("{name} minor"),
        None => name.to_string(),
    }
}

/// The structured form of a prompt (the API's `StructuredPrompt`, validated).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StructuredPrompt {
    pub genre: String,
    pub subgenre: String,
    pub mood: String,
    pub tempo_bpm: Option<f32>,
    pub key: Option<(u8, Option<Mode>)>,
    pub instruments: Vec<String>,
    pub structure: Vec<String>,
    pub extra: String,
}

/// Renders a structured prompt into the text the model sees. The order follows the captions
/// the built-in model was trained on: mood, style, instruments, tempo, key, structure, extra.
/// Example: `melancholic lo-fi hip hop with piano and bass, 75 BPM, in A minor, intro and verse`.
pub fn build(p: &StructuredPrompt) -> String {
    let mut head: Vec<&str> = Vec::new();
    for word in [p.mood.trim(), p.subgenre.trim(), p.genre.trim()] {
        if !word.is_empty() {
            head.push(word);
        }
    }
    let mut text = head.join(" ");
    let instruments: Vec<&str> = p
        .instruments
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if !instruments.is_empty() {
        let list = join_and(&instruments);
        text = if text.is_empty() {
            list
        } else {
            format!("{text} with {list}")
        };
    }
    let mut parts = vec![text];
    if let Some(bpm) = p.tempo_bpm {
        parts.push(format!("{} BPM", bpm.round() as i64));
    }
    if let Some((tonic, mode)) = p.key {
        parts.push(format!("in {}", key_name(tonic, mode)));
    }
    let structure: Vec<&str> = p.structure.iter().map(|s| s.trim()).collect();
    if !structure.is_empty() {
        parts.push(join_and(&structure));
    }
    if !p.extra.trim().is_empty() {
        parts.push(p.extra.trim().to_string());
    }
    parts.retain(|s| !s.is_empty());
    parts.join(", ")
}

/// A prompt as written, completed by the structured fields it lacks: the mood, style words,
/// instruments and structure words it does not mention, the extra text it does not contain, a
/// tempo when it names none and a key when it names none, rendered by `build` after it. Returns
/// the text and the parts added, in order. Without text, `build(p)` and nothing "added".
/// Example: "melancholic lo-fi piano, 75 BPM" with genre "hip hop", mood "melancholic", drums
/// and A minor gives "melancholic lo-fi piano, 75 BPM, hip hop with drums, in A minor".
pub fn complete(text: &str, p: &StructuredPrompt) -> (String, Vec<String>) {
    let text = text.trim();
    if text.is_empty() {
        return (build(p), Vec::new());
    }
    let lower = text.to_lowercase();
    let lacks = |w: &str| !w.trim().is_empty() && !mentions(&lower, &w.trim().to_lowercase());
    let pick = |w: &str, added: &mut Vec<String>| -> String {
        if lacks(w) {
            added.push(w.trim().to_string());
            w.trim().to_string()
        } else {
            String::new()
        }
    };
    let mut added = Vec::new();
    let mut missing = StructuredPrompt {
        mood: pick(&p.mood, &mut added),
        subgenre: pick(&p.subgenre, &mut added),
        genre: pick(&p.genre, &mut added),
        ..StructuredPrompt::default()
    };
    for i in &p.instruments {
        if lacks(i) && !missing.instruments.iter().any(|m| m == i.trim()) {
            missing.instruments.push(i.trim().to_string());
            added.push(i.trim().to_string());
        }
    }
    let parsed = parse_controls(text, 0.0);
    if let (None, Some(bpm)) = (parsed.bpm, p.tempo_bpm) {
        missing.tempo_bpm = Some(bpm);
        added.push(format!("{} BPM", bpm.round() as i64));
    }
    if let (None, Some((tonic, mode))) = (parsed.key, p.key) {
        missing.key = Some((tonic, mode));
        added.push(format!("in {}", key_name(tonic, mode)));
    }
    for s in &p.structure {
        if lacks(s) && !missing.structure.iter().any(|m| m == s.trim()) {
            missing.structure.push(s.trim().to_string());
            added.push(s.trim().to_string());
        }
    }
    missing.extra = pick(&p.extra, &mut added);
    let tail = build(&missing);
    if tail.is_empty() {
        return (text.to_string(), added);
    }
    let head = text.trim_end_matches(|c: char| matches!(c, ',' | ';' | '.') || c.is_whitespace());
    (format!("{head}, {tail}"), added)
}

/// Whether `needle` occurs in `hay` as whole words (both lowercase).
fn mentions(hay: &str, needle: &str) -> bool {
    let mut from = 0;
    while let Some(i) = hay[from..].find(needle) {
        let (start, end) = (from + i, from + i + needle.len());
        let before = hay[..start].chars().next_back();
        let after = hay[end..].chars().next();
        if !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric) {
            return true;
        }
        from = start + needle.chars().next().map_or(1, char::len_utf8);
    }
    false
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Parses a key such as "A minor", "F# major", "Eb", "c#m", "Bb min": tonic and optional mode.
pub fn parse_key(text: &str) -> Option<(u8, Option<Mode>)> {
    let t = text.trim();
    let mut chars = t.chars();
    let letter = chars.next()?.to_ascii_uppercase();
    let base: i32 = match letter {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest = chars.as_str();
    let (shift, rest) = if let Some(r) = rest.strip_prefix(['#', '♯']) {
        (1, r)
    } else if let Some(r) = rest.strip_prefix(['b', '♭']) {
        (-1, r)
    } else {
        (0, rest)
    };
    let mode = match rest.trim().to_ascii_lowercase().as_str() {
        "" => None,
        "major" | "maj" | "ionian" => Some(Mode::Major),
        "minor" | "min" | "m" | "aeolian" => Some(Mode::Minor),
        _ => return None,
    };
    Some(((base + shift).rem_euclid(12) as u8, mode))
}

fn bpm_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"(?i)\b(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b")
            .expect("valid regex")
    })
}

fn key_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"(?i)\b(?:in|key of|in the key of)\s+([a-g](?:#|♯|b|♭)?)(?:[\s-]*(major|minor|maj|min|m))?\b(\s+(?:key|tonality|scale|mode)\b)?|\b([a-g](?:#|♯|b|♭)?)[\s-]+(major|minor)\b(\s+(?:key|tonality|scale|mode)\b)?")
            .expect("valid regex")
    })
}

fn mode_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"(?i)\b(major|minor)\b").expect("valid regex"))
}

/// The key a match of [`key_regex`] names, or `None` where the letter is a word of the sentence:
/// the article in "in a minor key" or "in a dreamy mood" (a lowercase "a" with no mode, or with a
/// mode and then "key"), or any other lowercase letter standing alone ("in c" is rarely a key).
fn key_of_match(m: &regex::Captures) -> Option<(u8, Option<Mode>)> {
    let (tonic, mode, key_word) = match (m.get(1), m.get(4)) {
        (Some(t), _) => (t.as_str(), m.get(2), m.get(3)),
        (None, Some(t)) => (t.as_str(), m.get(5), m.get(6)),
        _ => return None,
    };
    let lowercase = tonic.starts_with(|c: char| c.is_ascii_lowercase());
    if lowercase && mode.is_none() {
        return None;
    }
    if tonic == "a" && key_word.is_some() {
        return None;
    }
    parse_key(&format!(
        "{tonic} {}",
        mode.map(|m| m.as_str()).unwrap_or("")
    ))
}

/// Numeric controls parsed from free text: "75 BPM" sets the tempo, "in A minor" or "F# major"
/// the key and mode, a lone "minor"/"major" the mode. Tempos outside 40-240 BPM are ignored.
pub fn parse_controls(text: &str, duration_s: f32) -> Controls {
    let mut c = Controls {
        duration_s,
        ..Controls::default()
    };
    if let Some(m) = bpm_regex().captures(text) {
        if let Ok(bpm) = m[1].parse::<f32>() {
            if (40.0..=240.0).contains(&bpm) {
                c.bpm = Some(bpm);
            }
        }
    }
    if let Some((k, mode)) = key_regex()
        .captures_iter(text)
        .find_map(|m| key_of_match(&m))
    {
        c.key = Some(k);
        c.mode = mode;
    }
    if c.mode.is_none() {
        if let Some(m) = mode_regex().captures(text) {
            c.mode = parse_key(&format!("C {}", &m[1])).and_then(|(_, mode)| mode);
        }
    }
    c
}

/// The instrument families a text names, as [`vocab::INSTRUMENTS`] words in that order: the
/// caption words themselves and the ways people name them ("synth" is the synth pad, "string
/// quartet" and "cello" are strings, "rhodes" an electric piano; a guitar named neither acoustic
/// nor electric is acoustic). "Electric piano" is not also a piano, nor "bass drum" a bass.
pub fn parse_instruments(text: &str) -> Vec<&'static str> {
    let lower = text.to_lowercase();
    let mut named = [false; vocab::INSTRUMENTS.len()];
    for m in instrument_regex().captures_iter(&lower) {
        let Some((i, _)) = m.iter().skip(1).enumerate().find(|(_, g)| g.is_some()) else {
            continue;
        };
        if let Some(slot) = INSTRUMENT_GROUPS.get(i).and_then(|f| named.get_mut(*f)) {
            *slot = true;
        }
    }
    vocab::INSTRUMENTS
        .iter()
        .zip(named)
        .filter_map(|(w, n)| n.then_some(*w))
        .collect()
}

/// The family (index in [`vocab::INSTRUMENTS`]) of each group of [`instrument_regex`].
const INSTRUMENT_GROUPS: [usize; 11] = [1, 0, 2, 4, 3, 5, 6, 7, 9, 8, 9];

/// One group per way of naming a family. Matches start leftmost and the first alternative that
/// matches there wins, so "electric piano" is read before its "piano" and "bass drum" (a drum)
/// before its "bass".
fn instrument_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(concat!(
            r"\b(?:",
            r"(electric pianos?|e-pianos?|rhodes|wurlitzer)",
            r"|(pianos?)",
            r"|(organs?|hammond)",
            r"|(electric guitars?|distorted guitars?|overdriven guitars?)",
            r"|((?:acoustic |nylon |classical |steel )?guitars?)",
            r"|(strings?|string quartet|violins?|violas?|cellos?|fiddles?)",
            r"|(flutes?|piccolos?)",
            r"|(synth pads?|synths?|synthesizers?|pads)",
            r"|(bass drums?)",
            r"|(bass(?: guitar)?|basslines?|bass lines?|sub-bass|808s?)",
            r"|(drums?|drum kit|percussion|drum machine)",
            r")\b"
        ))
        .expect("valid regex")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suggestions_are_the_caption_words_once_each() {
        let genres = vocab::genres();
        assert_eq!(genres.len(), vocab::STYLES.len());
        assert_eq!(&genres[..3], ["rock", "hip hop", "house"]);
        let subgenres = vocab::subgenres();
        assert_eq!(
            subgenres,
            [
                "lo-fi",
                "lofi",
                "four-on-the-floor",
                "traditional",
                "swing",
                "epic"
            ]
        );
        let moods = vocab::moods();
        assert_eq!(moods.len(), 24);
        for (i, m) in moods.iter().enumerate() {
            assert!(!moods[..i].contains(m), "{m} twice");
        }
        assert_eq!(vocab::INSTRUMENTS.len(), 10);
    }

    #[test]
    fn instruments_are_read_in_every_wording() {
        let cases: [(&str, &[&str]); 9] = [
            (
                "lo-fi hip hop with bass, drums and electric piano",
                &["electric piano", "bass", "drums"],
            ),
            ("sad solo piano nocturne", &["piano"]),
            ("joyful string quartet in D major", &["strings"]),
            ("dark cello and violins", &["strings"]),
            (
                "uplifting house track with synth and drums",
                &["synth pad", "drums"],
            ),
            ("melancholic fingerpicked guitar", &["acoustic guitar"]),
            (
                "rock with Electric Guitar, a kick on the bass drum",
                &["electric guitar", "drums"],
            ),
            (
                "sunny folk melody on flute and acoustic guitar",
                &["acoustic guitar", "flute"],
            ),
            ("a dreamy mood, 80 BPM, bassoon-free ambience", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_instruments(text), want, "{text}");
        }
        // Every caption word reads as itself.
        for w in vocab::INSTRUMENTS {
            assert_eq!(parse_instruments(&format!("a track with {w}")), [*w], "{w}");
        }
    }

    #[test]
    fn parses_tempo_and_key_from_free_text() {
        let c = parse_controls(
            "melancholic lo-fi piano, 75 BPM, late night, in A minor",
            10.0,
        );
        assert_eq!(c.bpm, Some(75.0));
        assert_eq!(c.key, Some(9));
        assert_eq!(c.mode, Some(Mode::Minor));
        let c = parse_controls("uplifting house in the key of F# major at 124 bpm", 8.0);
        assert_eq!(
            (c.bpm, c.key, c.mode),
            (Some(124.0), Some(6), Some(Mode::Major))
        );
        let c = parse_controls("dark ambient, minor, no drums", 5.0);
        assert_eq!((c.bpm, c.key, c.mode), (None, None, Some(Mode::Minor)));
        // People's wordings: the article "a" is not the key of A.
        let c = parse_controls("sad solo piano nocturne in a minor key, 72 BPM", 10.0);
        assert_eq!(
            (c.bpm, c.key, c.mode),
            (Some(72.0), None, Some(Mode::Minor))
        );
        let c = parse_controls("cheerful folk tune in a major key", 10.0);
        assert_eq!((c.key, c.mode), (None, Some(Mode::Major)));
        let c = parse_controls("jazz in a smoky late night bar", 10.0);
        assert_eq!((c.key, c.mode), (None, None));
        let c = parse_controls(
            "melancholic fingerpicked acoustic guitar, 80 BPM, in D minor",
            10.0,
        );
        assert_eq!((c.key, c.mode), (Some(2), Some(Mode::Minor)));
        let c = parse_controls("dark synthwave in A minor key", 10.0);
        assert_eq!((c.key, c.mode), (Some(9), Some(Mode::Minor)));
        let c = parse_controls("moody trap beat in a minor", 10.0);
        assert_eq!((c.key, c.mode), (Some(9), Some(Mode::Minor)));
        for (text, key, mode) in [
            ("ballad in F#m", 6, Mode::Minor),
            ("ballad in Bb-minor", 10, Mode::Minor),
            ("rock in E", 4, Mode::Major),
            ("waltz, G-major", 7, Mode::Major),
        ] {
            let c = parse_controls(text, 10.0);
            let want_mode = (text != "rock in E").then_some(mode);
            assert_eq!((c.key, c.mode), (Some(key), want_mode), "{text}");
        }
        let c = parse_controls("Eb major waltz", 5.0);
        assert_eq!((c.key, c.mode), (Some(3), Some(Mode::Major)));
        assert_eq!(parse_controls("1000 bpm chaos", 1.0).bpm, None);
    }

    #[test]
    fn builds_text_that_parses_back() {
        let p = StructuredPrompt {
            genre: "hip hop".into(),
            subgenre: "lo-fi".into(),
            mood: "melancholic".into(),
            tempo_bpm: Some(75.0),
            key: parse_key("A minor"),
            instruments: vec!["piano".into(), "bass".into(), "drums".into()],
            structure: vec!["intro".into(), "verse".into()],
            extra: "late night study session".into(),
        };
        let text = build(&p);
        assert_eq!(
            text,
            "melancholic lo-fi hip hop with piano, bass and drums, 75 BPM, in A minor, intro and verse, late night study session"
        );
        let c = parse_controls(&text, 10.0);
        assert_eq!(
            (c.bpm, c.key, c.mode),
            (Some(75.0), Some(9), Some(Mode::Minor))
        );
    }

    #[test]
    fn completes_a_written_prompt_with_what_it_lacks() {
        let p = StructuredPrompt {
            genre: "hip hop".into(),
            mood: "Melancholic".into(),
            tempo_bpm: Some(90.0),
            key: parse_key("A minor"),
            instruments: vec!["piano".into(), "drums".into()],
            structure: vec!["intro".into()],
            ..StructuredPrompt::default()
        };
        let (text, added) = complete(
            "melancholic lo-fi piano, 75 BPM, late night study session.",
            &p,
        );
        assert_eq!(
            text,
            "melancholic lo-fi piano, 75 BPM, late night study session, hip hop with drums, in A minor, intro"
        );
        assert_eq!(added, ["hip hop", "drums", "in A minor", "intro"]);
        let c = parse_controls(&text, 0.0);
        assert_eq!(
            (c.bpm, c.key, c.mode),
            (Some(75.0), Some(9), Some(Mode::Minor))
        );
        // Only the mood lacking (the tempo and key are in the text, as it writes them).
        let (text, added) = complete(
            " calm hip hop with piano and drums in A minor at 90 bpm, intro ",
            &p,
        );
        assert_eq!(
            text,
            "calm hip hop with piano and drums in A minor at 90 bpm, intro, Melancholic"
        );
        assert_eq!(added, ["Melancholic"]);
        // Nothing lacking: the text as written.
        let mood = StructuredPrompt {
            mood: "calm".into(),
            ..StructuredPrompt::default()
        };
        assert_eq!(
            complete(" calm piano ", &mood),
            ("calm piano".to_string(), Vec::new())
        );
        // Whole words only: "pianos" does not mention "piano"... but "piano," does.
        assert!(!mentions("grand pianos", "piano") && mentions("piano, bass", "piano"));
        assert!(mentions("lo-fi beat", "lo-fi") && !mentions("hip hopping", "hip hop"));
        // Without text: the structured prompt alone.
        assert_eq!(complete("  ", &p), (build(&p), Vec::new()));
        // Only a tempo to add.
        let tempo = StructuredPrompt {
            tempo_bpm: Some(120.0),
            ..StructuredPrompt::default()
        };
        assert_eq!(
            complete("house", &tempo),
            ("house, 120 BPM".to_string(), vec!["120 BPM".to_string()])
        );
    }

    #[test]
    fn parses_keys() {
        assert_eq!(parse_key("c#m"), Some((1, Some(Mode::Minor))));
        assert_eq!(parse_key("Bb min"), Some((10, Some(Mode::Minor))));
        assert_eq!(parse_key("G"), Some((7, None)));
        assert_eq!(parse_key("H major"), None);
        assert_eq!(parse_key("A dorian"), None);
    }
}
