//! Backfill batches in the store: a batch names a set of items, each item one batch-class job
//! whose id the caller derives from (batch, item). Adding items is insert-if-absent, so a
//! resubmitted manifest resumes and never duplicates; a batch is sealed once every item was
//! received, and finished once its results manifest is written (claimed by one coordinator).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tutti_shared::job::JobState;
use uuid::Uuid;

use super::OutputRow;
use crate::error::Result;
use crate::validate::NewJob;

/// A batch as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub manifest_uri: Option<String>,
    /// Every item was received.
    pub sealed: bool,
    pub cancelled: bool,
    /// The results manifest, once written.
    pub results_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Retention deleted its manifests (results, uploaded): no URL is handed out.
    pub manifests_cleared: bool,
}

/// Items of a batch by state, and when the first one started (for throughput).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchCounts {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub first_started: Option<DateTime<Utc>>,
    pub last_finished: Option<DateTime<Utc>>,
}

impl BatchCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.ended() + self.rejected
    }
    pub fn ended(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
    pub(super) fn add(&mut self, state: &str, n: i64) {
        let n = n.max(0) as u64;
        match state {
            "queued" => self.queued += n,
            "running" => self.running += n,
            "succeeded" => self.succeeded += n,
            "failed" => self.failed += n,
            "cancelled" => self.cancelled += n,
            _ => self.rejected += n,
        }
    }
}

/// One row of a submission: a job to add, or the rule it broke.
#[derive(Debug)]
pub struct NewItem {
    pub item_id: String,
    pub line: i64,
    pub job_id: Uuid,
    pub job: std::result::Result<NewJob, String>,
}

/// What adding a chunk of items did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AddOutcome {
    pub accepted: u64,
    pub existing: u64,
    /// Rows recorded as rejected now: (line, item, rule).
    pub rejected: Vec<(i64, String, String)>,
    /// Rows not recorded because the batch holds their item id with other fields.
    pub conflicts: Vec<(i64, String, String)>,
}

/// The state filter of ListBatchItems.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ItemFilter {
    Job(JobState),
    Rejected,
}

impl ItemFilter {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ItemFilter::Job(s) => s.as_str(),
            ItemFilter::Rejected => "rejected",
        }
    }
}

/// An item with its job's state and outputs (`state` is `rejected` when it has no job).
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub item_id: String,
    pub line: i64,
    pub job_id: Option<Uuid>,
    pub state: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub outputs: Vec<OutputRow>,
}

/// Paging cursor of items: (line, item id), ascending.
pub type ItemCursor = (i64, String);

/// Paging cursor of batches: (created at, id), descending.
pub type BatchCursor = (DateTime<Utc>, Uuid);

#[async_trait]
pub trait BatchStore: Send + Sync {
    /// The batch, created now when absent, and open for a submission (unsealed unless its
    /// results are written). FAILED_PRECONDITION once it is cancelled.
    async fn open_batch(
        &self,
        tenant: &str,
        id: Uuid,
        name: &str,
        manifest_uri: Option<&str>,
        webhook: Option<&crate::webhooks::Subscription>,
    ) -> Result<BatchRow>;
    /// Adds the items the batch does not hold yet, in one transaction: jobs (with their first
    /// task) for valid rows, a rejected item for the others. Items it holds already count as
    /// existing, or as conflicts when their request differs. New items reopen a batch whose
    /// results were written (they are written again once it ends).
    async fn add_items(&self, tenant: &str, batch: Uuid, items: &[NewItem]) -> Result<AddOutcome>;
    /// Every item was received: the batch finishes once they have all ended.
    async fn seal_batch(&self, tenant: &str, batch: Uuid) -> Result<()>;
    async fn get_batch(&self, tenant: &str, id: Uuid) -> Result<Option<(BatchRow, BatchCounts)>>;
    /// A page of the tenant's batches, newest first, after `after`.
    async fn list_batches(
        &self,
        tenant: &str,
        after: Option<BatchCursor>,
        limit: i64,
    ) -> Result<Vec<BatchRow>>;
    /// A page of items in line order after `after`.
    async fn list_items(
        &self,
        tenant: &str,
        batch: Uuid,
        filter: Option<ItemFilter>,
        after: Option<ItemCursor>,
        limit: i64,
    ) -> Result<Vec<ItemRow>>;
    /// Cancels the batch and every job of it that has not ended; `None` for an unknown batch,
    /// otherwise the jobs that were running (their workers should hear about it).
    async fn cancel_batch(&self, tenant: &str, batch: Uuid) -> Result<Option<Vec<Uuid>>>;
    /// Sealed batches without results whose items have all ended: (tenant, id).
    async fn batches_to_finish(&self) -> Result<Vec<(String, Uuid)>>;
    /// Takes the right to write the batch's results until `until`; false when results exist
    /// or another coordinator holds an unexpired claim.
    async fn claim_finish(&self, batch: Uuid, until: DateTime<Utc>) -> Result<bool>;
    /// Records the written results manifest (once: later calls change nothing).
    async fn set_results(&self, batch: Uuid, key: &str) -> Result<()>;
}

impl AddOutcome {
    /// Sorts an item the batch held already, given its stored (job request hash, rejection):
    /// the same request is a resubmission, a row rejected again is reported again, anything
    /// else reuses the item id for another request.
    pub(super) fn classify_held(
        &mut self,
        item: &NewItem,
        stored: Option<&(Option<String>, Option<String>)>,
    ) {
        match (&item.job, stored) {
            (Ok(new), Some((Some(hash), _))) if *hash == new.request_hash => self.existing += 1,
            (Err(rule), Some((None, _))) => {
                self.rejected
                    .push((item.line, item.item_id.clone(), rule.clone()))
            }
            (Err(rule), _) => self
                .conflicts
                .push((item.line, item.item_id.clone(), rule.clone())),
            _ => self.conflicts.push((
                item.line,
                item.item_id.clone(),
                "item_id: the batch holds this item with other fields".into(),
            )),
        }
    }
}

/// Upsert of one item row: new, or a row rejected before that is valid now (a fixed manifest
/// row replaces its rejection). Both dialects accept it as written.
pub(super) const UPSERT_ITEM_SQL: &str =
    "INSERT INTO batch_items (batch_id, item_id, line, error) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (batch_id, item_id) DO UPDATE SET line = excluded.line, error = NULL \
     WHERE batch_items.job_id IS NULL AND excluded.error IS NULL";

pub(super) fn min_opt(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
