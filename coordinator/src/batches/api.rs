//! The `tutti.v1.Batches` gRPC service.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tutti_proto::v1 as pb;
use uuid::Uuid;

use super::manifest::{ManifestFormat, ManifestReader};
use super::{batch_id, item_job_id};
use crate::api::GenerationService;
use crate::auth::{Caller, Limits};
use crate::error::{Error, Result};
use crate::store::batches::{AddOutcome, NewItem};
use crate::tenancy::blobs as blob_access;
use crate::text::{self, TextRule};

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

pub(super) fn parse_batch_id(id: &str) -> Result<Uuid> {
    id.parse()
        .map_err(|_| Error::invalid("id", "must be a batch id (a UUID)"))
}

/// A submission in progress: the chunk being filled and what the stored ones did.
struct Submission {
    tenant: String,
    /// The caller's limits: batch size and the per-job rules apply to every item.
    limits: Limits,
    /// `tt_<id>` of the caller's key, for the items' usage records.
    api_key: Option<String>,
    batch: Uuid,
    /// Check the rows and report; store nothing.
    validate_only: bool,
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
        if let Err(e) = text::check("item_id", &item_id, TextRule::line(MAX_ITEM_ID).required()) {
            // The id is not echoed back whole: the report quotes it.
            sub.reject(line, &text::quote(&item_id), e.to_string());
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
                        new.api_key = sub.api_key.clone();
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
        if sub.validate_only {
            // What storing would report of rows new to the batch; items the batch may hold
            // already are not looked up (checking a manifest reads no state).
            for item in chunk {
                match item.job {
                    Ok(_) => sub.accepted += 1,
                    Err(rule) => sub.reject(item.line.max(0) as u64, &item.item_id, rule),
                }
            }
            return Ok(());
        }
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

    /// Reads a manifest from the farm's blob store into the submission: only an object of the
    /// caller's own (see `tenancy::blobs`); another tenant's reads as absent.
    async fn read_manifest(&self, sub: &mut Submission, admin: bool, uri: &str) -> Result<()> {
        const FIELD: &str = "header.manifest_uri";
        let key =
            self.generation
                .blob_access
                .resolve((&sub.tenant, admin), FIELD, "manifest", uri)?;
        let key = key.as_str();
        // Read row by row as it arrives: a manifest of any size takes the memory of a row.
        let body = self
            .generation
            .blobs
            .open(key)
            .await?
            .ok_or_else(|| blob_access::not_found("manifest"))?;
        let mut rows = ManifestReader::new(body, ManifestFormat::from_name(key));
        while let Some(row) = rows
            .next()
            .await
            .map_err(|e| Error::invalid(FIELD, e.to_string()))?
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
}

impl BatchesApi {
    /// SubmitBatch over any stream of its messages: the gRPC method's (`Streaming`), or the
    /// studio's (a header naming an uploaded manifest), so both share every rule.
    #[tracing::instrument(skip_all, fields(batch_id))]
    pub async fn submit<S>(&self, request: Request<S>) -> Result<pb::SubmitBatchResponse, Status>
    where
        S: Stream<Item = Result<pb::SubmitBatchRequest, Status>> + Send + Unpin,
    {
        let caller = Caller::of(&request)?;
        let tenant = caller.tenant.as_str();
        let mut stream = request.into_inner();
        let header = match stream.next().await.transpose()?.and_then(|m| m.kind) {
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
        text::check("header.name", &name, TextRule::line(MAX_NAME))?;
        let id = batch_id(tenant, &name);
        tracing::Span::current().record("batch_id", tracing::field::display(id));
        let manifest = Some(header.manifest_uri.as_str()).filter(|u| !u.is_empty());
        let webhook = crate::webhooks::Subscription::from_pb(
            "header.webhook",
            header.webhook.as_ref(),
            self.0.generation.webhook_allow_private,
        )?;
        let store = &self.0.generation.store;
        if !header.validate_only {
            store
                .batches()
                .open_batch(tenant, id, &name, manifest, webhook.as_ref())
                .await?;
        }
        let mut sub = Submission {
            tenant: tenant.to_string(),
            limits: caller.limits.clone(),
            api_key: caller.key.clone(),
            batch: id,
            validate_only: header.validate_only,
            chunk: Vec::with_capacity(CHUNK),
            position: 0,
            accepted: 0,
            existing: 0,
            rejected: 0,
            reported: Vec::new(),
            storing: None,
        };
        if let Some(uri) = manifest {
            self.0.read_manifest(&mut sub, caller.admin, uri).await?;
            if stream.next().await.transpose()?.is_some() {
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
                let msg = match tokio::time::timeout(FLUSH_AFTER, stream.next()).await {
                    Ok(msg) => msg.transpose()?,
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
        if sub.validate_only {
            return Ok(pb::SubmitBatchResponse {
                batch: None,
                accepted: sub.accepted,
                existing: 0,
                rejected: sub.rejected,
                rejected_items: sub.reported,
            });
        }
        // Every item arrived: the batch finishes once they have all ended.
        store.batches().seal_batch(tenant, id).await?;
        tracing::info!(
            accepted = sub.accepted,
            existing = sub.existing,
            rejected = sub.rejected,
            "batch submitted"
        );
        Ok(pb::SubmitBatchResponse {
            batch: Some(self.0.batch_pb(tenant, id).await?),
            accepted: sub.accepted,
            existing: sub.existing,
            rejected: sub.rejected,
            rejected_items: sub.reported,
        })
    }
}

#[tonic::async_trait]
impl pb::batches_server::Batches for BatchesApi {
    async fn submit_batch(
        &self,
        request: Request<Streaming<pb::SubmitBatchRequest>>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        Ok(Response::new(self.submit(request).await?))
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
        let req = request.into_inner();
        Ok(Response::new(self.0.list_items(&tenant, req).await?))
    }

    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        Ok(Response::new(self.0.list_batches(&tenant, req).await?))
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

    async fn delete_batch(
        &self,
        request: Request<pb::DeleteBatchRequest>,
    ) -> Result<Response<pb::DeleteBatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let tenant = tenant.as_str();
        let id = parse_batch_id(&request.get_ref().id)?;
        let generation = &self.0.generation;
        let deleted = generation
            .store
            .delete_batch(tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {id} not found")))?;
        let mut keys = Vec::new();
        let mut newly = 0;
        for (job, d) in deleted {
            if d.cancelled {
                if let Err(e) = generation
                    .queue
                    .broadcast(&tutti_shared::messages::ControlMessage::Cancel { job_id: job })
                    .await
                {
                    tracing::warn!(job_id = %job, error = %e, "cancel broadcast failed; the job stops at its chunk boundary");
                }
            }
            newly += u64::from(d.newly);
            keys.extend(d.keys);
        }
        // After the commit, as DeleteJob does: a failure leaves the keys for the next call.
        generation.blobs.delete(&keys).await.map_err(Error::from)?;
        tracing::info!(batch_id = %id, deleted = newly, objects = keys.len(), "batch deleted");
        Ok(Response::new(pb::DeleteBatchResponse {
            batch: Some(self.0.batch_pb(tenant, id).await?),
            deleted: newly,
        }))
    }

    async fn retry_batch_items(
        &self,
        request: Request<pb::RetryBatchItemsRequest>,
    ) -> Result<Response<pb::RetryBatchItemsResponse>, Status> {
        let tenant = tenant(&request)?;
        let tenant = tenant.as_str();
        let req = request.get_ref();
        let id = parse_batch_id(&req.id)?;
        let generation = &self.0.generation;
        let retried = generation
            .store
            .retry_batch_items(tenant, id, req.include_cancelled)
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {id} not found")))?;
        for &(job, was_cancelled) in &retried {
            if was_cancelled {
                generation.broadcast_retry(job).await;
            }
        }
        tracing::info!(batch_id = %id, retried = retried.len(), "batch items retried");
        Ok(Response::new(pb::RetryBatchItemsResponse {
            batch: Some(self.0.batch_pb(tenant, id).await?),
            retried: retried.len() as u64,
        }))
    }
}
