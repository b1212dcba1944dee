//! The Qwen3 byte-level BPE tokenizer (`tokenizer.json` through the `tokenizers` crate) with the
//! end token Qwen3-Embedding appends.
//!
//! Qwen3-Embedding's `tokenizer.json` carries a post-processor that appends `<|endoftext|>` to
//! every sequence; the plain Qwen3 `tokenizer.json` (same vocabulary and merges) does not. ACE-Step
//! was trained with the token appended, so it is appended here whichever file is given: the
//! sequence is encoded without the post-processor, truncated to leave room, and the end token
//! pushed. A literal `<|endoftext|>` inside the text is an added token and still matches.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::{ModelError, Result};

/// The token Qwen3-Embedding appends (id 151643 in the real vocabulary).
pub const END_TOKEN: &str = "<|endoftext|>";

#[derive(Debug, Clone)]
pub struct Qwen3Tokenizer {
    tokenizer: Tokenizer,
    end_id: u32,
    max_length: usize,
}

impl Qwen3Tokenizer {
    /// Reads `tokenizer.json` at `path`; sequences are at most `max_length` tokens, the end token
    /// included (ACE-Step: 256 for the prompt, 2048 for lyrics).
    pub fn load(path: &Path, max_length: usize) -> Result<Self> {
        if max_length < 1 {
            return Err(ModelError::Input(
                "qwen3 tokenizer max_length must be at least 1".into(),
            ));
        }
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let end_id = tokenizer.token_to_id(END_TOKEN).ok_or_else(|| {
            ModelError::Tokenizer(format!("{}: no {END_TOKEN} token", path.display()))
        })?;
        Ok(Self {
            tokenizer,
            end_id,
            max_length,
        })
    }

    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// The ids of `text`, truncated to `max_length - 1` and ending with the end token.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids();
        let keep = ids.len().min(self.max_length - 1);
        let mut out: Vec<i64> = ids[..keep].iter().map(|&i| i64::from(i)).collect();
        out.push(i64::from(self.end_id));
        Ok(out)
    }
}
