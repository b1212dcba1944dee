//! The `tutti.v1.Batches` gRPC service.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status, Streaming};
use tutti_proto::v1 as pb;
use tutti_shared::job::JobState;
use uuid::Uuid;

use super::manifest::{ManifestFormat, ManifestReader};
use super::{batch_id, item_job_id};
use crate::api::{output_pb, ts, GenerationService};
use crate::auth::{Caller, Limits};
use crate::error::{Error, Result};
use crate::store::batches::{AddOutcome, BatchCounts, BatchRow, ItemFilter, ItemRow, NewItem};

/// Items validated and stored per transaction: big enough to amortise the commit, small
/// enough that a 100,000-item batch streams through flat memory.
const CHUNK: usize = 500;
/// A client quiet for this long has its partial chunk stored.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Rejected rows a SubmitBatch response lists (all of them are counted).
const MAX_REPORTED: usize = 1000;
const MAX_ITEM_ID: usize = 128;
const MAX_NAME: usize = 1024;
/// The label every item's job carries, so ListJobs can select a batch's jobs.
pub const BATCH_LABEL: &str = "tutti.batch";

/// The tenant a call acts for: the API key's (or the local tenant with auth off).
fn tenant<T>(request: &Request<T>) -> Result<String> {
    Ok(Caller::of(request)?.tenant)
}

/// Shares the generation service's store, validator and blob store.
pub struct BatchesService {
    pub generation: Arc<GenerationService>,
}

#[derive(Clone)]
pub struct BatchesApi(pub Arc<BatchesService>);

fn parse_batch_id(id: &str) -> Result<Uuid> {
    id.parse()
        .map_err(|_| Error::invalid("id", "must be a batch id (a UUID)"))
}

/// A submission in progress: the chunk being filled and what the stored ones did.
struct Submission {
    tenant: String,
    /// The caller's limits: batch size and the per-job rules apply to every item.
    limits: Limits,
    batch: Uuid,
    chunk: Vec<NewItem>,
    position: u64,
    accepted: u64,
    existing: u64,
    rejected: u64,
    reported: Vec<pb::RejectedItem>,
    storing: Option<tokio::task::JoinHandle<Result<AddOutcome>>>,
}

impl Submission {
    fn reject(&mut self, line: u64, item_id: &str, error: String) {
        self.rejected += 1;
        if self.reported.len() < MAX_REPORTED {
            self.reported.push(pb::RejectedItem {
                line,
                item_id: item_id.to_string(),
                error,
            });
        }
    }

    fn record(&mut self, out: AddOutcome) {
        self.accepted += out.accepted;
        self.existing += out.existing;
        for (line, item, error) in out.rejected.into_iter().chain(out.conflicts) {
            self.reject(line.max(0) as u64, &item, error);
        }
    }
}

impl BatchesService {
    /// Validates one row into the submission's chunk (or its report), storing the chunk when
    /// it is full.
    async fn push(
        &self,
        sub: &mut Submission,
        line: u64,
        item_id: String,
        request: Option<pb::SubmitGenerationRequest>,
    ) -> Result<()> {
        sub.position += 1;
        sub.limits.check_batch_items(sub.position as usize)?;
        let line = if line == 0 { sub.position } else { line };
        if item_id.is_empty()
            || item_id.chars().count() > MAX_ITEM_ID
            || item_id.chars().any(char::is_control)
        {
            sub.reject(
                line,
                &item_id,
                format!("item_id: 1-{MAX_ITEM_ID} characters without control characters"),
            );
            return Ok(());
        }
        let job = match request {
            None => Err("request: required".to_string()),
            Some(mut req) => {
                // Batch items run at batch priority; the item id is their idempotency key.
                req.priority = pb::Priority::Batch as i32;
                req.idempotency_key.clear();
                self.generation
                    .validator
                    .validate(&req)
                    .and_then(|new| sub.limits.check_job(&new).map(|()| new))
                    .and_then(|new| match new.init_clip {
                        // A manifest line is no place for a WAV: its clip would never be stored.
                        Some(_) => Err(crate::error::Error::invalid(
                            "init_audio",
                            "not supported in batch manifests (submit audio-to-audio jobs one by one)",
                        )),
                        None => Ok(new),
                    })
                    .map(|mut new| {
                        new.labels
                            .insert(BATCH_LABEL.to_string(), sub.batch.to_string());
                        new
                    })
                    .map_err(|e| e.to_string())
            }
        };
        sub.chunk.push(NewItem {
            job_id: item_job_id(sub.batch, &item_id),
            item_id,
            line: line as i64,
            job,
        });
        if sub.chunk.len() >= CHUNK {
            self.flush(sub).await?;
        }
        Ok(())
    }

    /// Starts storing the chunk; the next rows are validated meanwhile. One chunk is stored
    /// at a time, in order.
    async fn flush(&self, sub: &mut Submission) -> Result<()> {
        if sub.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut sub.chunk, Vec::with_capacity(CHUNK));
        self.settle(sub).await?;
        let store = Arc::clone(&self.generation.store);
        let (tenant, batch) = (sub.tenant.clone(), sub.batch);
        sub.storing = Some(tokio::spawn(async move {
            store.batches().add_items(&tenant, batch, &chunk).await
        }));
        Ok(())
    }

    /// Waits for the chunk being stored.
    async fn settle(&self, sub: &mut Submission) -> Result<()> {
        if let Some(storing) = sub.storing.take() {
            let out = storing
                .await
                .map_err(|e| Error::Internal(format!("storing a chunk: {e}")))??;
            sub.record(out);
        }
        Ok(())
    }

    /// Reads a manifest from the farm's blob store into the submission.
    async fn read_manifest(&self, sub: &mut Submission, uri: &str) -> Result<()> {
        let blobs = &self.generation.blobs;
        let key = uri.strip_prefix(&blobs.uri("")).ok_or_else(|| {
            Error::invalid(
                "header.manifest_uri",
                format!(
                    "must be an object of the farm's store ({}...)",
                    blobs.uri("")
                ),
            )
        })?;
        // Read row by row as it arrives: a manifest of any size takes the memory of a row.
        let body = blobs
            .open(key)
            .await?
            .ok_or_else(|| Error::NotFound(format!("manifest {uri} not found")))?;
        let mut rows = ManifestReader::new(body, ManifestFormat::from_name(key));
        while let Some(row) = rows
            .next()
            .await
            .map_err(|e| Error::invalid("header.manifest_uri", e.to_string()))?
        {
            match row {
                Ok(item) => {
                    self.push(sub, item.line, item.item_id, Some(item.request))
                        .await?
                }
                Err(e) => match e.item_id {
                    // A row that names its item is kept as rejected, so a fixed row replaces it.
                    Some(id) if !id.is_empty() => {
                        sub.position += 1;
                        sub.chunk.push(NewItem {
                            job_id: item_job_id(sub.batch, &id),
                            item_id: id,
                            line: e.line as i64,
                            job: Err(e.message),
                        });
                        if sub.chunk.len() >= CHUNK {
                            self.flush(sub).await?;
                        }
                    }
                    _ => sub.reject(e.line, "", e.message),
                },
            }
        }
        Ok(())
    }

    async fn batch_pb(&self, tenant: &str, id: Uuid) -> Result<pb::Batch> {
        let (batch, counts) = self
            .generation
            .store
            .batches()
            .get_batch(tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {id} not found")))?;
        Ok(batch_to_pb(
            &batch,
            &counts,
            &*self.generation.blobs,
            Utc::now(),
        ))
    }
}

fn batch_to_pb(
    b: &BatchRow,
    c: &BatchCounts,
    blobs: &dyn tutti_shared::blob::BlobStore,
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

fn item_to_pb(item: ItemRow, blobs: &dyn tutti_shared::blob::BlobStore) -> pb::BatchItemStatus {
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

#[tonic::async_trait]
impl pb::batches_server::Batches for BatchesApi {
    #[tracing::instrument(skip_all, fields(batch_id))]
    async fn submit_batch(
        &self,
        request: Request<Streaming<pb::SubmitBatchRequest>>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let caller = Caller::of(&request)?;
        let tenant = caller.tenant.as_str();
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.kind) {
            Some(pb::submit_batch_request::Kind::Header(h)) => h,
            _ => {
                return Err(Error::invalid("header", "the first message must be the header").into())
            }
        };
        let name = match (header.name.as_str(), header.manifest_uri.as_str()) {
            ("", "") => return Err(Error::invalid(
                "header.name",
                "required when the items are streamed (the manifest URI names the batch otherwise)",
            )
            .into()),
            ("", uri) => uri.to_string(),
            (name, _) => name.to_string(),
        };
        if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "header.name",
                format!("at most {MAX_NAME} characters without control characters"),
            )
            .into());
        }
        let id = batch_id(tenant, &name);
        tracing::Span::current().record("batch_id", tracing::field::display(id));
        let manifest = Some(header.manifest_uri.as_str()).filter(|u| !u.is_empty());
        let store = &self.0.generation.store;
        store
            .batches()
            .open_batch(tenant, id, &name, manifest)
            .await?;
        let mut sub = Submission {
            tenant: tenant.to_string(),
            limits: caller.limits.clone(),
            batch: id,
            chunk: Vec::with_capacity(CHUNK),
            position: 0,
            accepted: 0,
            existing: 0,
            rejected: 0,
            reported: Vec::new(),
            storing: None,
        };
        if let Some(uri) = manifest {
            self.0.read_manifest(&mut sub, uri).await?;
            if stream.message().await?.is_some() {
                return Err(Error::invalid(
                    "item",
                    "a batch with a manifest_uri takes no streamed items",
                )
                .into());
            }
        } else {
            // A chunk is stored when full, or when the client pauses: what was sent is kept
            // (and scheduled) even if the stream is cut off later.
            loop {
                let msg = match tokio::time::timeout(FLUSH_AFTER, stream.message()).await {
                    Ok(msg) => msg?,
                    Err(_) => {
                        self.0.flush(&mut sub).await?;
                        self.0.settle(&mut sub).await?;
                        continue;
                    }
                };
                let Some(msg) = msg else { break };
                match msg.kind {
                    Some(pb::submit_batch_request::Kind::Item(item)) => {
                        self.0
                            .push(&mut sub, item.line, item.item_id, item.request)
                            .await?
                    }
                    _ => {
                        return Err(
                            Error::invalid("header", "only the first message is a header").into(),
                        )
                    }
                }
            }
        }
        self.0.flush(&mut sub).await?;
        self.0.settle(&mut sub).await?;
        // Every item arrived: the batch finishes once they have all ended.
        store.batches().seal_batch(tenant, id).await?;
        tracing::info!(
            accepted = sub.accepted,
            existing = sub.existing,
            rejected = sub.rejected,
            "batch submitted"
        );
        Ok(Response::new(pb::SubmitBatchResponse {
            batch: Some(self.0.batch_pb(tenant, id).await?),
            accepted: sub.accepted,
            existing: sub.existing,
            rejected: sub.rejected,
            rejected_items: sub.reported,
        }))
    }

    async fn get_batch(
        &self,
        request: Request<pb::GetBatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        let tenant = tenant(&request)?;
        let tenant = tenant.as_str();
        let id = parse_batch_id(&request.get_ref().id)?;
        Ok(Response::new(self.0.batch_pb(tenant, id).await?))
    }

    async fn list_batch_items(
        &self,
        request: Request<pb::ListBatchItemsRequest>,
    ) -> Result<Response<pb::ListBatchItemsResponse>, Status> {
        let tenant = tenant(&request)?;
        let tenant = tenant.as_str();
        let req = request.into_inner();
        let id = parse_batch_id(&req.id)?;
        let limit = match req.page_size {
            0 => 100,
            n if n > 1000 => return Err(Error::invalid("page_size", "must be at most 1000").into()),
            n => n,
        } as i64;
        let filter = match pb::BatchItemState::try_from(req.state) {
            Ok(pb::BatchItemState::Unspecified) => None,
            Ok(pb::BatchItemState::Queued) => Some(ItemFilter::Job(JobState::Queued)),
            Ok(pb::BatchItemState::Running) => Some(ItemFilter::Job(JobState::Running)),
            Ok(pb::BatchItemState::Succeeded) => Some(ItemFilter::Job(JobState::Succeeded)),
            Ok(pb::BatchItemState::Failed) => Some(ItemFilter::Job(JobState::Failed)),
            Ok(pb::BatchItemState::Cancelled) => Some(ItemFilter::Job(JobState::Cancelled)),
            Ok(pb::BatchItemState::Rejected) => Some(ItemFilter::Rejected),
            Err(_) => return Err(Error::invalid("state", "unknown item state").into()),
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
                Some((line.parse::<i64>().map_err(|_| bad())?, item.to_string()))
            }
        };
        let store = &self.0.generation.store;
        if store.batches().get_batch(tenant, id).await?.is_none() {
            return Err(Error::NotFound(format!("batch {id} not found")).into());
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
        let blobs = &*self.0.generation.blobs;
        Ok(Response::new(pb::ListBatchItemsResponse {
            items: rows
                .into_iter()
                .take(limit as usize)
                .map(|r| item_to_pb(r, blobs))
                .collect(),
            next_page_token,
        }))
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        let tenant = tenant(&request)?;
        let tenant = tenant.as_str();
        let id = parse_batch_id(&request.get_ref().id)?;
        let running = self
            .0
            .generation
            .store
            .batches()
            .cancel_batch(tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {id} not found")))?;
        // The cancel is committed; the broadcasts only make running chunks stop sooner.
        for job in running {
            if let Err(e) = self
                .0
                .generation
                .queue
                .broadcast(&tutti_shared::messages::ControlMessage::Cancel { job_id: job })
                .await
            {
                tracing::warn!(job_id = %job, error = %e, "cancel broadcast failed; the job stops at its chunk boundary");
            }
        }
        Ok(Response::new(self.0.batch_pb(tenant, id).await?))
    }
}
