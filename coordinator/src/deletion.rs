//! `DeleteJob`: a job's outputs and inputs leave the blob store and its prompt leaves the
//! database; the job row (marked deleted) and its usage record stay, so bills still add up.
//! A job that has not ended is cancelled first, in the same transaction. Deleting again is a
//! no-op that deletes the same objects again (a blob store that failed midway is retried by
//! calling again).

use prost::Message;
use tutti_proto::v1 as pb;
use tutti_shared::job::JobSpec;
use uuid::Uuid;

use crate::api::GenerationService;
use crate::auth::Caller;
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
/// prompt, init audio.
pub fn blank_request(stored: &[u8]) -> Result<Vec<u8>> {
    let mut req = pb::SubmitGenerationRequest::decode(stored)
        .map_err(|e| Error::Internal(format!("stored request: {e}")))?;
    req.prompt_kind = None;
    req.negative_prompt.clear();
    req.init_audio.clear();
    Ok(req.encode_to_vec())
}

/// The spec without the prompt text the model read. The init clip's key stays (a delete
/// retried finds the object to delete again).
pub fn blank_spec(spec: &mut JobSpec) {
    spec.prompt.clear();
    spec.negative_prompt.clear();
}

/// The job's own init clip (`inputs/<tenant>/<clip>.wav`, stored for this job alone); a clip
/// shared by content hash (`inputs/<sha256>.wav`, older releases) is left alone.
pub fn own_input(spec: &JobSpec, tenant: &str) -> Option<String> {
    let key = &spec.init_audio.as_ref()?.key;
    key.starts_with(&format!("inputs/{tenant}/"))
        .then(|| key.clone())
}

impl GenerationService {
    /// Deletes a job in the caller's scope; NOT_FOUND for another tenant's.
    pub(crate) async fn delete(&self, caller: &Caller, id: Uuid) -> Result<pb::Job> {
        let (record, deleted) = self
            .store
            .delete_job(caller.scope(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        if deleted.cancelled {
            if let Err(e) = self
                .queue
                .broadcast(&tutti_shared::messages::ControlMessage::Cancel { job_id: id })
                .await
            {
                tracing::warn!(job_id = %id, error = %e, "cancel broadcast failed; the job stops at its chunk boundary");
            }
        }
        // After the commit: no URL is handed out from now on, and a failure here leaves the
        // keys for the next DeleteJob of the same job.
        self.blobs.delete(&deleted.keys).await?;
        tracing::info!(job_id = %id, objects = deleted.keys.len(), newly = deleted.newly, "job deleted");
        self.to_pb(&record).await
    }
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
        assert!(blank.negative_prompt.is_empty());
        assert_eq!((blank.seed, blank.steps), (Some(7), Some(9)));
    }
}
