//! What deleting a job changes in its rows (the store applies it in the delete's transaction):
//! the prompt and lyrics blanked in the spec and the stored request, and the blob keys the job
//! owns. The `DeleteJob` service is `crate::deletion`.

use prost::Message;
use tutti_proto::v1 as pb;
use tutti_shared::job::JobSpec;

use crate::error::{Error, Result};

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Blob keys to delete: the outputs' and the job's own init clip.
    pub keys: Vec<String>,
    /// The job had not ended: this delete cancelled it.
    pub cancelled: bool,
    /// This call deleted it (false: it already was).
    pub newly: bool,
}

/// The stored request without what the user wrote: prompt (text or structured), negative
/// prompt, lyrics, init audio.
pub fn blank_request(stored: &[u8]) -> Result<Vec<u8>> {
    let mut req = pb::SubmitGenerationRequest::decode(stored)
        .map_err(|e| Error::Internal(format!("stored request: {e}")))?;
    req.prompt_kind = None;
    req.negative_prompt.clear();
    req.init_audio.clear();
    req.lyrics.clear();
    Ok(req.encode_to_vec())
}

/// The spec without the prompt text the model read. The init clip's key stays (a delete
/// retried finds the object to delete again).
pub fn blank_spec(spec: &mut JobSpec) {
    spec.prompt.clear();
    spec.negative_prompt.clear();
    if let Some(song) = spec.song.as_mut() {
        song.lyrics.clear();
    }
}

/// The job's own init clip (`inputs/<tenant>/<clip>.wav`, stored for this job alone); a clip
/// shared by content hash (`inputs/<sha256>.wav`, older releases) is left alone.
pub fn own_input(spec: &JobSpec, tenant: &str) -> Option<String> {
    let key = &spec.init_audio.as_ref()?.key;
    key.starts_with(&format!("inputs/{tenant}/"))
        .then(|| key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_request_keeps_the_parameters_not_the_words() {
        let req = pb::SubmitGenerationRequest {
            prompt_kind: Some(pb::submit_generation_request::PromptKind::Prompt(
                "a secret song".into(),
            )),
            negative_prompt: "no drums".into(),
            lyrics: "[verse]\nsecret words".into(),
            seed: Some(7),
            steps: Some(9),
            ..Default::default()
        };
        let blank = pb::SubmitGenerationRequest::decode(
            blank_request(&req.encode_to_vec())
                .expect("blank")
                .as_slice(),
        )
        .expect("decode");
        assert_eq!(blank.prompt_kind, None);
        assert!(blank.negative_prompt.is_empty() && blank.lyrics.is_empty());
        assert_eq!((blank.seed, blank.steps), (Some(7), Some(9)));
    }
}
