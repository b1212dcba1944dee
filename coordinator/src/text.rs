//! One rule for every string a request carries: valid UTF-8 (the wire already guarantees it),
//! no control characters (newline and tab only where a field takes lines of text), no bidi
//! embedding/override/isolate characters (they make stored text read differently from what it
//! holds: "Trojan Source"), and a length by field. Both SQL dialects then store what was
//! accepted byte for byte: Postgres refuses NUL in text, SQLite keeps it, so NUL must never
//! reach either.
//!
//! Errors quote at most a short, escaped prefix of the offending value ([`quote`]), so a 1 MB
//! value cannot make a 1 MB error message (which gRPC clients refuse as oversized metadata).

use crate::error::{Error, Result};

/// How a field's text is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    /// The most characters (Unicode scalar values) the field takes.
    pub max_chars: usize,
    /// Newline, carriage return and tab are allowed (prompts, lyrics); otherwise one line.
    pub multiline: bool,
    /// An empty (or all-whitespace) value is refused.
    pub required: bool,
}

impl TextRule {
    /// A single-line value of at most `max_chars` characters; empty is allowed.
    pub const fn line(max_chars: usize) -> Self {
        Self {
            max_chars,
            multiline: false,
            required: false,
        }
    }

    /// Text that may span lines (prompts, lyrics); empty is allowed.
    pub const fn lines(max_chars: usize) -> Self {
        Self {
            max_chars,
            multiline: true,
            required: false,
        }
    }

    pub const fn required(self) -> Self {
        Self {
            required: true,
            ..self
        }
    }
}

/// Characters no field takes: controls (newline, CR and tab aside in multi-line fields) and
/// the bidi embeddings, overrides and isolates.
fn forbidden(c: char, multiline: bool) -> bool {
    if multiline && matches!(c, '\n' | '\r' | '\t') {
        return false;
    }
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks `value` for `field` under `rule`.
pub fn check(field: &str, value: &str, rule: TextRule) -> Result<()> {
    if rule.required && value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    let n = value.chars().count();
    if n > rule.max_chars {
        return Err(Error::invalid(
            field,
            format!("must be at most {} characters (got {n})", rule.max_chars),
        ));
    }
    if let Some((at, c)) = value
        .chars()
        .enumerate()
        .find(|&(_, c)| forbidden(c, rule.multiline))
    {
        let allowed = if rule.multiline {
            "; newline and tab are allowed"
        } else {
            ""
        };
        return Err(Error::invalid(
            field,
            format!(
                "must not contain control characters or bidi overrides (found U+{:04X} at character {at}{allowed})",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// The most characters of a value an error message repeats.
const QUOTED_CHARS: usize = 32;

/// A value as an error message may show it: at most 32 characters, escaped (controls and
/// quotes as `\u{..}`/`\"`), in double quotes, with `...` when cut.
pub fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars().take(QUOTED_CHARS) {
        if forbidden(c, false) || c == '"' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('"');
    if value.chars().nth(QUOTED_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_of(e: Error) -> String {
        match e {
            Error::InvalidArgument { rule, .. } => rule,
            other => panic!("not a rule violation: {other}"),
        }
    }

    #[test]
    fn controls_and_bidi_overrides_are_refused_newlines_only_where_allowed() {
        for bad in [
            "a\0b",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
            "rtl\u{202E}gpj.exe",
        ] {
            let rule = rule_of(check("f", bad, TextRule::lines(100)).unwrap_err());
            assert!(
                rule.starts_with("must not contain control characters"),
                "{bad:?}: {rule}"
            );
        }
        assert!(check("f", "verse\n\tline", TextRule::lines(100)).is_ok());
        assert!(check("f", "one\nline", TextRule::line(100)).is_err());
        // Right-to-left text itself, and the marks RTL writing needs, are fine.
        assert!(check("f", "שלום \u{200F}عالم", TextRule::line(100)).is_ok());
    }

    #[test]
    fn length_counts_characters_and_required_refuses_blank() {
        assert!(check("f", "éééé", TextRule::line(4)).is_ok());
        let rule = rule_of(check("f", "ééééé", TextRule::line(4)).unwrap_err());
        assert_eq!(rule, "must be at most 4 characters (got 5)");
        assert!(check("f", " \n ", TextRule::lines(4).required()).is_err());
        assert!(check("f", "", TextRule::line(4)).is_ok());
    }

    #[test]
    fn quotes_are_short_and_escaped() {
        let long = "x".repeat(1 << 20);
        let q = quote(&long);
        assert_eq!(q.len(), 32 + 2 + 3);
        assert!(q.ends_with("\"..."));
        assert_eq!(quote("a\0\"b"), r#""a\u{0}\"b""#);
        assert_eq!(quote("ok"), "\"ok\"");
    }
}
