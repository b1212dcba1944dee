//! Which pending tasks go out in one dispatch round. Per kind, the room is its capacity less
//! the tasks in flight; interactive work may also use the workers' express headroom (chunks a
//! worker takes beyond its slots), so it never waits for a batch chunk to end. Interactive work goes first, then standard, then batch; within a
//! class, tenants share by weight (`fair`), and each tenant's tasks go oldest job first (so
//! jobs under way finish before new ones start). Batch keeps a small share of the capacity
//! while batch work waits, so a backfill never stops; the rest of the batch work waits while
//! higher classes do, and a batch job's next chunk that waits so is preempted: it stays in
//! the backlog and resumes later from its checkpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tutti_shared::job::{Priority, TaskKind};

use super::fair::FairClocks;
use super::fleet::Load;
use super::TenantWeights;

/// A pending, due task, as the plan needs to know it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: TaskKind,
    pub class: Priority,
    pub tenant: String,
    /// Continues a job under way (a chunk after the first): passing it over preempts the job.
    pub resumes: bool,
}

/// The round's decision, as indices into the candidates.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// In dispatch order.
    pub picks: Vec<usize>,
    /// Batch chunks of jobs under way that yield to waiting interactive or standard work.
    pub preempted: Vec<usize>,
}

/// Slots of a kind kept for batch work while it waits: `share` of the capacity, at least
/// one, and never all of it (higher classes always keep a slot).
pub fn batch_reserve(capacity: u32, share: f64) -> u32 {
    if share <= 0.0 || capacity < 2 {
        return 0;
    }
    ((f64::from(capacity) * share).floor() as u32).clamp(1, capacity - 1)
}

/// Decides a round. `candidates` come in queue order within each (kind, class, tenant).
pub fn plan(
    candidates: &[Candidate],
    load: impl Fn(TaskKind) -> Load,
    clocks: &mut FairClocks,
    weights: &TenantWeights,
    batch_share: f64,
) -> Plan {
    let mut out = Plan::default();
    for kind in TaskKind::ALL.iter().copied() {
        let mut queues: HashMap<Priority, BTreeMap<&str, VecDeque<usize>>> = HashMap::new();
        for (i, c) in candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == kind)
        {
            queues
                .entry(c.class)
                .or_default()
                .entry(c.tenant.as_str())
                .or_default()
                .push_back(i);
        }
        let waiting = |q: &HashMap<Priority, BTreeMap<&str, VecDeque<usize>>>, class| {
            q.get(&class)
                .map_or(0, |t| t.values().map(VecDeque::len).sum::<usize>()) as u32
        };
        let load = load(kind);
        let room = load.room();
        let batch_waiting = waiting(&queues, Priority::Batch);
        let higher_waiting =
            waiting(&queues, Priority::Interactive) + waiting(&queues, Priority::Standard) > 0;
        let batch_rank = Priority::Batch.rank() as usize;
        let batch_need = batch_reserve(load.capacity, batch_share)
            .saturating_sub(load.in_flight[batch_rank])
            .min(batch_waiting)
            .min(room);
        let mut take = |class: Priority, n: u32, picks: &mut Vec<usize>| {
            let Some(tenants) = queues.get_mut(&class) else {
                return 0;
            };
            let mut taken = 0;
            while taken < n {
                let waiting = tenants
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(t, _)| *t);
                let Some(tenant) = clocks.serve(kind, class, waiting, weights) else {
                    break;
                };
                if let Some(i) = tenants.get_mut(tenant).and_then(VecDeque::pop_front) {
                    picks.push(i);
                }
                taken += 1;
            }
            taken
        };
        // Interactive work may also use the workers' express headroom, beyond the slots.
        let express = load.interactive_room() - room;
        let mut left = room - batch_need;
        let interactive = take(Priority::Interactive, left + express, &mut out.picks);
        left -= interactive.saturating_sub(express);
        left -= take(Priority::Standard, left, &mut out.picks);
        take(Priority::Batch, left + batch_need, &mut out.picks);
        if higher_waiting {
            if let Some(tenants) = queues.get(&Priority::Batch) {
                out.preempted.extend(
                    tenants
                        .values()
                        .flatten()
                        .copied()
                        .filter(|i| candidates[*i].resumes),
                );
            }
        }
    }
    out.preempted.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(class: Priority, tenant: &str, resumes: bool) -> Candidate {
        Candidate {
            kind: TaskKind::Denoise,
            class,
            tenant: tenant.into(),
            resumes,
        }
    }

    fn denoise(capacity: u32, in_flight: [u32; 3]) -> impl Fn(TaskKind) -> Load {
        move |k| match k {
            TaskKind::Denoise => Load {
                capacity,
                express: 0,
                in_flight,
            },
            TaskKind::Vocode => Load::default(),
        }
    }

    fn run(cands: &[Candidate], load: impl Fn(TaskKind) -> Load, share: f64) -> Plan {
        plan(
            cands,
            load,
            &mut FairClocks::default(),
            &TenantWeights::default(),
            share,
        )
    }

    #[test]
    fn classes_go_in_order_within_the_room() {
        let cands = [
            c(Priority::Batch, "t", false),
            c(Priority::Standard, "t", false),
            c(Priority::Interactive, "t", false),
            c(Priority::Standard, "t", false),
        ];
        let p = run(&cands, denoise(4, [0, 0, 1]), 0.0);
        assert_eq!(p.picks, vec![2, 1, 3]);
        assert!(run(&cands, denoise(4, [2, 2, 0]), 0.0).picks.is_empty());
    }

    #[test]
    fn batch_keeps_its_share_while_it_waits() {
        assert_eq!(batch_reserve(10, 0.1), 1);
        assert_eq!(batch_reserve(40, 0.1), 4);
        assert_eq!(batch_reserve(2, 0.9), 1);
        assert_eq!(batch_reserve(1, 0.1), 0);
        assert_eq!(batch_reserve(10, 0.0), 0);
        let mut cands: Vec<Candidate> = (0..20)
            .map(|_| c(Priority::Interactive, "t", false))
            .collect();
        cands.extend((0..5).map(|_| c(Priority::Batch, "t", false)));
        let p = run(&cands, denoise(10, [0, 0, 0]), 0.1);
        let batch = p.picks.iter().filter(|i| **i >= 20).count();
        assert_eq!((p.picks.len(), batch), (10, 1));
        // With its share in flight already, batch waits for the higher classes.
        let p = run(&cands, denoise(10, [0, 0, 1]), 0.1);
        assert_eq!(p.picks, (0..9).collect::<Vec<_>>());
        // Nothing else waiting: batch takes the whole room.
        let p = run(&cands[20..], denoise(10, [0, 0, 1]), 0.1);
        assert_eq!(p.picks.len(), 5);
    }

    #[test]
    fn a_running_batch_job_yields_its_next_chunk_to_waiting_interactive_work() {
        let cands = [
            c(Priority::Batch, "t", true),
            c(Priority::Batch, "t", false),
            c(Priority::Interactive, "u", false),
        ];
        let p = run(&cands, denoise(1, [0, 0, 0]), 0.1);
        assert_eq!(p.picks, vec![2]);
        assert_eq!(p.preempted, vec![0], "only the job under way is preempted");
        // No room at all: the interactive task waits too, and the batch chunk still yields.
        let p = run(&cands, denoise(1, [0, 0, 1]), 0.1);
        assert_eq!((p.picks.len(), p.preempted.clone()), (0, vec![0]));
        // Nothing of a higher class waits: no preemption.
        let p = run(&cands[..2], denoise(1, [0, 0, 0]), 0.1);
        assert_eq!((p.picks, p.preempted), (vec![0], vec![]));
    }

    #[test]
    fn tenants_share_a_class_by_weight() {
        let mut cands: Vec<Candidate> = (0..20).map(|_| c(Priority::Batch, "a", false)).collect();
        cands.extend((0..20).map(|_| c(Priority::Batch, "b", false)));
        let weights: TenantWeights = "a=1,b=3".parse().expect("weights");
        let mut clocks = FairClocks::default();
        let p = plan(&cands, denoise(8, [0; 3]), &mut clocks, &weights, 0.1);
        let b = p.picks.iter().filter(|i| **i >= 20).count();
        assert_eq!((p.picks.len() - b, b), (2, 6));
        // Each tenant's tasks go in their order.
        let a: Vec<usize> = p.picks.iter().copied().filter(|i| *i < 20).collect();
        assert_eq!(a, vec![0, 1]);
    }

    #[test]
    fn interactive_work_uses_the_express_headroom_and_nothing_else_does() {
        let mut cands: Vec<Candidate> = (0..3)
            .map(|_| c(Priority::Interactive, "t", false))
            .collect();
        cands.extend((0..3).map(|_| c(Priority::Standard, "t", false)));
        cands.push(c(Priority::Batch, "t", true));
        // Every slot busy with batch work, two express slots: two interactive tasks go out,
        // nothing else, and the running batch job yields its next chunk.
        let full = |k| match k {
            TaskKind::Denoise => Load {
                capacity: 4,
                express: 2,
                in_flight: [0, 0, 4],
            },
            TaskKind::Vocode => Load::default(),
        };
        let p = run(&cands, full, 0.1);
        assert_eq!((p.picks, p.preempted), (vec![0, 1], vec![6]));
        // A free slot besides: three interactive, still no standard.
        let one_free = |k| match k {
            TaskKind::Denoise => Load {
                capacity: 4,
                express: 2,
                in_flight: [0, 0, 3],
            },
            TaskKind::Vocode => Load::default(),
        };
        assert_eq!(run(&cands, one_free, 0.0).picks, vec![0, 1, 2]);
        // One interactive task already in the express lane: one more fits, then none.
        let used = |k| match k {
            TaskKind::Denoise => Load {
                capacity: 4,
                express: 2,
                in_flight: [1, 0, 4],
            },
            TaskKind::Vocode => Load::default(),
        };
        assert_eq!(run(&cands, used, 0.0).picks, vec![0]);
    }

    #[test]
    fn kinds_have_rooms_of_their_own() {
        let mut v = c(Priority::Batch, "t", true);
        v.kind = TaskKind::Vocode;
        let cands = [c(Priority::Interactive, "t", false), v];
        let p = run(
            &cands,
            |_| Load {
                capacity: 1,
                express: 0,
                in_flight: [0; 3],
            },
            0.1,
        );
        assert_eq!((p.picks, p.preempted), (vec![0, 1], vec![]));
    }
}
