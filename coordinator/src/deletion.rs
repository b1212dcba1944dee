//! `DeleteJob`: a job's outputs and inputs leave the blob store and its prompt leaves the
//! database; the job row (marked deleted) and its usage record stay, so bills still add up.
//! A job that has not ended is cancelled first, in the same transaction. Deleting again is a
//! no-op that deletes the same objects again (a blob store that failed midway is retried by
//! calling again).

use tutti_proto::v1 as pb;
use uuid::Uuid;

use crate::api::GenerationService;
use crate::auth::Caller;
use crate::error::{Error, Result};

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
