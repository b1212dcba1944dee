//! Deletes the checkpoints of ended jobs. A checkpoint (`checkpoints/<job>/<chunk>`) exists
//! only so that a running job survives a worker's loss or a preemption; once the job has
//! succeeded, failed or been cancelled, nothing reads it again. Without this, every job would
//! leave one object per denoise chunk in the bucket for good.
//!
//! The job row says when its checkpoints are gone, so a coordinator that stops midway leaves the
//! rest to the next sweep (by this or another coordinator: deletes are idempotent). `grace`
//! leaves a straggler's late upload (a worker that lost its lease) a while to land first.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tutti_shared::blob::BlobStore;
use tutti_shared::job::checkpoint_key;

use crate::error::Result;
use crate::store::JobStore;

/// Jobs handled per store round trip.
const SWEEP: i64 = 256;

/// Sweeps every `every` until `shutdown` flips to true.
pub async fn clear_checkpoints(
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
    grace: Duration,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => continue,
        }
        match sweep(store.as_ref(), blobs.as_ref(), grace).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(jobs = n, "checkpoints of ended jobs deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "deleting checkpoints of ended jobs failed; retried on the next sweep")
            }
        }
    }
}

/// Deletes the checkpoints of every ended job past `grace`; returns how many jobs it cleared.
pub async fn sweep(store: &dyn JobStore, blobs: &dyn BlobStore, grace: Duration) -> Result<usize> {
    let mut cleared = 0;
    loop {
        let due = store.checkpoints_to_clear(grace, SWEEP).await?;
        if due.is_empty() {
            return Ok(cleared);
        }
        let keys: Vec<String> = due
            .iter()
            .flat_map(|(job, chunks)| (0..*chunks).map(|c| checkpoint_key(*job, c)))
            .collect();
        blobs.delete(&keys).await?;
        let jobs: Vec<uuid::Uuid> = due.iter().map(|(job, _)| *job).collect();
        store.checkpoints_cleared(&jobs).await?;
        cleared += jobs.len();
    }
}
