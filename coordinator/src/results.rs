//! Consumes worker events and hands them to the store, which advances jobs with results
//! fenced by (job, chunk, attempt). An event that cannot be parsed is dead-lettered; one the
//! store cannot apply now is requeued, to be applied once the database is back.
//!
//! Events are applied in lanes: interactive jobs' results and progress in a lane of their own
//! (so that they never wait behind a backfill's), the others in `LANES` lanes by job, heartbeats
//! by worker. One job's or one worker's events keep their order.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tutti_shared::blob::BlobStore;
use tutti_shared::job::{checkpoint_key, Priority};
use tutti_shared::messages::{ControlMessage, WorkerEvent};
use tutti_shared::metrics::names;
use tutti_shared::taskqueue::{Delivery, QueueName, TaskQueue};

use crate::error::{Error, Result};
use crate::hearing::Hearing;
use crate::store::{DeadLetter, Heartbeat, JobStore, Recorded, RetryPolicy, Scope, TaskRef};
use uuid::Uuid;

/// Lanes for the events of other classes than interactive (each applies one event at a time,
/// holding a database connection). One for now: on the 2-core benchmark machine four cost 20% of
/// the sustained submit rate (862 vs 1,081/s, `bench farm --duration 30s`, two runs each) with
/// no latency gain above the noise, as the farm then works its backlog harder during the flood.
/// Raise it on a coordinator with cores to spare.
const LANES: usize = 1;

/// The lane of interactive jobs' events; the others are `1..=LANES`.
const INTERACTIVE_LANE: usize = 0;

#[derive(Clone)]
pub struct ResultsConsumer {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn TaskQueue>,
    pub retry: RetryPolicy,
    /// Where a result of an unknown job left its checkpoint.
    pub blobs: Arc<dyn BlobStore>,
    /// Told when events cannot be consumed or applied (the broker or the store is down).
    pub hearing: Hearing,
}

/// The lane of an event: the interactive lane for an interactive job's, else its job's (its
/// worker's for a heartbeat). A job's class never changes, so its events share one lane.
fn lane(event: &WorkerEvent) -> usize {
    let mut h = DefaultHasher::new();
    match event {
        WorkerEvent::Progress {
            priority: Priority::Interactive,
            ..
        }
        | WorkerEvent::Result {
            priority: Priority::Interactive,
            ..
        } => return INTERACTIVE_LANE,
        WorkerEvent::Progress { job_id, .. } | WorkerEvent::Result { job_id, .. } => {
            job_id.hash(&mut h)
        }
        WorkerEvent::Heartbeat { worker, .. } | WorkerEvent::DeadLetter { worker, .. } => {
            worker.hash(&mut h)
        }
    }
    1 + (h.finish() % LANES as u64) as usize
}

impl ResultsConsumer {
    /// Consumes until `shutdown` flips; reconnects with backoff when the queue goes away.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            match self.consume(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.hearing.deaf();
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
        let mut lanes = JoinSet::new();
        // Unbounded, so that a busy lane never holds up the others' events behind it in the
        // stream: the prefetch above bounds what the lanes hold.
        let mut senders = Vec::with_capacity(LANES + 1);
        for _ in 0..=LANES {
            let (tx, rx) = mpsc::unbounded_channel::<(Delivery, WorkerEvent)>();
            lanes.spawn(self.clone().drain(rx));
            senders.push(tx);
        }
        let ended = loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                // A lane stops only when acking failed: the channel is gone, reconnect.
                Some(lane) = lanes.join_next() => {
                    break match lane {
                        Ok(Err(e)) => Err(e),
                        Ok(Ok(())) => Err(Error::Internal("a results lane stopped".into())),
                        Err(e) => Err(Error::Internal(format!("a results lane panicked: {e}"))),
                    };
                }
                _ = shutdown.changed() => break Ok(()),
            };
            let Some(delivery) = delivery else {
                break Err(Error::Internal("results consumer stream ended".into()));
            };
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => break Err(e.into()),
            };
            let event: WorkerEvent = match serde_json::from_slice(&delivery.data) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "unparseable worker event, dead-lettering");
                    metrics::counter!(names::DEAD_LETTERS, "by" => "coordinator").increment(1);
                    let letter = DeadLetter {
                        by: "coordinator",
                        queue: "results",
                        error: &e.to_string(),
                        size_bytes: delivery.data.len() as u64,
                    };
                    if let Err(e) = self.store.record_dead_letter(&letter).await {
                        tracing::warn!(error = %e, "recording a dead letter's cause");
                    }
                    if let Err(e) = delivery.nack(false).await {
                        break Err(e.into());
                    }
                    continue;
                }
            };
            if senders[lane(&event)].send((delivery, event)).is_err() {
                break Err(Error::Internal("a results lane stopped".into()));
            }
        };
        // Events in the lanes are applied and acked before the consumer closes.
        drop(senders);
        while lanes.join_next().await.is_some() {}
        consumer.close().await;
        ended
    }

    /// Applies one lane's events in order, acking each once applied.
    async fn drain(self, mut rx: mpsc::UnboundedReceiver<(Delivery, WorkerEvent)>) -> Result<()> {
        while let Some((delivery, event)) = rx.recv().await {
            match self.apply(&event).await {
                Ok(()) => delivery.ack().await?,
                Err(e) => {
                    self.hearing.deaf();
                    crate::observe::count_error(&e);
                    tracing::warn!(error = %e, "applying worker event failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    delivery.nack(true).await?;
                }
            }
        }
        Ok(())
    }

    /// The reply to a result of a job this farm never accepted (a forged or foreign task):
    /// its checkpoint is deleted, and a cancel tells every worker to drop what it holds of
    /// that job and to refuse its further chunks.
    async fn forget(&self, job: Uuid, chunk: u32) -> Result<()> {
        // A missing task row alone does not make the job unknown: only a job the store has
        // never heard of is forgotten.
        if self.store.get_job(Scope::All, job).await?.is_some() {
            tracing::warn!(job_id = %job, chunk, "a result for a task its job does not have, dropped");
            return Ok(());
        }
        tracing::warn!(job_id = %job, chunk, "a worker ran a task of an unknown job; its checkpoint is deleted and the job cancelled on the workers");
        self.blobs.delete(&[checkpoint_key(job, chunk)]).await?;
        self.queue
            .broadcast(&ControlMessage::Cancel { job_id: job })
            .await?;
        Ok(())
    }

    pub async fn apply(&self, event: &WorkerEvent) -> Result<()> {
        match event {
            WorkerEvent::Progress {
                job_id,
                chunk,
                attempt,
                worker,
                steps_done,
                ..
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
                ..
            } => {
                let task = TaskRef {
                    job: *job_id,
                    chunk: *chunk,
                    attempt: *attempt,
                    worker,
                };
                match self.store.record_result(task, outcome, self.retry).await? {
                    Recorded::UnknownTask => self.forget(*job_id, *chunk).await,
                    Recorded::Applied | Recorded::Dropped => Ok(()),
                }
            }
            // Worker liveness and capacity bound dispatch; holds steer chunk affinity.
            WorkerEvent::Heartbeat {
                worker,
                denoise_slots,
                vocode_slots,
                holds,
                draining,
                express_slots,
                device,
                chunks_per_forward,
                models,
            } => {
                let hb = Heartbeat {
                    worker,
                    denoise_slots: *denoise_slots,
                    vocode_slots: *vocode_slots,
                    express_slots: *express_slots,
                    holds,
                    draining: *draining,
                    device,
                    chunks_per_forward: *chunks_per_forward,
                    models,
                };
                self.store.record_heartbeat(&hb).await
            }
            WorkerEvent::DeadLetter {
                worker,
                queue,
                error,
                size_bytes,
            } => {
                let letter = DeadLetter {
                    by: worker,
                    queue,
                    error,
                    size_bytes: *size_bytes,
                };
                self.store.record_dead_letter(&letter).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_shared::messages::Outcome;
    use uuid::Uuid;

    #[test]
    fn a_jobs_events_share_a_lane_and_interactive_jobs_have_their_own() {
        let progress = |job_id, priority| WorkerEvent::Progress {
            job_id,
            chunk: 0,
            attempt: 1,
            worker: "w1".into(),
            steps_done: 3,
            priority,
        };
        let result = |job_id, worker: &str, priority| WorkerEvent::Result {
            job_id,
            chunk: 0,
            attempt: 1,
            worker: worker.into(),
            outcome: Outcome::Cancelled,
            priority,
        };
        let heartbeat = |worker: &str| WorkerEvent::Heartbeat {
            worker: worker.into(),
            denoise_slots: 1,
            vocode_slots: 1,
            holds: Vec::new(),
            draining: false,
            express_slots: 0,
            device: String::new(),
            chunks_per_forward: 0.0,
            models: Vec::new(),
        };
        let mut used = [false; LANES + 1];
        for i in 0..200 {
            let job = Uuid::new_v4();
            for class in [Priority::Batch, Priority::Standard] {
                // Whichever worker reports it, a job's events keep their order.
                let l = lane(&progress(job, class));
                assert_eq!(l, lane(&result(job, "w1", class)));
                assert_eq!(l, lane(&result(job, "w2", class)));
                assert_ne!(l, INTERACTIVE_LANE);
                used[l] = true;
            }
            assert_eq!(
                lane(&progress(job, Priority::Interactive)),
                INTERACTIVE_LANE
            );
            assert_eq!(
                lane(&result(job, "w1", Priority::Interactive)),
                INTERACTIVE_LANE
            );
            assert_ne!(lane(&heartbeat(&format!("w{i}"))), INTERACTIVE_LANE);
        }
        used[INTERACTIVE_LANE] = true;
        assert!(used.iter().all(|u| *u), "lanes left idle: {used:?}");
    }

    #[tokio::test]
    async fn a_result_of_an_unknown_job_deletes_its_checkpoint_and_cancels_it_on_the_workers() {
        use futures::StreamExt;
        use tutti_shared::blob::LocalStore;
        use tutti_shared::taskqueue::MemoryQueue;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::SqliteStore::open(&dir.path().join("jobs.db"))
            .await
            .expect("sqlite");
        let blobs = Arc::new(LocalStore::new(dir.path().join("blobs")));
        let queue = Arc::new(MemoryQueue::new());
        let mut control = queue.control().await.expect("control stream");
        let consumer = ResultsConsumer {
            store: Arc::new(store),
            queue: queue.clone(),
            retry: RetryPolicy {
                max_attempts: 2,
                backoff: Duration::ZERO,
            },
            blobs: blobs.clone(),
            hearing: Hearing::default(),
        };
        let forged = Uuid::new_v4();
        let key = checkpoint_key(forged, 0);
        blobs
            .put(
                &key,
                bytes::Bytes::from_static(b"state"),
                "application/octet-stream",
            )
            .await
            .expect("put");
        let event = WorkerEvent::Result {
            job_id: forged,
            chunk: 0,
            attempt: 1,
            worker: "w1".into(),
            outcome: Outcome::Done {
                millis: 5,
                outputs: Vec::new(),
                held: true,
            },
            priority: Priority::Standard,
        };
        consumer.apply(&event).await.expect("apply");
        assert!(
            blobs.get(&key).await.expect("get").is_none(),
            "the checkpoint is left"
        );
        let msg = tokio::time::timeout(Duration::from_secs(5), control.next())
            .await
            .expect("a control message")
            .expect("the stream is open");
        assert_eq!(msg, ControlMessage::Cancel { job_id: forged });
    }
}
