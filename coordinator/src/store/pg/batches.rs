//! Backfill batches in Postgres (see `batches.rs`). Items are added insert-if-absent, a chunk
//! per transaction; a resubmission finds its items by the (batch, item) key.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tutti_shared::job::chunk_ranges;
use uuid::Uuid;

use super::rows::{notify, notify_job, TASKS_CHANNEL};
use super::PgStore;
use crate::error::{Error, Result};
use crate::lifecycle::events::JobEvent;
use crate::store::batches::{
    min_opt, AddOutcome, BatchCounts, BatchCursor, BatchRow, BatchStore, ItemCursor, ItemFilter,
    ItemRow, NewItem,
};
use crate::store::webhooks::ENQUEUE_BATCH;
use crate::store::OutputRow;
use crate::webhooks::{Subscription, WebhookEvent};

const BATCH_COLUMNS: &str = "id, tenant, name, manifest_uri, sealed, cancelled, results_key, \
                             created_at, finished_at, manifests_cleared_at IS NOT NULL";

type BatchTuple = (
    Uuid,
    String,
    String,
    Option<String>,
    bool,
    bool,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    bool,
);

fn batch_row(t: BatchTuple) -> BatchRow {
    BatchRow {
        id: t.0,
        tenant: t.1,
        name: t.2,
        manifest_uri: t.3,
        sealed: t.4,
        cancelled: t.5,
        results_key: t.6,
        created_at: t.7,
        finished_at: t.8,
        manifests_cleared: t.9,
    }
}

async fn fetch_batch(pool: &PgPool, tenant: &str, id: Uuid) -> Result<Option<BatchRow>> {
    let row: Option<BatchTuple> = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND tenant = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(batch_row))
}

/// The new jobs of a chunk, column by column, for `UNNEST` inserts.
#[derive(Default)]
struct JobColumns {
    ids: Vec<Uuid>,
    items: Vec<String>,
    priorities: Vec<i16>,
    specs: Vec<String>,
    requests: Vec<Vec<u8>>,
    hashes: Vec<String>,
    labels: Vec<String>,
    steps: Vec<i32>,
    chunk_steps: Vec<i32>,
    api_keys: Vec<Option<String>>,
    from_steps: Vec<i32>,
    to_steps: Vec<i32>,
}

impl JobColumns {
    fn push(&mut self, item: &NewItem, new: &crate::validate::NewJob) -> Result<()> {
        let json = |v: serde_json::Result<String>| {
            v.map_err(|e| Error::Internal(format!("encoding a job: {e}")))
        };
        let (from, to) = chunk_ranges(new.spec.steps, new.chunk_steps)[0];
        self.ids.push(item.job_id);
        self.items.push(item.item_id.clone());
        self.priorities.push(new.priority.rank());
        self.specs.push(json(serde_json::to_string(&new.spec))?);
        self.requests
            .push(prost::Message::encode_to_vec(&new.accepted));
        self.hashes.push(new.request_hash.clone());
        self.labels.push(json(serde_json::to_string(&new.labels))?);
        self.steps.push(new.spec.steps as i32);
        self.chunk_steps.push(new.chunk_steps as i32);
        self.api_keys.push(new.api_key.clone());
        self.from_steps.push(from as i32);
        self.to_steps.push(to as i32);
        Ok(())
    }

    /// The jobs, their items' links, first tasks and `queued` events: four statements.
    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        tenant: &str,
        batch: Uuid,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (id, tenant, state, stage, priority, spec, request, request_hash, \
                               labels, steps_total, chunk_steps, api_key_id) \
             SELECT id, $2, 'queued', 'queued', priority, spec::jsonb, request, hash, \
                    labels::jsonb, steps, chunk_steps, api_key \
             FROM UNNEST($1::uuid[], $3::smallint[], $4::text[], $5::bytea[], $6::text[], \
                         $7::text[], $8::int[], $9::int[], $10::text[]) \
                  AS j(id, priority, spec, request, hash, labels, steps, chunk_steps, api_key)",
        )
        .bind(&self.ids)
        .bind(tenant)
        .bind(&self.priorities)
        .bind(&self.specs)
        .bind(&self.requests)
        .bind(&self.hashes)
        .bind(&self.labels)
        .bind(&self.steps)
        .bind(&self.chunk_steps)
        .bind(&self.api_keys)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE batch_items SET job_id = u.job \
             FROM UNNEST($2::text[], $3::uuid[]) AS u(item, job) \
             WHERE batch_id = $1 AND item_id = u.item",
        )
        .bind(batch)
        .bind(&self.items)
        .bind(&self.ids)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            // The jobs were inserted by this transaction, so their created_at is its now().
            "INSERT INTO tasks (job_id, chunk, kind, from_step, to_step, state, priority, \
                                tenant, job_created_at) \
             SELECT job, 0, 'denoise', f, t, 'pending', p, $5, now() \
             FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::smallint[]) AS u(job, f, t, p)",
        )
        .bind(&self.ids)
        .bind(&self.from_steps)
        .bind(&self.to_steps)
        .bind(&self.priorities)
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
        let queued = JobEvent::Queued { batch: Some(batch) };
        sqlx::query(
            "INSERT INTO job_events (job_id, kind, detail) \
             SELECT job, $2, $3 FROM UNNEST($1::uuid[]) AS job",
        )
        .bind(&self.ids)
        .bind(queued.kind().as_str())
        .bind(queued.detail())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl BatchStore for PgStore {
    async fn open_batch(
        &self,
        tenant: &str,
        id: Uuid,
        name: &str,
        manifest_uri: Option<&str>,
        webhook: Option<&Subscription>,
    ) -> Result<BatchRow> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO batches (id, tenant, name, manifest_uri) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(tenant)
        .bind(name)
        .bind(manifest_uri)
        .execute(&mut *tx)
        .await?;
        // A new submission: the batch is open until it ends.
        sqlx::query(
            "UPDATE batches SET sealed = false \
             WHERE id = $1 AND tenant = $2 AND NOT cancelled AND results_key IS NULL",
        )
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        if let Some(hook) = webhook {
            sqlx::query(
                "INSERT INTO batch_webhooks (batch_id, url, events) \
                 SELECT id, $2, $3 FROM batches WHERE id = $1 AND tenant = $4 \
                 ON CONFLICT (batch_id) DO UPDATE SET url = EXCLUDED.url, events = EXCLUDED.events",
            )
            .bind(id)
            .bind(&hook.url)
            .bind(&hook.events)
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let batch = fetch_batch(self.pool(), tenant, id)
            .await?
            .ok_or_else(|| Error::Internal(format!("batch {id} vanished")))?;
        if batch.cancelled {
            return Err(Error::FailedPrecondition(format!(
                "batch {id} was cancelled: it takes no more items"
            )));
        }
        Ok(batch)
    }

    async fn add_items(&self, tenant: &str, batch: Uuid, items: &[NewItem]) -> Result<AddOutcome> {
        let mut out = AddOutcome::default();
        let mut tx = self.pool().begin().await?;
        // Lock the batch row: a concurrent cancel waits for this chunk, and a chunk arriving
        // after a cancel adds nothing.
        let cancelled: Option<bool> = sqlx::query_scalar(
            "SELECT cancelled FROM batches WHERE id = $1 AND tenant = $2 FOR UPDATE",
        )
        .bind(batch)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        match cancelled {
            None => return Err(Error::NotFound(format!("batch {batch} not found"))),
            Some(true) => {
                return Err(Error::FailedPrecondition(format!(
                    "batch {batch} was cancelled: it takes no more items"
                )))
            }
            Some(false) => {}
        }
        // One statement per table for the whole chunk. An item id twice in one chunk is
        // classified against the first, after it is stored.
        let mut seen = HashSet::new();
        let (fresh, mut held): (Vec<&NewItem>, Vec<&NewItem>) =
            items.iter().partition(|i| seen.insert(i.item_id.as_str()));
        let upserted: Vec<(String,)> = sqlx::query_as(
            "INSERT INTO batch_items (batch_id, item_id, line, error) \
             SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::text[]) \
             ON CONFLICT (batch_id, item_id) DO UPDATE SET line = excluded.line, error = NULL \
             WHERE batch_items.job_id IS NULL AND excluded.error IS NULL \
             RETURNING item_id",
        )
        .bind(batch)
        .bind(fresh.iter().map(|i| i.item_id.as_str()).collect::<Vec<_>>())
        .bind(fresh.iter().map(|i| i.line).collect::<Vec<_>>())
        .bind(
            fresh
                .iter()
                .map(|i| i.job.as_ref().err().map(String::as_str))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let upserted: HashSet<String> = upserted.into_iter().map(|r| r.0).collect();
        let mut jobs = JobColumns::default();
        for item in fresh {
            if !upserted.contains(&item.item_id) {
                held.push(item);
                continue;
            }
            match &item.job {
                Err(rule) => out
                    .rejected
                    .push((item.line, item.item_id.clone(), rule.clone())),
                Ok(new) => jobs.push(item, new)?,
            }
        }
        out.accepted = jobs.ids.len() as u64;
        if !jobs.ids.is_empty() {
            jobs.insert(&mut tx, tenant, batch).await?;
        }
        if !held.is_empty() {
            // Items the batch held already: the same request is a resubmission, another one is
            // a conflicting reuse of the item id.
            let ids: Vec<&str> = held.iter().map(|i| i.item_id.as_str()).collect();
            let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT bi.item_id, j.request_hash, bi.error FROM batch_items bi \
                 LEFT JOIN jobs j ON j.id = bi.job_id \
                 WHERE bi.batch_id = $1 AND bi.item_id = ANY($2)",
            )
            .bind(batch)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            let stored: HashMap<String, (Option<String>, Option<String>)> =
                rows.into_iter().map(|(i, h, e)| (i, (h, e))).collect();
            for item in held {
                out.classify_held(item, stored.get(&item.item_id));
            }
        }
        if out.accepted > 0 {
            // New items reopen a batch that had ended: its results are written again.
            sqlx::query(
                "UPDATE batches SET sealed = false, results_key = NULL, finished_at = NULL \
                 WHERE id = $1",
            )
            .bind(batch)
            .execute(&mut *tx)
            .await?;
            notify(&mut tx, TASKS_CHANNEL, "").await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn seal_batch(&self, tenant: &str, batch: Uuid) -> Result<()> {
        sqlx::query("UPDATE batches SET sealed = true WHERE id = $1 AND tenant = $2")
            .bind(batch)
            .bind(tenant)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn get_batch(&self, tenant: &str, id: Uuid) -> Result<Option<(BatchRow, BatchCounts)>> {
        let Some(batch) = fetch_batch(self.pool(), tenant, id).await? else {
            return Ok(None);
        };
        let rows: Vec<(
            Option<String>,
            i64,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(
            "SELECT j.state, count(*), min(j.started_at), max(j.finished_at) \
                 FROM batch_items bi LEFT JOIN jobs j ON j.id = bi.job_id \
                 WHERE bi.batch_id = $1 GROUP BY j.state",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let mut counts = BatchCounts::default();
        for (state, n, started, finished) in rows {
            counts.add(state.as_deref().unwrap_or("rejected"), n);
            counts.first_started = min_opt(counts.first_started, started);
            counts.last_finished = counts.last_finished.max(finished);
        }
        Ok(Some((batch, counts)))
    }

    async fn list_batches(
        &self,
        tenant: &str,
        after: Option<BatchCursor>,
        limit: i64,
    ) -> Result<Vec<BatchRow>> {
        let (after_at, after_id) = after.unzip();
        let rows: Vec<BatchTuple> = sqlx::query_as(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE tenant = $1 \
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(tenant)
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(batch_row).collect())
    }

    async fn list_items(
        &self,
        tenant: &str,
        batch: Uuid,
        filter: Option<ItemFilter>,
        after: Option<ItemCursor>,
        limit: i64,
    ) -> Result<Vec<ItemRow>> {
        let (after_line, after_item) = after.unzip();
        type Row = (
            String,
            i64,
            Option<Uuid>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT bi.item_id, bi.line, bi.job_id, j.state, bi.error, j.error_code, j.error_message \
             FROM batch_items bi JOIN batches b ON b.id = bi.batch_id \
             LEFT JOIN jobs j ON j.id = bi.job_id \
             WHERE bi.batch_id = $1 AND b.tenant = $2 \
               AND ($3::text IS NULL OR COALESCE(j.state, 'rejected') = $3) \
               AND ($4::bigint IS NULL OR (bi.line, bi.item_id) > ($4, $5)) \
             ORDER BY bi.line, bi.item_id LIMIT $6",
        )
        .bind(batch)
        .bind(tenant)
        .bind(filter.map(ItemFilter::as_str))
        .bind(after_line)
        .bind(after_item)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let jobs: Vec<Uuid> = rows.iter().filter_map(|r| r.2).collect();
        // One row type per output: (job, idx, key, sha256, bytes, seconds, rate, format, channels,
        // loudness, true peak).
        type OutputCols = (
            Uuid,
            i32,
            String,
            String,
            i64,
            f32,
            i32,
            String,
            i32,
            Option<f32>,
            Option<f32>,
            Option<DateTime<Utc>>,
            bool,
        );
        let outputs: Vec<OutputCols> = sqlx::query_as(
            "SELECT job_id, idx, key, sha256, size_bytes, duration_s, sample_rate, format, channels, \
                    loudness_lufs, true_peak_dbtp, expires_at, (deleted_at IS NOT NULL) \
             FROM outputs WHERE job_id = ANY($1) ORDER BY job_id, idx",
        )
        .bind(&jobs)
        .fetch_all(self.pool())
        .await?;
        let mut by_job: HashMap<Uuid, Vec<OutputRow>> = HashMap::new();
        for (
            job,
            idx,
            key,
            sha256,
            size_bytes,
            duration_s,
            sample_rate,
            format,
            ch,
            lufs,
            tp,
            expires_at,
            deleted,
        ) in outputs
        {
            by_job.entry(job).or_default().push(OutputRow {
                idx,
                key,
                sha256,
                size_bytes,
                duration_s,
                sample_rate,
                format,
                channels: ch,
                loudness_lufs: lufs,
                true_peak_dbtp: tp,
                expires_at,
                deleted,
            });
        }
        Ok(rows
            .into_iter()
            .map(|(item_id, line, job_id, state, rejected, code, message)| {
                let rejected_row = job_id.is_none();
                ItemRow {
                    item_id,
                    line,
                    job_id,
                    state: state.unwrap_or_else(|| "rejected".into()),
                    error_code: if rejected_row {
                        Some("INVALID_ARGUMENT".into())
                    } else {
                        code
                    },
                    error_message: if rejected_row { rejected } else { message },
                    outputs: job_id.and_then(|j| by_job.remove(&j)).unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn cancel_batch(&self, tenant: &str, batch: Uuid) -> Result<Option<Vec<Uuid>>> {
        // It locks the batch's active jobs while workers and the dispatcher update some of the
        // same rows: Postgres may abort it to break a deadlock, and then it runs again.
        super::transaction_retried(|| cancel_batch_once(self.pool(), tenant, batch)).await
    }

    async fn batches_to_finish(&self) -> Result<Vec<(String, Uuid)>> {
        Ok(sqlx::query_as(
            "SELECT b.tenant, b.id FROM batches b WHERE b.sealed AND b.results_key IS NULL \
               AND NOT EXISTS (SELECT 1 FROM batch_items bi JOIN jobs j ON j.id = bi.job_id \
                               WHERE bi.batch_id = b.id AND j.state IN ('queued', 'running'))",
        )
        .fetch_all(self.pool())
        .await?)
    }

    async fn claim_finish(&self, batch: Uuid, until: DateTime<Utc>) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE batches SET finishing_until = $2 WHERE id = $1 AND results_key IS NULL \
               AND (finishing_until IS NULL OR finishing_until < now())",
        )
        .bind(batch)
        .bind(until)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    async fn set_results(&self, batch: Uuid, key: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let finished: Option<(String,)> = sqlx::query_as(
            "UPDATE batches SET results_key = $2, finished_at = now(), finishing_until = NULL \
             WHERE id = $1 AND results_key IS NULL RETURNING tenant",
        )
        .bind(batch)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        // The batch's webhook, in the transaction that finishes it.
        if finished.is_some() {
            let now = Utc::now();
            let event = WebhookEvent::BatchCompleted;
            sqlx::query(ENQUEUE_BATCH)
                .bind(Uuid::now_v7())
                .bind(event.as_str())
                .bind(crate::webhooks::batch_payload(batch, key, now).to_string())
                .bind(batch)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// One try of `cancel_batch`: seals the batch and cancels its queued and running jobs; the
/// ids of those that were running (their workers must stop).
async fn cancel_batch_once(pool: &PgPool, tenant: &str, batch: Uuid) -> Result<Option<Vec<Uuid>>> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE batches SET cancelled = true, sealed = true WHERE id = $1 AND tenant = $2",
    )
    .bind(batch)
    .bind(tenant)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !found {
        return Ok(None);
    }
    let cancelled: Vec<(Uuid, String)> = sqlx::query_as(
        "WITH c AS (SELECT j.id, j.state FROM jobs j JOIN batch_items bi ON bi.job_id = j.id \
                    WHERE bi.batch_id = $1 AND j.state IN ('queued', 'running') FOR UPDATE OF j) \
         UPDATE jobs SET state = 'cancelled', finished_at = now() FROM c WHERE jobs.id = c.id \
         RETURNING jobs.id, c.state",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = cancelled.iter().map(|c| c.0).collect();
    sqlx::query(
        "UPDATE tasks SET state = 'cancelled', finished_at = now() \
         WHERE job_id = ANY($1) AND state IN ('pending', 'dispatched')",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    for id in &ids {
        super::usage::record_usage(&mut tx, *id).await?;
    }
    let ev = JobEvent::Cancelled {
        batch: Some(batch),
        deadline: false,
    };
    sqlx::query(
        "INSERT INTO job_events (job_id, kind, detail) \
         SELECT id, $2, $3 FROM unnest($1::uuid[]) id",
    )
    .bind(&ids)
    .bind(ev.kind().as_str())
    .bind(ev.detail())
    .execute(&mut *tx)
    .await?;
    if let Some(change) = ev.notice() {
        for id in &ids {
            notify_job(&mut tx, *id, change).await?;
        }
    }
    notify(&mut tx, TASKS_CHANNEL, "").await?;
    tx.commit().await?;
    Ok(Some(
        cancelled
            .into_iter()
            .filter(|(_, was)| was == "running")
            .map(|(id, _)| id)
            .collect(),
    ))
}
