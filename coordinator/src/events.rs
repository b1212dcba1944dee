//! Job change notifications from Postgres (`LISTEN tutti_jobs`), fanned out in process so that
//! every WatchJob stream on any coordinator replica hears every change.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::store::JOBS_CHANNEL;

/// One change: the job and what happened (`queued`, `started`, `step`, `stage`, `retry`,
/// `succeeded`, `failed`, `cancelled`).
#[derive(Debug, Clone)]
pub struct JobChange {
    pub job: Uuid,
    pub what: String,
}

#[derive(Clone)]
pub struct JobEvents {
    tx: broadcast::Sender<JobChange>,
}

impl JobEvents {
    pub fn start(pool: PgPool, mut shutdown: watch::Receiver<bool>) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let hub = Self { tx: tx.clone() };
        tokio::spawn(async move {
            while !*shutdown.borrow() {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "job events: listen failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if listener.listen(JOBS_CHANNEL).await.is_err() {
                    continue;
                }
                loop {
                    tokio::select! {
                        n = listener.recv() => match n {
                            Ok(n) => {
                                let mut parts = n.payload().splitn(2, ' ');
                                let job = parts.next().and_then(|s| s.parse().ok());
                                let what = parts.next().unwrap_or("").to_string();
                                if let Some(job) = job {
                                    let _ = tx.send(JobChange { job, what });
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "job events: connection lost");
                                break;
                            }
                        },
                        _ = shutdown.changed() => return,
                    }
                }
            }
        });
        hub
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobChange> {
        self.tx.subscribe()
    }
}
