//! An outage of the blob store is not the job's fault: a worker waits it out with the chunk
//! state in hand, for up to its outage budget, instead of failing the task and spending one of
//! the job's attempts (four attempts with 1-2-4 s backoff used to fail every job in flight
//! 15 s into a 30 s outage). Only transient errors are waited on (see
//! `BlobError::is_transient`); a refusal (a bad key, denied access) fails at once as before.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use tutti_shared::blob::BlobError;

/// The default budget (`--outage-budget`): longer than the outages an operator rides out by
/// restarting a server, shorter than the coordinator's task lease, so a task in hand is not
/// dispatched again while its worker waits.
pub const DEFAULT_OUTAGE_BUDGET: &str = "3m";

const FIRST_WAIT: Duration = Duration::from_millis(250);
const MOST_WAIT: Duration = Duration::from_secs(5);

/// Runs `op` until it succeeds, fails for good, or transient failures have lasted `budget`.
pub(super) async fn patiently<T, F, Fut>(
    budget: Duration,
    what: &str,
    mut op: F,
) -> Result<T, BlobError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BlobError>>,
{
    let began = Instant::now();
    let mut wait = FIRST_WAIT;
    let mut warned = false;
    loop {
        match op().await {
            Ok(v) => {
                if warned {
                    tracing::info!(
                        what,
                        waited_ms = began.elapsed().as_millis() as u64,
                        "the blob store is back"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.is_transient() && began.elapsed() + wait <= budget => {
                if !warned {
                    tracing::warn!(what, error = %e, budget_s = budget.as_secs(), "the blob store is unreachable; waiting it out");
                    warned = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MOST_WAIT);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn outage() -> BlobError {
        BlobError::S3 {
            op: "get",
            key: "k".into(),
            message: "dispatch failure: connection refused".into(),
            transient: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_waited_out_within_the_budget_and_refusals_are_not() {
        let calls = AtomicU32::new(0);
        let got = patiently(Duration::from_secs(60), "get", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=5 => Err(outage()),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 7);

        let began = tokio::time::Instant::now();
        let gone = patiently(Duration::from_secs(30), "get", || async {
            Err::<(), _>(outage())
        })
        .await;
        assert!(gone.is_err());
        let waited = began.elapsed();
        assert!(
            waited <= Duration::from_secs(30) && waited > Duration::from_secs(20),
            "{waited:?}"
        );

        let calls = AtomicU32::new(0);
        let refused = patiently(Duration::from_secs(30), "put", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(BlobError::InvalidKey("../x".into()))
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
