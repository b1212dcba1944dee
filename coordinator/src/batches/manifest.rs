//! Batch manifests: JSONL (one object per line) or CSV (a header row naming the columns), each
//! row an item id and the fields of a SubmitGenerationRequest. Rows are read one at a time, so
//! a manifest of any length takes the memory of one row.
//!
//! Fields (JSON names; CSV columns of the same names): `item_id` (or `id`), `prompt`,
//! `negative_prompt`, `duration_seconds`, `steps`, `guidance_scale`, `seed`, `sampler`
//! (`flow_euler`, `ddim`, `dpm_solver_pp2m`, `cosine_dpm_solver_pp2m`), `format` (`wav`,
//! `flac`, `mp3`, `opus`), `bitrate_kbps` (mp3 and opus), `loudness_lufs`, `variations`, `model` (`name` or `name@version`), `labels` (JSON object; CSV
//! `k=v;k=v`), song models' `lyrics`, `vocal_language` and `time_signature`, and the structured prompt's `genre`, `subgenre`, `mood`, `tempo_bpm`, `key`,
//! `instruments`, `structure`, `extra` (JSON arrays; CSV `a;b`).

use std::collections::HashMap;

use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tutti_proto::v1 as pb;

use crate::text::quote;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ManifestFormat {
    Jsonl,
    Csv,
}

impl ManifestFormat {
    /// From a file name or URI: `.csv` is CSV, anything else JSONL.
    pub fn from_name(name: &str) -> Self {
        if name.to_ascii_lowercase().ends_with(".csv") {
            ManifestFormat::Csv
        } else {
            ManifestFormat::Jsonl
        }
    }
}

/// A row that names an item and its request.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestItem {
    pub line: u64,
    pub item_id: String,
    pub request: pb::SubmitGenerationRequest,
}

/// A row that could not become a request; `item_id` when the row named one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RowError {
    pub line: u64,
    pub item_id: Option<String>,
    pub message: String,
}

/// A manifest's whole-file problem (unreadable, a bad CSV header).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading the manifest: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}")]
    Header { line: u64, message: String },
    #[error("line {line}: not UTF-8 text")]
    NotUtf8 { line: u64 },
    #[error("line {line}: longer than {MAX_LINE} bytes (one row is one line)")]
    LineTooLong { line: u64 },
}

/// The longest line a manifest may have: a row of every field at its limit fits easily, and a
/// reader holds at most this much of a file that has no line breaks.
pub const MAX_LINE: usize = 64 << 10;
/// The most columns a CSV row may have (a header names each column once; there are 25).
pub const MAX_COLUMNS: usize = 64;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    #[serde(alias = "id")]
    item_id: Option<String>,
    prompt: Option<String>,
    negative_prompt: Option<String>,
    duration_seconds: Option<f32>,
    steps: Option<u32>,
    guidance_scale: Option<f32>,
    seed: Option<u64>,
    sampler: Option<String>,
    format: Option<String>,
    bitrate_kbps: Option<u32>,
    loudness_lufs: Option<f32>,
    lyrics: Option<String>,
    vocal_language: Option<String>,
    time_signature: Option<u32>,
    variations: Option<u32>,
    model: Option<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
    genre: Option<String>,
    subgenre: Option<String>,
    mood: Option<String>,
    tempo_bpm: Option<f32>,
    key: Option<String>,
    #[serde(default)]
    instruments: Vec<String>,
    #[serde(default)]
    structure: Vec<String>,
    extra: Option<String>,
}

const COLUMNS: &[&str] = &[
    "item_id",
    "id",
    "prompt",
    "negative_prompt",
    "duration_seconds",
    "steps",
    "guidance_scale",
    "seed",
    "sampler",
    "format",
    "bitrate_kbps",
    "loudness_lufs",
    "lyrics",
    "vocal_language",
    "time_signature",
    "variations",
    "model",
    "labels",
    "genre",
    "subgenre",
    "mood",
    "tempo_bpm",
    "key",
    "instruments",
    "structure",
    "extra",
];

impl Row {
    fn into_request(self) -> Result<pb::SubmitGenerationRequest, String> {
        let structured = self.genre.is_some()
            || self.subgenre.is_some()
            || self.mood.is_some()
            || self.tempo_bpm.is_some()
            || self.key.is_some()
            || !self.instruments.is_empty()
            || !self.structure.is_empty()
            || self.extra.is_some();
        let prompt_kind = match (self.prompt, structured) {
            (Some(_), true) => {
                return Err(
                    "give a prompt or structured fields (genre, mood, ...), not both".into(),
                )
            }
            (Some(p), false) => Some(pb::submit_generation_request::PromptKind::Prompt(p)),
            (None, true) => Some(pb::submit_generation_request::PromptKind::Structured(
                pb::StructuredPrompt {
                    genre: self.genre.unwrap_or_default(),
                    subgenre: self.subgenre.unwrap_or_default(),
                    mood: self.mood.unwrap_or_default(),
                    tempo_bpm: self.tempo_bpm,
                    key: self.key.unwrap_or_default(),
                    instruments: self.instruments,
                    structure: self.structure,
                    extra: self.extra.unwrap_or_default(),
                },
            )),
            // Validation names the missing prompt, like SubmitGeneration does.
            (None, false) => None,
        };
        let sampler = match self.sampler.as_deref() {
            None | Some("") => pb::Sampler::Unspecified,
            Some(s) => s
                .parse::<tutti_shared::job::SamplerKind>()
                .map(pb::Sampler::from)
                .map_err(|_| format!("sampler: unknown sampler {}", quote(s)))?,
        };
        let format = match self.format.as_deref() {
            None | Some("") => pb::AudioFormat::Unspecified,
            Some(f) => f
                .parse::<tutti_shared::job::AudioFormat>()
                .map(pb::AudioFormat::from)
                .map_err(|_| format!("format: must be wav, flac, mp3 or opus, not {}", quote(f)))?,
        };
        let model = self.model.filter(|m| !m.is_empty()).map(|m| {
            let (name, version) = m.split_once('@').unwrap_or((&m, ""));
            pb::ModelRef {
                name: name.to_string(),
                version: version.to_string(),
            }
        });
        Ok(pb::SubmitGenerationRequest {
            prompt_kind,
            negative_prompt: self.negative_prompt.unwrap_or_default(),
            duration_seconds: self.duration_seconds,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            sampler: sampler as i32,
            seed: self.seed,
            model,
            format: format as i32,
            bitrate_kbps: self.bitrate_kbps,
            loudness_lufs: self.loudness_lufs,
            lyrics: self.lyrics.unwrap_or_default(),
            vocal_language: self.vocal_language.unwrap_or_default(),
            time_signature: self.time_signature,
            variations: self.variations.unwrap_or(0),
            labels: self.labels,
            ..Default::default()
        })
    }
}

/// Reads a manifest row by row.
pub struct ManifestReader<R> {
    input: R,
    format: ManifestFormat,
    line: u64,
    buf: Vec<u8>,
    header: Option<Vec<String>>,
}

impl<R: AsyncBufRead + Unpin> ManifestReader<R> {
    pub fn new(input: R, format: ManifestFormat) -> Self {
        Self {
            input,
            format,
            line: 0,
            buf: Vec::new(),
            header: None,
        }
    }

    /// The next row; `None` at the end. Blank lines are skipped.
    pub async fn next(&mut self) -> Result<Option<Result<ManifestItem, RowError>>, ManifestError> {
        loop {
            self.buf.clear();
            // Read at most one byte past the limit, so a file without line breaks is refused
            // after MAX_LINE bytes instead of being held whole.
            let limit = MAX_LINE as u64 + 1;
            if (&mut self.input)
                .take(limit)
                .read_until(b'\n', &mut self.buf)
                .await?
                == 0
            {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.len() > MAX_LINE {
                return Err(ManifestError::LineTooLong { line: self.line });
            }
            let text = std::str::from_utf8(&self.buf)
                .map_err(|_| ManifestError::NotUtf8 { line: self.line })?
                .trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let line = self.line;
            let row = match self.format {
                ManifestFormat::Jsonl => parse_json(text),
                ManifestFormat::Csv => {
                    let fields = split_csv(text);
                    let Some(header) = &self.header else {
                        let header =
                            fields.map_err(|message| ManifestError::Header { line, message })?;
                        check_header(&header)
                            .map_err(|message| ManifestError::Header { line, message })?;
                        self.header = Some(header);
                        continue;
                    };
                    match fields {
                        Ok(fields) => csv_row(header, fields),
                        Err(e) => Err((None, e)),
                    }
                }
            };
            return Ok(Some(
                row.and_then(|row| {
                    let item_id = row.item_id.clone();
                    match item_id {
                        None => Err((None, "item_id: required".to_string())),
                        Some(id) => row
                            .into_request()
                            .map(|request| ManifestItem {
                                line,
                                item_id: id.clone(),
                                request,
                            })
                            .map_err(|e| (Some(id), e)),
                    }
                })
                .map_err(|(item_id, message)| RowError {
                    line,
                    item_id,
                    message,
                }),
            ));
        }
    }
}

fn parse_json(text: &str) -> Result<Row, (Option<String>, String)> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| (None, format!("not JSON: {e}")))?;
    let item_id = ["item_id", "id"]
        .iter()
        .find_map(|k| value.get(k).and_then(|v| v.as_str()).map(str::to_string));
    serde_json::from_value(value).map_err(|e| (item_id, e.to_string()))
}

fn check_header(header: &[String]) -> Result<(), String> {
    for h in header {
        if !COLUMNS.contains(&h.as_str()) {
            return Err(format!(
                "unknown column {} (columns: {})",
                quote(h),
                COLUMNS.join(", ")
            ));
        }
    }
    if !header.iter().any(|h| h == "item_id" || h == "id") {
        return Err("the header names no item_id column".into());
    }
    Ok(())
}

fn csv_row(header: &[String], fields: Vec<String>) -> Result<Row, (Option<String>, String)> {
    let item_id = header
        .iter()
        .zip(&fields)
        .find(|(h, _)| *h == "item_id" || *h == "id")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    if fields.len() != header.len() {
        return Err((
            item_id,
            format!(
                "{} fields where the header has {}",
                fields.len(),
                header.len()
            ),
        ));
    }
    let err = |item: &Option<String>, col: &str, e: String| (item.clone(), format!("{col}: {e}"));
    let mut row = Row::default();
    for (col, v) in header.iter().zip(fields) {
        if v.is_empty() {
            continue;
        }
        let num = |v: &str| v.trim().to_string();
        match col.as_str() {
            "item_id" | "id" => row.item_id = Some(v),
            "prompt" => row.prompt = Some(v),
            "negative_prompt" => row.negative_prompt = Some(v),
            "lyrics" => row.lyrics = Some(v),
            "vocal_language" => row.vocal_language = Some(v),
            "time_signature" => {
                row.time_signature = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "duration_seconds" => {
                row.duration_seconds = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "steps" => {
                row.steps = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "guidance_scale" => {
                row.guidance_scale = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "seed" => {
                row.seed = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "bitrate_kbps" => {
                row.bitrate_kbps = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "loudness_lufs" => {
                row.loudness_lufs = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "variations" => {
                row.variations = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "tempo_bpm" => {
                row.tempo_bpm = Some(
                    num(&v)
                        .parse()
                        .map_err(|e| err(&item_id, col, format!("{e}")))?,
                )
            }
            "sampler" => row.sampler = Some(v),
            "format" => row.format = Some(v),
            "model" => row.model = Some(v),
            "genre" => row.genre = Some(v),
            "subgenre" => row.subgenre = Some(v),
            "mood" => row.mood = Some(v),
            "key" => row.key = Some(v),
            "extra" => row.extra = Some(v),
            "instruments" => row.instruments = list(&v),
            "structure" => row.structure = list(&v),
            "labels" => {
                for kv in list(&v) {
                    let (k, val) = kv.split_once('=').ok_or_else(|| {
                        err(&item_id, col, format!("{} is not key=value", quote(&kv)))
                    })?;
                    row.labels
                        .insert(k.trim().to_string(), val.trim().to_string());
                }
            }
            _ => {}
        }
    }
    Ok(row)
}

fn list(v: &str) -> Vec<String> {
    v.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// One CSV record on one line (RFC 4180 quoting: `"a, b"`, `""` for a quote inside quotes).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                if out.len() + 1 >= MAX_COLUMNS {
                    return Err(format!("more than {MAX_COLUMNS} columns"));
                }
                out.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote (a record must fit on one line)".into());
    }
    out.push(field);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rows(text: &str, format: ManifestFormat) -> Vec<Result<ManifestItem, RowError>> {
        let mut r = ManifestReader::new(text.as_bytes(), format);
        let mut out = Vec::new();
        while let Some(row) = r.next().await.expect("manifest") {
            out.push(row);
        }
        out
    }

    #[tokio::test]
    async fn jsonl_rows_keep_their_line_numbers_and_bad_rows_say_why() {
        let text = "{\"item_id\": \"a\", \"prompt\": \"piano\", \"steps\": 4, \"format\": \"flac\"}\n\
                    \n\
                    not json\n\
                    {\"id\": \"c\", \"prompt\": \"x\", \"colour\": 1}\n\
                    {\"id\": \"d\", \"genre\": \"jazz\", \"instruments\": [\"sax\"], \"model\": \"tiny@1\"}\n";
        let rows = rows(text, ManifestFormat::Jsonl).await;
        assert_eq!(rows.len(), 4);
        let a = rows[0].as_ref().expect("row a");
        assert_eq!((a.line, a.item_id.as_str()), (1, "a"));
        assert_eq!(a.request.steps, Some(4));
        assert_eq!(a.request.format, pb::AudioFormat::Flac as i32);
        let bad = rows[1].as_ref().expect_err("not json");
        assert_eq!((bad.line, bad.item_id.as_deref()), (3, None));
        let unknown = rows[2].as_ref().expect_err("unknown field");
        assert_eq!((unknown.line, unknown.item_id.as_deref()), (4, Some("c")));
        assert!(unknown.message.contains("colour"), "{unknown}");
        let d = rows[3].as_ref().expect("row d");
        assert_eq!(d.line, 5);
        assert_eq!(
            d.request.model,
            Some(pb::ModelRef {
                name: "tiny".into(),
                version: "1".into()
            })
        );
        assert!(matches!(
            &d.request.prompt_kind,
            Some(pb::submit_generation_request::PromptKind::Structured(s)) if s.genre == "jazz"
        ));
    }

    #[tokio::test]
    async fn csv_rows_with_quotes_lists_and_labels() {
        let text = "item_id,prompt,duration_seconds,labels\n\
                    a,\"piano, slow \"\"late\"\"\",3.5,team=x;run=2\n\
                    b,drums,fast,\n\
                    c,only two\n";
        let rows = rows(text, ManifestFormat::Csv).await;
        let a = rows[0].as_ref().expect("row a");
        assert_eq!(a.line, 2);
        assert_eq!(
            a.request.prompt_kind,
            Some(pb::submit_generation_request::PromptKind::Prompt(
                "piano, slow \"late\"".into()
            ))
        );
        assert_eq!(a.request.duration_seconds, Some(3.5));
        assert_eq!(a.request.labels.get("run").map(String::as_str), Some("2"));
        let b = rows[1].as_ref().expect_err("bad number");
        assert_eq!((b.line, b.item_id.as_deref()), (3, Some("b")));
        assert!(b.message.starts_with("duration_seconds"), "{b}");
        let c = rows[2].as_ref().expect_err("short row");
        assert_eq!(c.line, 4);
    }

    #[tokio::test]
    async fn delivery_columns_in_csv_and_jsonl() {
        let csv = "item_id,prompt,format,bitrate_kbps,loudness_lufs\n\
                   a,piano,mp3,320,-16\n\
                   b,drums,ogg,,\n";
        let rows_csv = rows(csv, ManifestFormat::Csv).await;
        let a = rows_csv[0].as_ref().expect("row a");
        assert_eq!(a.request.format, pb::AudioFormat::Mp3 as i32);
        assert_eq!(
            (a.request.bitrate_kbps, a.request.loudness_lufs),
            (Some(320), Some(-16.0))
        );
        let b = rows_csv[1].as_ref().expect_err("unknown format");
        assert!(b.message.contains("wav, flac, mp3 or opus"), "{b}");
        let jsonl =
            "{\"id\": \"c\", \"prompt\": \"x\", \"format\": \"opus\", \"bitrate_kbps\": 96}\n";
        let c = &rows(jsonl, ManifestFormat::Jsonl).await[0];
        let c = c.as_ref().expect("row c");
        assert_eq!(
            (
                c.request.format,
                c.request.bitrate_kbps,
                c.request.loudness_lufs
            ),
            (pb::AudioFormat::Opus as i32, Some(96), None)
        );
    }

    #[tokio::test]
    async fn a_csv_header_with_an_unknown_column_is_refused() {
        let mut r = ManifestReader::new("item_id,tempo\n".as_bytes(), ManifestFormat::Csv);
        assert!(matches!(
            r.next().await,
            Err(ManifestError::Header { line: 1, .. })
        ));
    }

    #[tokio::test]
    async fn a_manifest_is_read_in_bounded_lines_and_columns() {
        // A file with no line breaks is refused after MAX_LINE bytes, not held whole.
        let long = "x".repeat(4 * MAX_LINE);
        let mut r = ManifestReader::new(long.as_bytes(), ManifestFormat::Jsonl);
        assert!(matches!(
            r.next().await,
            Err(ManifestError::LineTooLong { line: 1 })
        ));
        // A header of a million columns stops at MAX_COLUMNS.
        let wide = vec!["prompt"; 1_000_000].join(",");
        let header = format!("item_id,{}\n", &wide[..MAX_LINE - 100]);
        let mut r = ManifestReader::new(header.as_bytes(), ManifestFormat::Csv);
        match r.next().await {
            Err(ManifestError::Header { line: 1, message }) => {
                assert!(message.contains("columns"), "{message}")
            }
            other => panic!("wide header: {other:?}"),
        }
        // Not UTF-8: a clear error naming the line.
        let mut r = ManifestReader::new(
            &b"{\"item_id\": \"a\"}\n\xff\xfe\n"[..],
            ManifestFormat::Jsonl,
        );
        assert!(r.next().await.is_ok());
        assert!(matches!(
            r.next().await,
            Err(ManifestError::NotUtf8 { line: 2 })
        ));
    }
}
