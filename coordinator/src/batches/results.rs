//! The results manifest: once every item of a sealed batch has ended, one coordinator claims
//! the batch, writes `batches/<tenant>/<batch>/results.jsonl` (one line per item, in line
//! order) and records it. The claim expires, so a coordinator that dies while writing leaves
//! the batch to the next one; the content is derived from committed state, so a rewrite after
//! such a death writes the same bytes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tutti_shared::blob::BlobStore;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::batches::{ItemCursor, ItemRow};
use crate::store::JobStore;

const PAGE: i64 = 1000;
/// How long a claim to write results holds before another coordinator may take over.
const CLAIM: Duration = Duration::from_secs(60);

pub fn results_key(tenant: &str, batch: Uuid) -> String {
    format!("batches/{tenant}/{batch}/results.jsonl")
}

fn result_line(blobs: &dyn BlobStore, item: &ItemRow) -> serde_json::Value {
    let mut v = json!({
        "item_id": item.item_id,
        "line": item.line,
        "state": item.state,
    });
    if let Some(job) = item.job_id {
        v["job_id"] = json!(job.to_string());
    }
    if !item.outputs.is_empty() {
        v["outputs"] = item
            .outputs
            .iter()
            .map(|o| {
                json!({
                    "uri": blobs.uri(&o.key),
                    "sha256": o.sha256,
                    "duration_seconds": o.duration_s,
                    "size_bytes": o.size_bytes,
                })
            })
            .collect();
    }
    if let Some(code) = &item.error_code {
        v["error"] = json!({
            "code": code,
            "message": item.error_message.clone().unwrap_or_default(),
        });
    }
    v
}

/// Writes one batch's results manifest if this coordinator wins the claim.
pub(crate) async fn finish_one(
    store: &dyn JobStore,
    blobs: &dyn BlobStore,
    tenant: &str,
    batch: Uuid,
) -> Result<bool> {
    let until = chrono::Utc::now()
        + chrono::Duration::from_std(CLAIM).map_err(|e| Error::Internal(e.to_string()))?;
    if !store.batches().claim_finish(batch, until).await? {
        return Ok(false);
    }
    let mut body = Vec::new();
    let mut after: Option<ItemCursor> = None;
    loop {
        let page = store
            .batches()
            .list_items(tenant, batch, None, after.clone(), PAGE)
            .await?;
        for item in &page {
            serde_json::to_writer(&mut body, &result_line(blobs, item))
                .map_err(|e| Error::Internal(format!("encoding results: {e}")))?;
            body.push(b'\n');
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => {
                after = Some((last.line, last.item_id.clone()))
            }
            _ => break,
        }
    }
    let key = results_key(tenant, batch);
    blobs.put(&key, body.into(), "application/x-ndjson").await?;
    store.batches().set_results(batch, &key).await?;
    tracing::info!(batch = %batch, key = %key, "batch finished: results written");
    Ok(true)
}

/// Writes the results of every batch that has ended, checking once a second, until
/// `shutdown` flips to true.
pub async fn finish_batches(
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => continue,
        }
        let due = match store.batches().batches_to_finish().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "batches: checking for finished batches failed");
                continue;
            }
        };
        for (tenant, batch) in due {
            if let Err(e) = finish_one(store.as_ref(), blobs.as_ref(), &tenant, batch).await {
                tracing::warn!(batch = %batch, error = %e, "batches: writing results failed; retried once the claim expires");
            }
        }
    }
}
