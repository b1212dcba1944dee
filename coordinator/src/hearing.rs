//! Whether this coordinator has been able to hear its workers. Workers prove they are alive by
//! heartbeats that travel over the broker into the store; while either is unreachable the
//! coordinator hears nothing, and that silence is its own, not the workers'. So a worker is
//! only declared lost (and a task's lease only expires) after the coordinator has listened
//! without a break for the whole timeout: after an outage of Postgres or RabbitMQ, or a start
//! of this process, live workers get a full window to be heard again, and their chunks are
//! not computed twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Since when the coordinator has heard without a break; shared by the probe, the results
/// consumer and the dispatcher.
#[derive(Debug, Clone)]
pub struct Hearing(Arc<Mutex<Instant>>);

impl Default for Hearing {
    /// Listening starts now.
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Hearing {
    /// The store or the broker failed just now: nothing was heard, whatever the workers sent.
    pub fn deaf(&self) {
        // A poisoned lock holds a valid instant all the same.
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// How long the coordinator has listened without a break.
    pub fn heard_for(&self) -> Duration {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    /// Whether silence of `timeout` means something now.
    pub fn can_judge(&self, timeout: Duration) -> bool {
        self.heard_for() >= timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_counts_only_after_a_whole_window_of_listening() {
        let h = Hearing::default();
        let timeout = Duration::from_secs(10);
        assert!(!h.can_judge(timeout), "a new coordinator judges no one");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(h.can_judge(timeout));
        h.deaf();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!h.can_judge(timeout), "an outage restarts the window");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(h.can_judge(timeout));
    }
}
