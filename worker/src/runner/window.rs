//! Chunks per denoiser forward over the last minute, from the engine's running counters
//! (forwards run, chunk-steps they advanced): what a heartbeat tells operators of how well
//! continuous step batching fills this worker's forwards.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the figure looks.
pub(super) const WINDOW: Duration = Duration::from_secs(60);

/// Samples of the counters, oldest first, spanning at most `WINDOW`.
#[derive(Debug, Default)]
pub(super) struct ForwardWindow {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl ForwardWindow {
    /// Records the counters at `now`; the mean chunks per forward since the oldest sample in
    /// the window (0 when no forward ran in it).
    pub(super) fn sample(&mut self, now: Instant, forwards: u64, chunk_steps: u64) -> f32 {
        self.samples.push_back((now, forwards, chunk_steps));
        // Keep the newest sample at least WINDOW old as the baseline.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _, _)| now.duration_since(*t) >= WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(&(_, f0, c0)) = self.samples.front() else {
            return 0.0;
        };
        let (df, dc) = (forwards.saturating_sub(f0), chunk_steps.saturating_sub(c0));
        if df == 0 {
            0.0
        } else {
            dc as f32 / df as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_covers_the_last_minute() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = ForwardWindow::default();
        assert_eq!(w.sample(at(0), 0, 0), 0.0, "nothing ran yet");
        // 10 forwards of 4 chunks, then 10 of 1.
        assert_eq!(w.sample(at(2), 10, 40), 4.0);
        assert_eq!(w.sample(at(4), 20, 50), 2.5);
        // A minute later only the forwards of one chunk are in the window.
        for s in (6..=64).step_by(2) {
            w.sample(at(s), 20, 50);
        }
        assert_eq!(w.sample(at(66), 30, 60), 1.0);
        // Idle for a minute: no forward in the window.
        for s in (68..=130).step_by(2) {
            w.sample(at(s), 30, 60);
        }
        assert_eq!(w.sample(at(132), 30, 60), 0.0);
        assert!(w.samples.len() <= 32, "{} samples kept", w.samples.len());
    }
}
