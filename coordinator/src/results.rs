//! Consumes worker events and hands them to the store, which advances jobs with results
//! fenced by (job, chunk, attempt). An event that cannot be parsed is dead-lettered; one the
//! store cannot apply now is requeued, to be applied once the database is back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tutti_shared::messages::WorkerEvent;
use tutti_shared::metrics::names;
use tutti_shared::taskqueue::{QueueName, TaskQueue};

use crate::error::{Error, Result};
use crate::store::{Heartbeat, JobStore, RetryPolicy, TaskRef};

pub struct ResultsConsumer {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn TaskQueue>,
    pub retry: RetryPolicy,
}

impl ResultsConsumer {
    /// Consumes until `shutdown` flips; reconnects with backoff when the queue goes away.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            match self.consume(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "results consumer: reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume(&self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let mut consumer = self
            .queue
            .consume(&[QueueName::Results], 64, "coordinator")
            .await?;
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = shutdown.changed() => {
                    consumer.close().await;
                    return Ok(());
                }
            };
            let Some(delivery) = delivery else {
                return Err(Error::Internal("results consumer stream ended".into()));
            };
            let delivery = delivery?;
            let event: WorkerEvent = match serde_json::from_slice(&delivery.data) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "unparseable worker event, dead-lettering");
                    metrics::counter!(names::DEAD_LETTERS, "by" => "coordinator").increment(1);
                    delivery.nack(false).await?;
                    continue;
                }
            };
            match self.apply(&event).await {
                Ok(()) => delivery.ack().await?,
                Err(e) => {
                    crate::observe::count_error(&e);
                    tracing::warn!(error = %e, "applying worker event failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    delivery.nack(true).await?;
                }
            }
        }
    }

    pub async fn apply(&self, event: &WorkerEvent) -> Result<()> {
        match event {
            WorkerEvent::Progress {
                job_id,
                chunk,
                attempt,
                worker,
                steps_done,
            } => {
                let task = TaskRef {
                    job: *job_id,
                    chunk: *chunk,
                    attempt: *attempt,
                    worker,
                };
                self.store.record_progress(task, *steps_done).await
            }
            WorkerEvent::Result {
                job_id,
                chunk,
                attempt,
                worker,
                outcome,
            } => {
                let task = TaskRef {
                    job: *job_id,
                    chunk: *chunk,
                    attempt: *attempt,
                    worker,
                };
                self.store.record_result(task, outcome, self.retry).await
            }
            // Worker liveness and capacity bound dispatch; holds steer chunk affinity.
            WorkerEvent::Heartbeat {
                worker,
                denoise_slots,
                vocode_slots,
                holds,
                draining,
                express_slots,
            } => {
                let hb = Heartbeat {
                    worker,
                    denoise_slots: *denoise_slots,
                    vocode_slots: *vocode_slots,
                    express_slots: *express_slots,
                    holds,
                    draining: *draining,
                };
                self.store.record_heartbeat(&hb).await
            }
        }
    }
}
