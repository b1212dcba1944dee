//! Deletes the checkpoints of ended jobs, and outputs and init clips past their tenant's
//! retention. A checkpoint (`checkpoints/<job>/<chunk>`) exists
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
use crate::store::{JobStore, Scope};

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
        match expire_inputs(store.as_ref(), blobs.as_ref(), chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "init clips past their retention deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "deleting expired init clips failed; retried on the next sweep")
            }
        }
        match expire_manifests(store.as_ref(), blobs.as_ref(), chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(batches = n, "batch manifests past their retention deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "deleting expired batch manifests failed; retried on the next sweep")
            }
        }
        match expire_outputs(store.as_ref(), blobs.as_ref(), chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(outputs = n, "outputs past their retention deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "deleting expired outputs failed; retried on the next sweep")
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

/// Deletes the objects of outputs whose tenant's retention ran out by `now`, then marks them
/// deleted (GetJob hands out no URL for an expired output even before this runs); returns how
/// many it deleted.
pub async fn expire_outputs(
    store: &dyn JobStore,
    blobs: &dyn BlobStore,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize> {
    let mut expired = 0;
    loop {
        let due = store.outputs_to_expire(now, SWEEP).await?;
        if due.is_empty() {
            return Ok(expired);
        }
        let keys: Vec<String> = due.iter().map(|(_, _, key)| key.clone()).collect();
        blobs.delete(&keys).await?;
        let done: Vec<(uuid::Uuid, i32)> = due.iter().map(|(job, idx, _)| (*job, *idx)).collect();
        store.outputs_expired(&done).await?;
        expired += done.len();
    }
}

/// Deletes the own init clips of ended jobs past their tenant's input retention by `now`, then
/// marks them (a retry of such a job is refused); returns how many jobs it cleared.
pub async fn expire_inputs(
    store: &dyn JobStore,
    blobs: &dyn BlobStore,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize> {
    let mut cleared = 0;
    loop {
        let due = store.inputs_to_expire(now, SWEEP).await?;
        if due.is_empty() {
            return Ok(cleared);
        }
        let keys: Vec<String> = due.iter().map(|(_, key)| key.clone()).collect();
        blobs.delete(&keys).await?;
        let jobs: Vec<uuid::Uuid> = due.iter().map(|(job, _)| *job).collect();
        store.inputs_expired(&jobs).await?;
        cleared += jobs.len();
    }
}

/// Deletes the manifests of batches past their tenant's manifest retention by `now`: the
/// results manifest, and the manifest the batch was submitted from when the studio uploaded it
/// (`uploads/<tenant>/`; a manifest the tenant or an admin put elsewhere is theirs). Marks the
/// batches (GetBatch then hands out no results URL); returns how many it cleared.
pub async fn expire_manifests(
    store: &dyn JobStore,
    blobs: &dyn BlobStore,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize> {
    let farm = blobs.uri("");
    let mut cleared = 0;
    loop {
        let due = store.manifests_to_expire(now, SWEEP).await?;
        if due.is_empty() {
            return Ok(cleared);
        }
        let mut keys = Vec::new();
        for (_, tenant, results, manifest) in &due {
            keys.extend(results.clone());
            let uploaded = manifest
                .as_deref()
                .and_then(|uri| uri.strip_prefix(farm.as_str()))
                .filter(|key| key.starts_with(&format!("uploads/{tenant}/")));
            keys.extend(uploaded.map(str::to_string));
        }
        blobs.delete(&keys).await?;
        let batches: Vec<uuid::Uuid> = due.iter().map(|(b, ..)| *b).collect();
        store.manifests_expired(&batches).await?;
        cleared += batches.len();
    }
}

/// How often checkpoints of unknown jobs are looked for (a list of the prefix each time).
pub const UNKNOWN_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Checkpoint keys read per sweep of unknown jobs' objects.
const LISTED: usize = 10_000;

/// Every `every` until `shutdown` flips: deletes the checkpoints of jobs the store does not
/// know (see `sweep_unknown`).
pub async fn clear_unknown_jobs(
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match sweep_unknown(store.as_ref(), blobs.as_ref()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(objects = n, "checkpoints of unknown jobs deleted"),
            Err(e) => tracing::warn!(error = %e, "sweeping checkpoints of unknown jobs failed"),
        }
    }
}

/// Deletes `checkpoints/<job>/...` objects whose job the store does not know: what a task the
/// farm never accepted (a forged or foreign message) left before its result was refused. A
/// job's row exists before any of its checkpoints, so a known job is never touched. Returns
/// how many objects it deleted.
pub async fn sweep_unknown(store: &dyn JobStore, blobs: &dyn BlobStore) -> Result<usize> {
    let keys = blobs.list("checkpoints/", LISTED).await?;
    let mut doomed = Vec::new();
    let mut known: Option<(uuid::Uuid, bool)> = None;
    for key in keys {
        let job = key
            .split('/')
            .nth(1)
            .and_then(|j| j.parse::<uuid::Uuid>().ok());
        let keep = match job {
            // Not a job's key at all: nothing of the farm's wrote it.
            None => false,
            // Keys come in order, so one lookup per job.
            Some(id) => match known {
                Some((k, keep)) if k == id => keep,
                _ => {
                    let keep = store.get_job(Scope::All, id).await?.is_some();
                    known = Some((id, keep));
                    keep
                }
            },
        };
        if !keep {
            doomed.push(key);
        }
    }
    blobs.delete(&doomed).await?;
    Ok(doomed.len())
}
