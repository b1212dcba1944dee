//! Where a queued job stands: how many tasks the scheduler sends out before its next one, and
//! when it may start and end. The count follows dispatch's own rules: every waiting task of a
//! higher class goes first; within its class, tenants share by weight from the stored
//! fair-share clocks (`fair`), and the job's own tenant sends its older jobs first. The times
//! follow the live capacity and the farm's recent step rates.

use std::collections::BTreeMap;
use std::time::Duration;

use tutti_shared::job::{Priority, TaskKind};

use super::fair::{FairClocks, ShareRow};
use super::TenantWeights;

/// Positions past this are reported as this (a backfill of 100k items is "far").
pub const MAX_POSITION: u64 = 100_000;

/// The waiting work a queued task's position depends on.
#[derive(Debug, Clone, Default)]
pub struct Waiting {
    /// Pending, due tasks of the same kind in classes above the task's.
    pub higher: u64,
    /// The task's own tenant's tasks in its (kind, class) that go before it.
    pub own_ahead: u64,
    /// Other tenants' pending tasks in the task's (kind, class).
    pub others: BTreeMap<String, u64>,
}

/// What the store reads for a queued job's place.
#[derive(Debug, Clone)]
pub struct QueueRead {
    pub kind: TaskKind,
    pub class: Priority,
    pub tenant: String,
    pub waiting: Waiting,
    pub clocks: Vec<ShareRow>,
    pub pace: Pace,
    /// Denoising steps the job has left.
    pub steps_left: u32,
}

impl QueueRead {
    /// The job's position, and its estimated start and end from now.
    pub fn place(self, weights: &TenantWeights) -> (u64, Option<(Duration, Duration)>) {
        let p = position(
            self.kind,
            self.class,
            &self.tenant,
            &self.waiting,
            self.clocks,
            weights,
        );
        (p, estimate(p, self.steps_left, &self.pace))
    }
}

/// Tasks dispatched before the task of `tenant` in (`kind`, `class`).
pub fn position(
    kind: TaskKind,
    class: Priority,
    tenant: &str,
    waiting: &Waiting,
    clocks: Vec<ShareRow>,
    weights: &TenantWeights,
) -> u64 {
    let mut clocks = FairClocks::from_rows(clocks);
    let mut left = waiting.others.clone();
    left.retain(|_, n| *n > 0);
    let mut own = waiting.own_ahead;
    let mut served = 0u64;
    while waiting.higher + served < MAX_POSITION {
        let names: Vec<&str> = std::iter::once(tenant)
            .chain(left.keys().map(String::as_str))
            .collect();
        let Some(next) = clocks.serve(kind, class, names, weights) else {
            break;
        };
        if next == tenant {
            if own == 0 {
                break;
            }
            own -= 1;
        } else {
            let next = next.to_string();
            if let Some(n) = left.get_mut(&next) {
                *n -= 1;
                if *n == 0 {
                    left.remove(&next);
                }
            }
        }
        served += 1;
    }
    (waiting.higher + served).min(MAX_POSITION)
}

/// What the estimates read: the live capacity and the recent pace of work.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Denoise slots of live workers (or the static bound before any heartbeat).
    pub slots: u32,
    /// Denoise tasks dispatched and unfinished.
    pub in_flight: u32,
    /// Recent seconds of work per denoise step and per vocode task; `None` when nothing
    /// finished recently.
    pub secs_per_step: Option<f64>,
    pub secs_per_vocode: Option<f64>,
    /// Steps per denoise task (the job's chunk size).
    pub chunk_steps: u32,
}

/// From now: when the task at `position` may start, and when its job may end with
/// `steps_left` denoising steps and its vocode left. `None` without a recent pace.
pub fn estimate(position: u64, steps_left: u32, pace: &Pace) -> Option<(Duration, Duration)> {
    let per_step = pace.secs_per_step?;
    let per_vocode = pace.secs_per_vocode.unwrap_or(0.0);
    let slots = u64::from(pace.slots.max(1));
    let free = u64::from(pace.slots.saturating_sub(pace.in_flight));
    let per_task = per_step * f64::from(pace.chunk_steps.max(1));
    // The tasks ahead beyond the free slots go out a slot-full at a time, one task long each.
    let waves = position.saturating_sub(free).div_ceil(slots);
    let start = waves as f64 * per_task;
    let end = start + per_step * f64::from(steps_left) + per_vocode;
    Some((Duration::from_secs_f64(start), Duration::from_secs_f64(end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: TaskKind = TaskKind::Denoise;

    fn waiting(higher: u64, own: u64, others: &[(&str, u64)]) -> Waiting {
        Waiting {
            higher,
            own_ahead: own,
            others: others.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn higher_classes_and_the_tenants_older_work_go_first() {
        let w = TenantWeights::default();
        assert_eq!(
            position(K, Priority::Standard, "a", &waiting(0, 0, &[]), vec![], &w),
            0
        );
        assert_eq!(
            position(K, Priority::Standard, "a", &waiting(3, 2, &[]), vec![], &w),
            5
        );
    }

    #[test]
    fn tenants_share_by_weight_before_the_task() {
        // Equal weights: the tenants alternate, so b's 10 tasks let about 3 go before a's 3rd.
        let w = TenantWeights::default();
        let p = position(
            K,
            Priority::Batch,
            "a",
            &waiting(0, 2, &[("b", 10)]),
            vec![],
            &w,
        );
        assert!((4..=5).contains(&p), "{p}");
        // b weighs 3: three of b's go for each of a's.
        let w: TenantWeights = "b=3".parse().expect("weights");
        let p = position(
            K,
            Priority::Batch,
            "a",
            &waiting(0, 2, &[("b", 10)]),
            vec![],
            &w,
        );
        assert!((8..=9).contains(&p), "{p}");
        // A tenant with little waiting adds only that.
        let p = position(
            K,
            Priority::Batch,
            "a",
            &waiting(0, 5, &[("b", 1)]),
            vec![],
            &w,
        );
        assert_eq!(p, 6);
        // The stored clocks count: b served far ahead waits for a.
        let clocks = vec![ShareRow {
            kind: K,
            class: Priority::Batch,
            tenant: Some("b".into()),
            vtime: 100.0,
        }];
        let w = TenantWeights::default();
        let p = position(
            K,
            Priority::Batch,
            "a",
            &waiting(0, 2, &[("b", 10)]),
            clocks,
            &w,
        );
        assert_eq!(p, 2);
    }

    #[test]
    fn estimates_follow_the_free_slots_and_the_pace() {
        let pace = Pace {
            slots: 2,
            in_flight: 1,
            secs_per_step: Some(0.5),
            secs_per_vocode: Some(1.0),
            chunk_steps: 4,
        };
        // A free slot: it starts now, and ends after its 8 steps and its vocode.
        let (start, end) = estimate(0, 8, &pace).expect("pace");
        assert_eq!((start.as_secs_f64(), end.as_secs_f64()), (0.0, 5.0));
        // Three ahead with one free slot: two more go out in one wave of 2-second tasks.
        let (start, end) = estimate(3, 8, &pace).expect("pace");
        assert_eq!((start.as_secs_f64(), end.as_secs_f64()), (2.0, 7.0));
        assert!(estimate(0, 8, &Pace::default()).is_none());
    }
}
