//! What the Batches service reads back: a batch with its counts, throughput, ETA and results
//! link; pages of the tenant's batches and of a batch's items.

use chrono::{DateTime, Utc};
use tutti_proto::v1 as pb;
use tutti_shared::blob::BlobStore;
use tutti_shared::job::JobState;
use uuid::Uuid;

use super::api::BatchesService;
use crate::api::{output_pb, ts};
use crate::error::{Error, Result};
use crate::store::batches::{BatchCounts, BatchCursor, BatchRow, ItemFilter, ItemRow};

/// ListBatches pages: 20 by default, at most 100.
const DEFAULT_BATCH_PAGE: u32 = 20;
const MAX_BATCH_PAGE: u32 = 100;

pub(super) fn batch_to_pb(
    b: &BatchRow,
    c: &BatchCounts,
    blobs: &dyn BlobStore,
    now: DateTime<Utc>,
) -> pb::Batch {
    let state = match (b.cancelled, b.sealed, &b.results_key) {
        (true, _, _) => pb::BatchState::Cancelled,
        (false, _, Some(_)) => pb::BatchState::Completed,
        (false, false, None) => pb::BatchState::Open,
        (false, true, None) => pb::BatchState::Running,
    };
    // Throughput: items ended per second since the first one started (until the last ended,
    // once the batch is done).
    let end = if b.results_key.is_some() {
        c.last_finished.unwrap_or(now)
    } else {
        now
    };
    let rate = match c.first_started {
        Some(start) if end > start && c.ended() > 0 => {
            c.ended() as f64 / ((end - start).num_milliseconds().max(1) as f64 / 1000.0)
        }
        _ => 0.0,
    };
    let remaining = c.queued + c.running;
    let eta_seconds = match (remaining, rate > 0.0) {
        (0, _) => Some(0),
        (n, true) => Some((n as f64 / rate).ceil() as u64),
        (_, false) => None,
    };
    pb::Batch {
        id: b.id.to_string(),
        name: b.name.clone(),
        manifest_uri: b.manifest_uri.clone().unwrap_or_default(),
        state: state as i32,
        total: c.total(),
        queued: c.queued,
        running: c.running,
        succeeded: c.succeeded,
        failed: c.failed,
        cancelled: c.cancelled,
        rejected: c.rejected,
        items_per_second: rate,
        eta_seconds,
        results_uri: b
            .results_key
            .as_deref()
            .map(|k| blobs.uri(k))
            .unwrap_or_default(),
        created_at: Some(ts(b.created_at)),
        finished_at: b.finished_at.map(ts),
        results_url: String::new(),
        results_url_expires_at: None,
    }
}

fn item_state_pb(state: &str) -> pb::BatchItemState {
    match state.parse::<JobState>() {
        Ok(JobState::Queued) => pb::BatchItemState::Queued,
        Ok(JobState::Running) => pb::BatchItemState::Running,
        Ok(JobState::Succeeded) => pb::BatchItemState::Succeeded,
        Ok(JobState::Failed) => pb::BatchItemState::Failed,
        Ok(JobState::Cancelled) => pb::BatchItemState::Cancelled,
        Err(_) => pb::BatchItemState::Rejected,
    }
}

fn item_to_pb(item: ItemRow, blobs: &dyn BlobStore) -> pb::BatchItemStatus {
    pb::BatchItemStatus {
        state: item_state_pb(&item.state) as i32,
        job_id: item.job_id.map(|j| j.to_string()).unwrap_or_default(),
        error: item.error_code.map(|code| pb::JobError {
            code,
            message: item.error_message.unwrap_or_default(),
        }),
        outputs: item
            .outputs
            .iter()
            .map(|o| output_pb(o, blobs.uri(&o.key)))
            .collect(),
        item_id: item.item_id,
        line: item.line.max(0) as u64,
    }
}

fn page_size(requested: u32, default: u32, most: u32) -> Result<i64> {
    match requested {
        0 => Ok(i64::from(default)),
        n if n > most => Err(Error::invalid(
            "page_size",
            format!("must be at most {most}"),
        )),
        n => Ok(i64::from(n)),
    }
}

fn batch_token(b: &BatchRow) -> String {
    crate::page_token::encode(b.created_at, b.id)
}

fn decode_batch_token(t: &str) -> Result<BatchCursor> {
    crate::page_token::decode(t, "ListBatches")
}

impl BatchesService {
    /// The API view of a stored batch, with a fresh presigned URL of its results manifest.
    async fn view(&self, batch: &BatchRow, counts: &BatchCounts) -> Result<pb::Batch> {
        let generation = &self.generation;
        let mut out = batch_to_pb(batch, counts, &*generation.blobs, Utc::now());
        // No URL to a manifest retention deleted.
        if let Some(key) = batch
            .results_key
            .as_deref()
            .filter(|_| !batch.manifests_cleared)
        {
            let signed = generation
                .blobs
                .presign_get(key, generation.url_ttl)
                .await?;
            out.results_url = signed.url;
            out.results_url_expires_at = Some(ts(signed.expires_at.into()));
        }
        Ok(out)
    }

    pub(super) async fn batch_pb(&self, tenant: &str, id: Uuid) -> Result<pb::Batch> {
        let (batch, counts) = self
            .generation
            .store
            .batches()
            .get_batch(tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {id} not found")))?;
        self.view(&batch, &counts).await
    }

    pub(super) async fn list_batches(
        &self,
        tenant: &str,
        req: pb::ListBatchesRequest,
    ) -> Result<pb::ListBatchesResponse> {
        let limit = page_size(req.page_size, DEFAULT_BATCH_PAGE, MAX_BATCH_PAGE)?;
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(decode_batch_token(t)?),
        };
        let store = self.generation.store.batches();
        let rows = store.list_batches(tenant, after, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let next_page_token = match (more, rows.get(limit as usize - 1)) {
            (true, Some(last)) => batch_token(last),
            _ => String::new(),
        };
        let mut batches = Vec::with_capacity(rows.len());
        for row in rows.into_iter().take(limit as usize) {
            // The counts of a page of batches: one grouped count each (a page holds at most 100).
            if let Some((batch, counts)) = store.get_batch(tenant, row.id).await? {
                batches.push(self.view(&batch, &counts).await?);
            }
        }
        Ok(pb::ListBatchesResponse {
            batches,
            next_page_token,
        })
    }

    pub(super) async fn list_items(
        &self,
        tenant: &str,
        req: pb::ListBatchItemsRequest,
    ) -> Result<pb::ListBatchItemsResponse> {
        let id = super::api::parse_batch_id(&req.id)?;
        let limit = page_size(req.page_size, 100, 1000)?;
        let filter = match pb::BatchItemState::try_from(req.state) {
            Ok(pb::BatchItemState::Unspecified) => None,
            Ok(pb::BatchItemState::Queued) => Some(ItemFilter::Job(JobState::Queued)),
            Ok(pb::BatchItemState::Running) => Some(ItemFilter::Job(JobState::Running)),
            Ok(pb::BatchItemState::Succeeded) => Some(ItemFilter::Job(JobState::Succeeded)),
            Ok(pb::BatchItemState::Failed) => Some(ItemFilter::Job(JobState::Failed)),
            Ok(pb::BatchItemState::Cancelled) => Some(ItemFilter::Job(JobState::Cancelled)),
            Ok(pb::BatchItemState::Rejected) => Some(ItemFilter::Rejected),
            Err(_) => return Err(Error::invalid("state", "unknown item state")),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => {
                let bad = || {
                    Error::invalid(
                        "page_token",
                        "must be a token from a previous ListBatchItems response",
                    )
                };
                let (line, item) = t.split_once('_').ok_or_else(bad)?;
                crate::text::check("page_token", item, crate::text::TextRule::line(256))
                    .map_err(|_| bad())?;
                Some((line.parse::<i64>().map_err(|_| bad())?, item.to_string()))
            }
        };
        let store = &self.generation.store;
        if store.batches().get_batch(tenant, id).await?.is_none() {
            return Err(Error::NotFound(format!("batch {id} not found")));
        }
        let rows = store
            .batches()
            .list_items(tenant, id, filter, after, limit + 1)
            .await?;
        let more = rows.len() as i64 > limit;
        let next_page_token = match (more, rows.get(limit as usize - 1)) {
            (true, Some(last)) => format!("{}_{}", last.line, last.item_id),
            _ => String::new(),
        };
        let blobs = &*self.generation.blobs;
        Ok(pb::ListBatchItemsResponse {
            items: rows
                .into_iter()
                .take(limit as usize)
                .map(|r| item_to_pb(r, blobs))
                .collect(),
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tokens_round_trip_and_bad_ones_name_the_field() {
        let row = BatchRow {
            id: Uuid::new_v4(),
            tenant: "t".into(),
            name: "n".into(),
            manifest_uri: None,
            sealed: true,
            cancelled: false,
            results_key: None,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default(),
            finished_at: None,
            manifests_cleared: false,
        };
        assert_eq!(
            decode_batch_token(&batch_token(&row)).ok(),
            Some((row.created_at, row.id))
        );
        let e = decode_batch_token("nonsense").map(|_| ()).unwrap_err();
        assert!(e.to_string().starts_with("page_token: "), "{e}");
        assert!(page_size(101, 20, 100).is_err());
        assert_eq!(page_size(0, 20, 100).ok(), Some(20));
    }
}
