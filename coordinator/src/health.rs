//! Readiness: every second a probe asks the job store and the task queue for one round trip
//! each. While either fails, or once the coordinator drains, gRPC health reports the Generation
//! service NOT_SERVING and `/readyz` answers 503; both come back when the dependencies do.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tutti_proto::v1::generation_server::GenerationServer;
use tutti_shared::metrics::Health;
use tutti_shared::taskqueue::TaskQueue;

use crate::api::GenerationApi;
use crate::hearing::Hearing;
use crate::store::JobStore;

const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the coordinator cannot serve now; `None` when it can.
async fn unready_reason(store: &dyn JobStore, queue: &dyn TaskQueue) -> Option<String> {
    let (db, broker) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, store.ping()),
        tokio::time::timeout(PROBE_TIMEOUT, queue.ping()),
    );
    let db = match db {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            crate::observe::count_error(&e);
            Some(format!("database: {e}"))
        }
        Err(_) => Some("database: no answer in time".to_string()),
    };
    let broker = match broker {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("queue: {e}")),
        Err(_) => Some("queue: no answer in time".to_string()),
    };
    match (db, broker) {
        (None, None) => None,
        (a, b) => Some(a.into_iter().chain(b).collect::<Vec<_>>().join("; ")),
    }
}

/// Probes until `shutdown` flips, then reports NOT_SERVING for the drain.
pub(crate) async fn probe(
    store: Arc<dyn JobStore>,
    queue: Arc<dyn TaskQueue>,
    hearing: Hearing,
    health: Health,
    reporter: HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut serving = None;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => continue,
        }
        let reason = unready_reason(store.as_ref(), queue.as_ref()).await;
        let ready = reason.is_none();
        if !ready {
            hearing.deaf();
        }
        if serving != Some(ready) {
            match &reason {
                Some(why) => tracing::warn!(reason = %why, "not ready"),
                None => tracing::info!("ready"),
            }
            set(&health, &reporter, ready).await;
            serving = Some(ready);
        }
    }
    // Draining: NOT_SERVING while in-flight calls finish.
    set(&health, &reporter, false).await;
}

async fn set(health: &Health, reporter: &HealthReporter, ready: bool) {
    health.set_ready(ready);
    if ready {
        reporter
            .set_serving::<GenerationServer<GenerationApi>>()
            .await;
    } else {
        reporter
            .set_not_serving::<GenerationServer<GenerationApi>>()
            .await;
    }
}
