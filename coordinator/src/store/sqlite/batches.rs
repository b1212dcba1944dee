//! Backfill batches in SQLite (see `batches.rs`): the same statements as Postgres where the
//! dialects agree, one writer at a time, notices sent after the commit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use tutti_shared::job::chunk_ranges;
use uuid::Uuid;

use super::rows::{event, insert_task, now_us, uuid, Tx};
use super::SqliteStore;
use crate::error::{Error, Result};
use crate::lifecycle::events::JobEvent;
use crate::notify::Pending;
use crate::store::batches::{
    min_opt, AddOutcome, BatchCounts, BatchCursor, BatchRow, BatchStore, ItemCursor, ItemFilter,
    ItemRow, NewItem, UPSERT_ITEM_SQL,
};
use crate::store::webhooks::ENQUEUE_BATCH;
use crate::store::OutputRow;
use crate::webhooks::{Subscription, WebhookEvent};

const BATCH_COLUMNS: &str = "id, tenant, name, manifest_uri, sealed, cancelled, results_key, \
                             created_at, finished_at, manifests_cleared_at";

fn time(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| Error::Internal(format!("time {us}")))
}

fn batch_row(r: &SqliteRow) -> Result<BatchRow> {
    Ok(BatchRow {
        id: uuid(r.try_get("id")?)?,
        tenant: r.try_get("tenant")?,
        name: r.try_get("name")?,
        manifest_uri: r.try_get("manifest_uri")?,
        sealed: r.try_get::<i64, _>("sealed")? != 0,
        cancelled: r.try_get::<i64, _>("cancelled")? != 0,
        results_key: r.try_get("results_key")?,
        created_at: time(r.try_get("created_at")?)?,
        finished_at: r
            .try_get::<Option<i64>, _>("finished_at")?
            .map(time)
            .transpose()?,
        manifests_cleared: r
            .try_get::<Option<i64>, _>("manifests_cleared_at")?
            .is_some(),
    })
}

impl SqliteStore {
    async fn fetch_batch(&self, tenant: &str, id: Uuid) -> Result<Option<BatchRow>> {
        let row = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND tenant = $2"
        ))
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(batch_row).transpose()
    }
}

async fn add_job(tx: &mut Tx<'_>, tenant: &str, batch: Uuid, item: &NewItem) -> Result<bool> {
    let Ok(new) = &item.job else {
        return Ok(false);
    };
    let request = prost::Message::encode_to_vec(&new.accepted);
    let spec = serde_json::to_string(&new.spec)
        .map_err(|e| Error::Internal(format!("encoding spec: {e}")))?;
    let labels = serde_json::to_string(&new.labels)
        .map_err(|e| Error::Internal(format!("encoding labels: {e}")))?;
    sqlx::query(
        "INSERT INTO jobs (id, tenant, state, stage, priority, spec, request, request_hash, \
                           labels, steps_total, chunk_steps, created_at, api_key_id) \
         VALUES ($1, $2, 'queued', 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(item.job_id.to_string())
    .bind(tenant)
    .bind(i64::from(new.priority.rank()))
    .bind(spec)
    .bind(&request)
    .bind(&new.request_hash)
    .bind(labels)
    .bind(i64::from(new.spec.steps))
    .bind(i64::from(new.chunk_steps))
    .bind(now_us())
    .bind(&new.api_key)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE batch_items SET job_id = $3 WHERE batch_id = $1 AND item_id = $2")
        .bind(batch.to_string())
        .bind(&item.item_id)
        .bind(item.job_id.to_string())
        .execute(&mut **tx)
        .await?;
    let (from, to) = chunk_ranges(new.spec.steps, new.chunk_steps)[0];
    insert_task(tx, item.job_id, 0, "denoise", from, to, new.priority.rank()).await?;
    let queued = JobEvent::Queued { batch: Some(batch) };
    event(tx, item.job_id, None, None, &queued).await?;
    Ok(true)
}

#[async_trait]
impl BatchStore for SqliteStore {
    async fn open_batch(
        &self,
        tenant: &str,
        id: Uuid,
        name: &str,
        manifest_uri: Option<&str>,
        webhook: Option<&Subscription>,
    ) -> Result<BatchRow> {
        {
            let (_w, mut tx) = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO batches (id, tenant, name, manifest_uri, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id.to_string())
            .bind(tenant)
            .bind(name)
            .bind(manifest_uri)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
            // A new submission: the batch is open until it ends.
            sqlx::query(
                "UPDATE batches SET sealed = 0 \
                 WHERE id = $1 AND tenant = $2 AND cancelled = 0 AND results_key IS NULL",
            )
            .bind(id.to_string())
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
            if let Some(hook) = webhook {
                sqlx::query(
                    "INSERT INTO batch_webhooks (batch_id, url, events) \
                     SELECT id, $2, $3 FROM batches WHERE id = $1 AND tenant = $4 \
                     ON CONFLICT (batch_id) DO UPDATE SET url = excluded.url, events = excluded.events",
                )
                .bind(id.to_string())
                .bind(&hook.url)
                .bind(&hook.events)
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        let batch = self
            .fetch_batch(tenant, id)
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
        let (w, mut tx) = self.begin_write().await?;
        let cancelled: Option<i64> =
            sqlx::query_scalar("SELECT cancelled FROM batches WHERE id = $1 AND tenant = $2")
                .bind(batch.to_string())
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        match cancelled {
            None => return Err(Error::NotFound(format!("batch {batch} not found"))),
            Some(0) => {}
            Some(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "batch {batch} was cancelled: it takes no more items"
                )))
            }
        }
        let mut held = Vec::new();
        for item in items {
            let inserted = sqlx::query(UPSERT_ITEM_SQL)
                .bind(batch.to_string())
                .bind(&item.item_id)
                .bind(item.line)
                .bind(item.job.as_ref().err())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !inserted {
                held.push(item);
            } else if add_job(&mut tx, tenant, batch, item).await? {
                out.accepted += 1;
            } else if let Err(rule) = &item.job {
                out.rejected
                    .push((item.line, item.item_id.clone(), rule.clone()));
            }
        }
        for item in held {
            let stored: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT j.request_hash, bi.error FROM batch_items bi \
                 LEFT JOIN jobs j ON j.id = bi.job_id WHERE bi.batch_id = $1 AND bi.item_id = $2",
            )
            .bind(batch.to_string())
            .bind(&item.item_id)
            .fetch_optional(&mut *tx)
            .await?;
            out.classify_held(item, stored.as_ref());
        }
        if out.accepted > 0 {
            // New items reopen a batch that had ended: its results are written again.
            sqlx::query(
                "UPDATE batches SET sealed = 0, results_key = NULL, finished_at = NULL \
                 WHERE id = $1",
            )
            .bind(batch.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        drop(w);
        if out.accepted > 0 {
            let mut notes = Pending::default();
            notes.tasks();
            notes.send(&self.notifier);
        }
        Ok(out)
    }

    async fn seal_batch(&self, tenant: &str, batch: Uuid) -> Result<()> {
        let (_w, mut tx) = self.begin_write().await?;
        sqlx::query("UPDATE batches SET sealed = 1 WHERE id = $1 AND tenant = $2")
            .bind(batch.to_string())
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_batch(&self, tenant: &str, id: Uuid) -> Result<Option<(BatchRow, BatchCounts)>> {
        let Some(batch) = self.fetch_batch(tenant, id).await? else {
            return Ok(None);
        };
        let rows: Vec<(Option<String>, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT j.state, count(*), min(j.started_at), max(j.finished_at) \
             FROM batch_items bi LEFT JOIN jobs j ON j.id = bi.job_id \
             WHERE bi.batch_id = $1 GROUP BY j.state",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut counts = BatchCounts::default();
        for (state, n, started, finished) in rows {
            counts.add(state.as_deref().unwrap_or("rejected"), n);
            counts.first_started = min_opt(counts.first_started, started.map(time).transpose()?);
            counts.last_finished = counts.last_finished.max(finished.map(time).transpose()?);
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
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE tenant = $1 \
               AND ($2 IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(tenant)
        .bind(after_at.map(|t| t.timestamp_micros()))
        .bind(after_id.map(|id| id.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(batch_row).collect()
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
        let rows = sqlx::query(
            "SELECT bi.item_id, bi.line, bi.job_id, j.state, bi.error, j.error_code, j.error_message \
             FROM batch_items bi JOIN batches b ON b.id = bi.batch_id \
             LEFT JOIN jobs j ON j.id = bi.job_id \
             WHERE bi.batch_id = $1 AND b.tenant = $2 \
               AND ($3 IS NULL OR COALESCE(j.state, 'rejected') = $3) \
               AND ($4 IS NULL OR (bi.line, bi.item_id) > ($4, $5)) \
             ORDER BY bi.line, bi.item_id LIMIT $6",
        )
        .bind(batch.to_string())
        .bind(tenant)
        .bind(filter.map(ItemFilter::as_str))
        .bind(after_line)
        .bind(after_item)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let job_id = r
                .try_get::<Option<String>, _>("job_id")?
                .map(|s| uuid(&s))
                .transpose()?;
            let state: Option<String> = r.try_get("state")?;
            let outputs = match job_id {
                Some(j) => self.item_outputs(j).await?,
                None => Vec::new(),
            };
            items.push(ItemRow {
                item_id: r.try_get("item_id")?,
                line: r.try_get("line")?,
                job_id,
                state: state.unwrap_or_else(|| "rejected".into()),
                error_code: match job_id {
                    None => Some("INVALID_ARGUMENT".into()),
                    Some(_) => r.try_get("error_code")?,
                },
                error_message: match job_id {
                    None => r.try_get("error")?,
                    Some(_) => r.try_get("error_message")?,
                },
                outputs,
            });
        }
        Ok(items)
    }

    async fn cancel_batch(&self, tenant: &str, batch: Uuid) -> Result<Option<Vec<Uuid>>> {
        let (w, mut tx) = self.begin_write().await?;
        let found = sqlx::query(
            "UPDATE batches SET cancelled = 1, sealed = 1 WHERE id = $1 AND tenant = $2",
        )
        .bind(batch.to_string())
        .bind(tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !found {
            return Ok(None);
        }
        let live: Vec<(String, String)> = sqlx::query_as(
            "SELECT j.id, j.state FROM jobs j JOIN batch_items bi ON bi.job_id = j.id \
             WHERE bi.batch_id = $1 AND j.state IN ('queued', 'running')",
        )
        .bind(batch.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let now = now_us();
        let mut notes = Pending::default();
        let mut running = Vec::new();
        for (id, state) in &live {
            sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', finished_at = $2 \
                 WHERE job_id = $1 AND state IN ('pending', 'dispatched')",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let id = uuid(id)?;
            super::usage::record_usage(&mut tx, id).await?;
            let ev = JobEvent::Cancelled {
                batch: Some(batch),
                deadline: false,
            };
            event(&mut tx, id, None, None, &ev).await?;
            if let Some(change) = ev.notice() {
                notes.job(id, change);
            }
            notes.tasks();
            if state == "running" {
                running.push(id);
            }
        }
        tx.commit().await?;
        drop(w);
        notes.send(&self.notifier);
        Ok(Some(running))
    }

    async fn batches_to_finish(&self) -> Result<Vec<(String, Uuid)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT b.tenant, b.id FROM batches b WHERE b.sealed = 1 AND b.results_key IS NULL \
               AND NOT EXISTS (SELECT 1 FROM batch_items bi JOIN jobs j ON j.id = bi.job_id \
                               WHERE bi.batch_id = b.id AND j.state IN ('queued', 'running'))",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(t, id)| Ok((t, uuid(&id)?)))
            .collect()
    }

    async fn claim_finish(&self, batch: Uuid, until: DateTime<Utc>) -> Result<bool> {
        let (_w, mut tx) = self.begin_write().await?;
        let claimed = sqlx::query(
            "UPDATE batches SET finishing_until = $2 WHERE id = $1 AND results_key IS NULL \
               AND (finishing_until IS NULL OR finishing_until < $3)",
        )
        .bind(batch.to_string())
        .bind(until.timestamp_micros())
        .bind(now_us())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn set_results(&self, batch: Uuid, key: &str) -> Result<()> {
        let (_w, mut tx) = self.begin_write().await?;
        let now = Utc::now();
        let finished: Option<(String,)> = sqlx::query_as(
            "UPDATE batches SET results_key = $2, finished_at = $3, finishing_until = NULL \
             WHERE id = $1 AND results_key IS NULL RETURNING tenant",
        )
        .bind(batch.to_string())
        .bind(key)
        .bind(now.timestamp_micros())
        .fetch_optional(&mut *tx)
        .await?;
        // The batch's webhook, in the transaction that finishes it.
        if finished.is_some() {
            let event = WebhookEvent::BatchCompleted;
            sqlx::query(ENQUEUE_BATCH)
                .bind(Uuid::now_v7().to_string())
                .bind(event.as_str())
                .bind(crate::webhooks::batch_payload(batch, key, now).to_string())
                .bind(batch.to_string())
                .bind(now.timestamp_micros())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl SqliteStore {
    async fn item_outputs(&self, job: Uuid) -> Result<Vec<OutputRow>> {
        // (idx, key, sha256, bytes, seconds, rate, format, channels, loudness, true peak)
        type OutputCols = (
            i64,
            String,
            String,
            i64,
            f64,
            i64,
            String,
            i64,
            Option<f64>,
            Option<f64>,
            Option<i64>,
            Option<i64>,
        );
        let rows: Vec<OutputCols> = sqlx::query_as(
            "SELECT idx, key, sha256, size_bytes, duration_s, sample_rate, format, channels, \
                    loudness_lufs, true_peak_dbtp, expires_at, deleted_at \
             FROM outputs WHERE job_id = $1 ORDER BY idx",
        )
        .bind(job.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(idx, key, sha256, size_bytes, d, sr, format, ch, lufs, tp, expires, deleted)| {
                    Ok(OutputRow {
                        idx: idx as i32,
                        key,
                        sha256,
                        size_bytes,
                        duration_s: d as f32,
                        sample_rate: sr as i32,
                        format,
                        channels: ch as i32,
                        loudness_lufs: lufs.map(|v| v as f32),
                        true_peak_dbtp: tp.map(|v| v as f32),
                        expires_at: expires.map(time).transpose()?,
                        deleted: deleted.is_some(),
                    })
                },
            )
            .collect()
    }
}
