//! The `tutti.v1.Operator` gRPC service: a read-only view of the fleet and the backlog for
//! operators (`tutti workers`, `tutti queues`, the studio's operator page). Admin keys only
//! when auth is on; with auth off every caller is the local operator.

pub mod replay;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tonic::{Request, Response, Status};
use tutti_proto::v1 as pb;

use crate::api::ts;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::sched::Policy;
use crate::store::views::FAILURES_LISTED;
use crate::store::JobStore;
use tutti_shared::taskqueue::TaskQueue;

pub const DEFAULT_SHARE_WINDOW: Duration = Duration::from_secs(300);
pub const MAX_SHARE_WINDOW: Duration = Duration::from_secs(86_400);

pub struct OperatorService {
    pub store: Arc<dyn JobStore>,
    /// Worker timeout (who is gone) and tenant weights (fair shares).
    pub policy: Policy,
    /// The dead letters' queue (their count, and replays).
    pub queue: Arc<dyn TaskQueue>,
}

/// The API class of a stored priority rank.
fn class_pb(rank: i16) -> pb::Priority {
    tutti_shared::job::Priority::from_rank(i64::from(rank))
        .map_or(pb::Priority::Standard, pb::Priority::from)
}

/// Operators only: an admin key, or any caller while auth is off (no key at all).
fn check_operator(caller: &Caller) -> Result<()> {
    if caller.key.is_none() || caller.admin {
        Ok(())
    } else {
        Err(Error::PermissionDenied(
            "the operator API needs an admin key (tutti key create TENANT --admin)".into(),
        ))
    }
}

impl OperatorService {
    async fn workers(&self) -> Result<pb::ListWorkersResponse> {
        let rows = self.store.workers_view().await?;
        let tasks = self.store.dispatched_tasks().await?;
        let timeout = chrono::Duration::from_std(self.policy.worker_timeout)
            .map_err(|e| Error::Internal(format!("worker timeout: {e}")))?;
        let now = Utc::now();
        let mut workers: Vec<pb::WorkerInfo> = rows
            .into_iter()
            .map(|w| {
                let mine: Vec<_> = tasks.iter().filter(|t| t.worker == w.worker).collect();
                let in_use = |kind: &str| mine.iter().filter(|t| t.kind == kind).count() as u32;
                let (denoise_in_use, vocode_in_use) = (in_use("denoise"), in_use("vocode"));
                let mut stages = Vec::new();
                if w.denoise_slots > 0 {
                    stages.push("denoise".to_string());
                }
                if w.vocode_slots > 0 {
                    stages.push("vocode".to_string());
                }
                pb::WorkerInfo {
                    name: w.worker.clone(),
                    stages,
                    denoise_slots: w.denoise_slots,
                    vocode_slots: w.vocode_slots,
                    express_slots: w.express_slots,
                    denoise_in_use,
                    vocode_in_use,
                    express_in_use: denoise_in_use.saturating_sub(w.denoise_slots)
                        + vocode_in_use.saturating_sub(w.vocode_slots),
                    held_latents: w.holds.len() as u32,
                    draining: w.draining,
                    gone: now - w.last_seen > timeout,
                    last_heartbeat: Some(ts(w.last_seen)),
                    device: w.device.clone(),
                    chunks_per_forward: f64::from(w.chunks_per_forward),
                    models: w.models.clone(),
                    tasks: mine
                        .iter()
                        .map(|t| pb::WorkerTask {
                            job_id: t.job.to_string(),
                            chunk: t.chunk,
                            stage: t.kind.clone(),
                            class: class_pb(t.rank) as i32,
                        })
                        .collect(),
                }
            })
            .collect();
        // Live workers first, then by name.
        workers.sort_by(|a, b| (a.gone, &a.name).cmp(&(b.gone, &b.name)));
        Ok(pb::ListWorkersResponse {
            workers,
            worker_timeout_seconds: self.policy.worker_timeout.as_secs() as u32,
        })
    }

    async fn queues(&self, req: pb::GetQueuesRequest) -> Result<pb::GetQueuesResponse> {
        let window = match req.share_window_seconds {
            0 => DEFAULT_SHARE_WINDOW,
            s if u64::from(s) > MAX_SHARE_WINDOW.as_secs() => {
                return Err(Error::invalid(
                    "share_window_seconds",
                    format!("must be at most {}", MAX_SHARE_WINDOW.as_secs()),
                ))
            }
            s => Duration::from_secs(u64::from(s)),
        };
        let overview = self.store.queue_overview().await?;
        let now = Utc::now();
        let queues = overview
            .queues
            .into_iter()
            .map(|q| pb::StageQueue {
                stage: q.kind,
                class: class_pb(q.rank) as i32,
                pending: q.pending,
                in_flight: q.in_flight,
                oldest_wait_seconds: q.oldest_pending.map_or(0.0, |t| {
                    ((now - t).num_milliseconds().max(0) as f64) / 1000.0
                }),
            })
            .collect();
        let work = self.store.tenant_work(window).await?;
        // Per class: the tenants that did work in the window, their weights and seconds.
        let mut classes: BTreeMap<i16, (f64, f64)> = BTreeMap::new();
        for w in &work {
            let c = classes.entry(w.rank).or_default();
            c.0 += self.policy.weights.weight(&w.tenant);
            c.1 += w.millis.max(0) as f64 / 1000.0;
        }
        let shares = work
            .iter()
            .map(|w| {
                let (weights, seconds) = classes.get(&w.rank).copied().unwrap_or_default();
                let weight = self.policy.weights.weight(&w.tenant);
                let work_seconds = w.millis.max(0) as f64 / 1000.0;
                pb::TenantShare {
                    tenant: w.tenant.clone(),
                    class: class_pb(w.rank) as i32,
                    weight,
                    fair_share: if weights > 0.0 { weight / weights } else { 0.0 },
                    share: if seconds > 0.0 {
                        work_seconds / seconds
                    } else {
                        0.0
                    },
                    tasks_done: w.tasks,
                    work_seconds,
                }
            })
            .collect();
        let failures = self
            .store
            .failed_jobs(FAILURES_LISTED)
            .await?
            .into_iter()
            .map(|f| pb::Failure {
                job_id: f.job.to_string(),
                tenant: f.tenant,
                code: f.code,
                message: f.message,
                at: f.at.map(ts),
            })
            .collect();
        let failed_tasks = self
            .store
            .failed_tasks(FAILURES_LISTED)
            .await?
            .into_iter()
            .map(|t| pb::FailedTask {
                job_id: t.job.to_string(),
                chunk: t.chunk,
                stage: t.kind,
                attempt: t.attempt,
                worker: t.worker.unwrap_or_default(),
                error: t.error,
                state: t.state,
                at: t.at.map(ts),
            })
            .collect();
        let dead_letters = self
            .store
            .dead_letters(FAILURES_LISTED)
            .await?
            .into_iter()
            .map(|d| pb::DeadLetter {
                refused_by: d.by,
                queue: d.queue,
                error: d.error,
                size_bytes: d.size_bytes,
                at: Some(ts(d.at)),
            })
            .collect();
        let replays = self
            .store
            .replays(FAILURES_LISTED)
            .await?
            .into_iter()
            .map(replay::replay_pb)
            .collect();
        // The view still answers when the broker does not; the count is then 0 (logged).
        let dead_letters_waiting = self.queue.dead_letters().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "counting dead letters");
            0
        });
        Ok(pb::GetQueuesResponse {
            dead_letters,
            replays,
            dead_letters_waiting,
            queues,
            shares,
            share_window_seconds: window.as_secs() as u32,
            failures,
            failed_tasks,
            jobs_queued: overview.jobs_queued,
            jobs_running: overview.jobs_running,
        })
    }
}

/// The tonic service: a cheap handle over the shared state.
#[derive(Clone)]
pub struct OperatorApi(pub Arc<OperatorService>);

#[tonic::async_trait]
impl pb::operator_server::Operator for OperatorApi {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        check_operator(&Caller::of(&request)?)?;
        Ok(Response::new(self.0.workers().await?))
    }

    async fn get_queues(
        &self,
        request: Request<pb::GetQueuesRequest>,
    ) -> Result<Response<pb::GetQueuesResponse>, Status> {
        check_operator(&Caller::of(&request)?)?;
        Ok(Response::new(self.0.queues(request.into_inner()).await?))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let caller = Caller::of(&request)?;
        check_operator(&caller)?;
        Ok(Response::new(
            self.0.replay(&caller, request.get_ref()).await?,
        ))
    }
}
