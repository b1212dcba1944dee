//! The `tutti.v1.Generation` gRPC service.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use prost::Message;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tutti_proto::v1 as pb;
use tutti_shared::blob::BlobStore;
use tutti_shared::job::{JobState, Stage};
use tutti_shared::messages::ControlMessage;
use tutti_shared::taskqueue::TaskQueue;
use uuid::Uuid;

use crate::auth::{Caller, SubmitRate};
use crate::error::{Error, Result};
use crate::notify::Change;
use crate::store::{JobRecord, JobStore, OutputRow, Retried, Scope};
use crate::tenancy::blobs::BlobAccess;
use crate::validate::Validator;

pub use crate::auth::DEFAULT_TENANT;

pub struct GenerationService {
    pub store: Arc<dyn JobStore>,
    pub validator: Validator,
    pub blobs: Arc<dyn BlobStore>,
    /// Which objects of `blobs` a caller may name in a request.
    pub blob_access: BlobAccess,
    /// Carries cancel broadcasts to the workers.
    pub queue: Arc<dyn TaskQueue>,
    pub url_ttl: Duration,
    /// Per-tenant submit token buckets (this process only).
    pub submit_rate: SubmitRate,
    /// A worker unheard of for this long is gone (the model catalogue's availability).
    pub worker_timeout: Duration,
    /// Whether a request's webhook may name a private address (the operator's flag).
    pub webhook_allow_private: bool,
    /// Tenants' weights, for a queued job's place.
    pub weights: crate::sched::TenantWeights,
}

fn parse_id(field: &str, id: &str) -> Result<Uuid> {
    id.parse()
        .map_err(|_| Error::invalid(field, "must be a job id (a UUID)"))
}

pub(crate) fn ts(t: DateTime<Utc>) -> tutti_proto::wkt::Timestamp {
    tutti_proto::wkt::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The API view of a stored output, without a presigned URL.
pub(crate) fn output_pb(o: &OutputRow, uri: String) -> pb::Output {
    pb::Output {
        index: o.idx as u32,
        uri,
        duration_seconds: o.duration_s,
        sample_rate: o.sample_rate as u32,
        channels: o.channels as u32,
        sha256: o.sha256.clone(),
        size_bytes: o.size_bytes as u64,
        format: pb::AudioFormat::from(
            o.format
                .parse::<tutti_shared::job::AudioFormat>()
                .unwrap_or(tutti_shared::job::AudioFormat::Wav),
        ) as i32,
        loudness_lufs: o.loudness_lufs,
        true_peak_dbtp: o.true_peak_dbtp,
        expires_at: o.expires_at.map(ts),
        deleted: o.deleted || !o.available(Utc::now()),
        ..Default::default()
    }
}

impl GenerationService {
    /// The API view of a stored job, with fresh presigned URLs for its outputs.
    pub async fn to_pb(&self, r: &JobRecord) -> Result<pb::Job> {
        let j = &r.job;
        let mut outputs = Vec::with_capacity(r.outputs.len());
        let now = Utc::now();
        for o in &r.outputs {
            // No URL to an object that is gone, or that retention deletes before it is used.
            if !o.available(now) {
                outputs.push(output_pb(o, self.blobs.uri(&o.key)));
                continue;
            }
            let ttl = o
                .expires_at
                .and_then(|t| (t - now).to_std().ok())
                .map_or(self.url_ttl, |left| left.min(self.url_ttl));
            let signed = self.blobs.presign_get(&o.key, ttl).await?;
            let expires: DateTime<Utc> = signed.expires_at.into();
            outputs.push(pb::Output {
                url: signed.url,
                url_expires_at: Some(ts(expires)),
                ..output_pb(o, self.blobs.uri(&o.key))
            });
        }
        let timings = j
            .timings
            .0
            .iter()
            .filter_map(|(stage, ms)| {
                let stage: Stage = stage.parse().ok()?;
                Some(pb::StageTiming {
                    stage: pb::Stage::from(stage) as i32,
                    millis: (*ms).max(0) as u64,
                })
            })
            .collect();
        let request = pb::SubmitGenerationRequest::decode(j.request.as_slice())
            .map_err(|e| Error::Internal(format!("stored request of job {}: {e}", j.id)))?;
        Ok(pb::Job {
            id: j.id.to_string(),
            state: pb::JobState::from(j.state) as i32,
            stage: pb::Stage::from(j.stage) as i32,
            steps_done: j.steps_done as u32,
            steps_total: j.steps_total as u32,
            attempts: j.attempts as u32,
            error: j.error_code.as_ref().map(|code| pb::JobError {
                code: code.clone(),
                message: j.error_message.clone().unwrap_or_default(),
            }),
            outputs,
            timings,
            request: Some(request),
            prompt_text: j.spec.0.prompt.clone(),
            model_version: j.spec.0.model.to_string(),
            created_at: Some(ts(j.created_at)),
            started_at: j.started_at.map(ts),
            finished_at: j.finished_at.map(ts),
            deleted_at: j.deleted_at.map(ts),
            // GetJob and WatchJob fill these in for a queued job (`place`).
            queue_position: None,
            estimated_start: None,
            estimated_end: None,
        })
    }

    async fn submit(&self, caller: &Caller, req: pb::SubmitGenerationRequest) -> Result<pb::Job> {
        // Limits before anything is stored: rate, then the request's own rules; jobs in
        // flight are counted by the store inside the insert.
        self.submit_rate.admit(&caller.tenant, &caller.limits)?;
        let mut new = self.validator.validate(&req)?;
        new.api_key = caller.key.clone();
        crate::webhooks::Subscription::from_pb(
            "webhook",
            req.webhook.as_ref(),
            self.webhook_allow_private,
        )?;
        // The accepted request carries the deadline as a time, whichever field gave it.
        new.accepted.deadline = crate::deadline::of_request(&req, Utc::now())?.map(ts);
        caller.limits.check_job(&new)?;
        let mut own_clip = None;
        if let Some(clip) = new.init_clip.take() {
            // Before the job, so that no task can start without its clip; the job's own object
            // (a fresh key per submit), so that deleting the job never removes another's input.
            let key = tutti_shared::job::init_audio_job_key(&caller.tenant, Uuid::new_v4());
            if let Some(init) = new.spec.init_audio.as_mut() {
                init.key = key.clone();
            }
            self.blobs
                .put(&key, bytes::Bytes::from(clip.wav), "audio/wav")
                .await?;
            own_clip = Some(key);
        }
        // Every task of the job joins this trace, however late it is dispatched.
        new.spec.trace_context = tutti_shared::telemetry::current_context_headers()
            .into_iter()
            .collect();
        let inserted = self.store.insert_job(&caller.tenant, &new).await;
        if let Some(key) = own_clip.filter(|_| !matches!(inserted, Ok((_, true)))) {
            // Refused, or a repeat of an earlier submit (whose job has its own clip): this
            // clip belongs to no job.
            if let Err(e) = self.blobs.delete(&[key]).await {
                tracing::warn!(error = %e, "deleting an unused init clip");
            }
        }
        let (record, created) = inserted?;
        tracing::Span::current().record("job_id", tracing::field::display(record.job.id));
        tracing::info!(created, model = %new.spec.model, steps = new.spec.steps, "job accepted");
        if created {
            metrics::counter!(
                tutti_shared::metrics::names::JOBS_SUBMITTED,
                "class" => new.priority.as_str()
            )
            .increment(1);
        }
        self.to_pb(&record).await
    }

    /// A queued job's place: its position, and its estimated start and end.
    async fn place(&self, scope: Scope<'_>, job: &mut pb::Job, id: Uuid) -> Result<()> {
        // Only a queued job has a place (a running one costs no query).
        if job.state != pb::JobState::Queued as i32 {
            return Ok(());
        }
        let Some(read) = self
            .store
            .queue_read(scope, id, self.worker_timeout)
            .await?
        else {
            return Ok(());
        };
        let (position, times) = read.place(&self.weights);
        job.queue_position = Some(u32::try_from(position).unwrap_or(u32::MAX));
        if let Some((start, end)) = times {
            let now = Utc::now();
            let at = |d: Duration| {
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .map(ts)
            };
            job.estimated_start = at(start);
            job.estimated_end = at(end);
        }
        Ok(())
    }

    /// Retries a job in the caller's scope; workers forget the cancel of a cancelled one.
    pub(crate) async fn retry(&self, caller: &Caller, id: Uuid) -> Result<pb::Job> {
        let (record, retried) = self
            .store
            .retry_job(caller.scope(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        match retried {
            Retried::Refused(state) => {
                return Err(Error::FailedPrecondition(format!(
                    "job {id} is {state}; only a failed or cancelled job can be retried"
                )))
            }
            Retried::Requeued {
                chunk,
                rewound,
                was_cancelled,
            } => {
                tracing::info!(job_id = %id, chunk, rewound, "job retried");
                if was_cancelled {
                    self.broadcast_retry(id).await;
                }
            }
            Retried::AlreadyRequeued => {}
            Retried::InputsGone => {
                return Err(Error::FailedPrecondition(format!(
                    "job {id} cannot run again: its init clip was deleted by the tenant's input retention"
                )))
            }
        }
        self.to_pb(&record).await
    }

    /// Workers that saw the job's cancel forget it. Best effort: a worker that misses it stops
    /// the retried chunk, which then runs again as its next attempt.
    pub(crate) async fn broadcast_retry(&self, job: Uuid) {
        if let Err(e) = self
            .queue
            .broadcast(&ControlMessage::Retry { job_id: job })
            .await
        {
            tracing::warn!(job_id = %job, error = %e, "retry broadcast failed");
        }
    }

    async fn broadcast_cancel(&self, job: Uuid) -> Result<()> {
        Ok(self
            .queue
            .broadcast(&ControlMessage::Cancel { job_id: job })
            .await?)
    }
}

/// The span of one RPC, a child of the caller's trace when it sent one (W3C `traceparent` in
/// the gRPC metadata). `job_id` is filled in once known; `tenant` is the caller's.
fn rpc_span<T>(method: &'static str, request: &Request<T>) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.method = method,
        job_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    let incoming: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| {
            let v = request.metadata().get(k)?.to_str().ok()?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    tutti_shared::telemetry::set_parent_from_headers(&span, &incoming);
    span
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

impl From<Change> for pb::job_event::Kind {
    fn from(c: Change) -> Self {
        use pb::job_event::Kind;
        match c {
            Change::Queued => Kind::Queued,
            Change::Started => Kind::Started,
            Change::Step => Kind::Step,
            Change::Stage => Kind::Stage,
            Change::Retry => Kind::Retry,
            Change::Succeeded => Kind::Succeeded,
            Change::Failed => Kind::Failed,
            Change::Cancelled => Kind::Cancelled,
        }
    }
}

/// The tonic service: a cheap handle over the shared state.
#[derive(Clone)]
pub struct GenerationApi(pub Arc<GenerationService>);

impl std::ops::Deref for GenerationApi {
    type Target = GenerationService;
    fn deref(&self) -> &GenerationService {
        &self.0
    }
}

#[tonic::async_trait]
impl pb::generation_server::Generation for GenerationApi {
    async fn submit_generation(
        &self,
        request: Request<pb::SubmitGenerationRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let span = rpc_span("SubmitGeneration", &request);
        let caller = Caller::of(&request)?;
        span.record("tenant", caller.tenant.as_str());
        let job = self
            .submit(&caller, request.into_inner())
            .instrument(span)
            .await?;
        Ok(Response::new(job))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let record = self
            .store
            .get_job(caller.scope(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        let mut job = self.to_pb(&record).await?;
        self.place(caller.scope(), &mut job, id).await?;
        Ok(Response::new(job))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = Caller::of(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        // Subscribe before the snapshot so no change between the two is missed.
        let mut changes = self.store.notifier().subscribe();
        let first = self
            .store
            .get_job(caller.scope(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        let svc = Arc::clone(&self.0);
        let stream = async_stream(move |tx| async move {
            let mut snapshot = svc.to_pb(&first).await?;
            svc.place(caller.scope(), &mut snapshot, id).await?;
            let mut done = first.job.state.is_terminal();
            let mut last_place = snapshot.queue_position;
            send(&tx, pb::job_event::Kind::Snapshot, snapshot).await?;
            let mut last_step = first.job.steps_done;
            while !done {
                // `None`: lagged, or quiet for a while; re-read the job in case a notice was lost.
                let what = match tokio::time::timeout(Duration::from_secs(5), changes.recv()).await
                {
                    Ok(Ok(c)) if c.job == id => Some(c.what),
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => None,
                    Ok(Err(broadcast::error::RecvError::Closed)) => break,
                };
                let Some(rec) = svc.store.get_job(caller.scope(), id).await? else {
                    break;
                };
                let state = rec.job.state;
                done = state.is_terminal();
                // A queued job's place moves with the queue: a quiet spell re-reads it.
                let mut job = svc.to_pb(&rec).await?;
                svc.place(caller.scope(), &mut job, id).await?;
                let moved = job.queue_position != last_place;
                last_place = job.queue_position;
                let kind = match (what, state) {
                    (_, JobState::Succeeded) => pb::job_event::Kind::Succeeded,
                    (_, JobState::Failed) => pb::job_event::Kind::Failed,
                    (_, JobState::Cancelled) => pb::job_event::Kind::Cancelled,
                    (None, JobState::Queued) if moved => pb::job_event::Kind::Queued,
                    (None, _) if rec.job.steps_done == last_step => continue,
                    (None, _) => pb::job_event::Kind::Step,
                    (Some(c), _) => c.into(),
                };
                last_step = rec.job.steps_done;
                if done && !rec.outputs.is_empty() {
                    let job = svc.to_pb(&rec).await?;
                    send(&tx, pb::job_event::Kind::OutputReady, job).await?;
                }
                send(&tx, kind, job).await?;
            }
            Ok(())
        });
        Ok(Response::new(stream))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let (record, changed) = self
            .store
            .cancel_job(caller.scope(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        if changed {
            // The cancel is committed; the broadcast only makes running chunks stop sooner.
            if let Err(e) = self.broadcast_cancel(id).await {
                tracing::warn!(job_id = %id, error = %e, "cancel broadcast failed; the job stops at its chunk boundary");
            }
        }
        Ok(Response::new(self.to_pb(&record).await?))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(self.retry(&caller, id).await?))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(self.delete(&caller, id).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let limit = match req.page_size {
            0 => 50,
            n if n > 500 => return Err(Error::invalid("page_size", "must be at most 500").into()),
            n => n,
        } as i64;
        let state: Option<JobState> = match pb::JobState::try_from(req.state) {
            Ok(s) => s.into(),
            Err(_) => return Err(Error::invalid("state", "unknown job state").into()),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(crate::page_token::decode(t, "ListJobs")?),
        };
        use crate::text::{check, TextRule};
        use crate::validate::{MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_PROMPT_CHARS};
        for (k, v) in &req.labels {
            check("labels", k, TextRule::line(MAX_LABEL_KEY))?;
            check("labels", v, TextRule::line(MAX_LABEL_VALUE))?;
        }
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        check("text", &req.text, TextRule::line(MAX_PROMPT_CHARS))?;
        let text = req.text.trim();
        let rows = if text.is_empty() {
            self.store
                .list_jobs(caller.scope(), state, &labels, after, limit + 1)
                .await?
        } else {
            self.store
                .search_jobs(caller.scope(), state, &labels, text, after, limit + 1)
                .await?
        };
        let more = rows.len() as i64 > limit;
        let mut jobs = Vec::new();
        for r in rows.iter().take(limit as usize) {
            jobs.push(self.to_pb(r).await?);
        }
        let next_page_token = match (more, rows.get(limit as usize - 1)) {
            (true, Some(last)) => crate::page_token::encode(last.job.created_at, last.job.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn render_prompt(
        &self,
        request: Request<pb::RenderPromptRequest>,
    ) -> Result<Response<pb::RenderPromptResponse>, Status> {
        // Any caller the auth layer let through may preview; nothing is read or stored.
        Caller::of(&request)?;
        let req = request.get_ref();
        // A song model's texts need the model; another model (or none found) previews the
        // prompt alone, as before.
        let model = self.0.validator.model(req.model.as_ref()).ok();
        Ok(Response::new(crate::preview::render_for(req, model)?))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        self.0.list_models(request).await
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        self.0.get_model(request).await
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.0.get_usage(request).await
    }
}

async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<pb::JobEvent, Status>>,
    kind: pb::job_event::Kind,
    job: pb::Job,
) -> Result<()> {
    tx.send(Ok(pb::JobEvent {
        kind: kind as i32,
        job: Some(job),
        at: Some(ts(Utc::now())),
    }))
    .await
    .map_err(|_| Error::Internal("watcher went away".into()))
}

/// Runs `body` as a task feeding a channel-backed stream; an error ends the stream with a status
/// (a departed watcher just ends it).
fn async_stream<F, Fut>(body: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::JobEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let fut = body(tx.clone());
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(Status::from(e))).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
