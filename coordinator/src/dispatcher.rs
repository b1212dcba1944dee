//! The dispatch loop: whenever tasks change (or every half second, for backoffs coming due),
//! the dispatcher opens a round in the store, plans it (`sched`) from committed state, publishes
//! what the round marked dispatched and only then commits it (a failed publish rolls the round
//! back; a crash before the commit re-dispatches the same attempt, which the result fence
//! absorbs); once a second, tasks of workers whose heartbeats
//! stopped and expired leases go back to the backlog. Queue and database errors are logged
//! and retried with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;
use tutti_shared::messages::TaskMessage;
use tutti_shared::taskqueue::{QueueError, QueueName, TaskQueue};

use crate::error::Result;
use crate::hearing::Hearing;
use crate::sched::{plan_round, Policy};
use crate::store::{JobStore, RetryPolicy};

/// One dispatch round: plan it in a store transaction, publish its tasks, commit. Returns how
/// many tasks went out.
pub async fn dispatch_once(
    store: &dyn JobStore,
    queue: &dyn TaskQueue,
    policy: &Policy,
) -> Result<usize> {
    let mut round = store.begin_round().await?;
    let outgoing = plan_round(round.as_mut(), policy).await?;
    // Published together: each publish waits for the broker's confirm (a persistent message),
    // and one after the other a round took a confirm per task, while interactive work that came
    // meanwhile waited for the round to end. Any failure rolls the round back.
    let publishes = outgoing.iter().map(|o| {
        publish_task(
            queue,
            &o.message,
            &o.body,
            o.routed_to.as_deref().map(|w| (w, policy.affinity_wait)),
            o.message.priority.as_str(),
        )
    });
    futures::future::try_join_all(publishes).await?;
    round.commit().await?;
    Ok(outgoing.len())
}

/// Publishes a task (the encoded `msg`) to its kind's queue inside a `dispatch` span that
/// continues the job's submit trace; the span's context rides in the message's headers, so the
/// worker's task span is its child, whichever coordinator dispatches and whenever.
/// `route`: the worker that holds the job's latent and how long the task waits for it.
pub(crate) async fn publish_task(
    queue: &dyn TaskQueue,
    msg: &TaskMessage,
    body: &[u8],
    route: Option<(&str, Duration)>,
    class: &str,
) -> Result<(), QueueError> {
    let span = tracing::info_span!(
        "dispatch",
        job_id = %msg.job_id,
        tenant = %msg.tenant,
        chunk = msg.chunk,
        attempt = msg.attempt,
        kind = msg.kind.as_str(),
    );
    let submit: HashMap<String, String> = msg.spec.trace_context.clone().into_iter().collect();
    tutti_shared::telemetry::set_parent_from_headers(&span, &submit);
    let headers = span.in_scope(tutti_shared::telemetry::current_context_headers);
    let published = match route {
        Some((worker, wait)) => {
            queue
                .publish_to_worker(worker, msg.kind, body, wait, &headers)
                .instrument(span.clone())
                .await
        }
        None => {
            queue
                .publish_with_headers(QueueName::Task(msg.kind), body, &headers)
                .instrument(span.clone())
                .await
        }
    };
    if published.is_ok() {
        // Inside the span, so the log line carries the job's trace id.
        span.in_scope(|| {
            tracing::info!(
                job_id = %msg.job_id,
                chunk = msg.chunk,
                attempt = msg.attempt,
                kind = msg.kind.as_str(),
                class,
                routed_to = route.map(|(w, _)| w).unwrap_or(""),
                "dispatched"
            )
        });
    }
    published
}

pub struct Dispatcher {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn TaskQueue>,
    pub policy: Policy,
    pub retry: RetryPolicy,
    pub task_lease: Duration,
    /// Silence is judged only while the coordinator itself could hear (see `hearing`).
    pub hearing: Hearing,
}

impl Dispatcher {
    /// Runs until `shutdown` flips to true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut last_lease_check = std::time::Instant::now();
        while !*shutdown.borrow() {
            if last_lease_check.elapsed() > Duration::from_secs(1) {
                last_lease_check = std::time::Instant::now();
                let timeout = self.policy.worker_timeout;
                if self.hearing.can_judge(timeout) {
                    if let Err(e) = self.store.reclaim_lost(timeout, self.retry).await {
                        self.hearing.deaf();
                        tracing::warn!(error = %e, "dispatcher: worker liveness check failed");
                    }
                }
                if let Err(e) = self.store.expire_deadlines().await {
                    crate::observe::count_error(&e);
                    tracing::warn!(error = %e, "dispatcher: deadline check failed");
                }
                if self.hearing.can_judge(self.task_lease) {
                    if let Err(e) = self.store.expire_leases(self.task_lease, self.retry).await {
                        self.hearing.deaf();
                        crate::observe::count_error(&e);
                        tracing::warn!(error = %e, "dispatcher: lease check failed");
                    }
                }
            }
            match dispatch_once(self.store.as_ref(), self.queue.as_ref(), &self.policy).await {
                Ok(n) => {
                    backoff = Duration::from_millis(100);
                    if n > 0 {
                        continue;
                    }
                }
                Err(e) => {
                    if matches!(e, crate::error::Error::Database(_)) {
                        self.hearing.deaf();
                    }
                    crate::observe::count_error(&e);
                    tracing::warn!(error = %e, "dispatcher: dispatch failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = self.store.notifier().wait_for_tasks(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
