//! The workers as the scheduler sees them: who is live, how many slots each kind has, how
//! many tasks each worker has in hand, and where a job's next chunk should go (chunk
//! affinity: the worker that still holds the job's latent, while it is live and has room).

use std::collections::{HashMap, HashSet};

use tutti_shared::job::{Priority, TaskKind};
use uuid::Uuid;

/// A worker's latest heartbeat, and whether it is recent enough to count.
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub worker: String,
    pub denoise_slots: u32,
    pub vocode_slots: u32,
    /// Interactive tasks of each kind it serves that it takes beyond its slots.
    pub express_slots: u32,
    pub holds: Vec<Uuid>,
    pub draining: bool,
    pub live: bool,
}

impl WorkerState {
    fn slots(&self, kind: TaskKind) -> u32 {
        if !self.live || self.draining {
            return 0;
        }
        match kind {
            TaskKind::Denoise => self.denoise_slots,
            TaskKind::Vocode => self.vocode_slots,
        }
    }

    /// Interactive tasks of `kind` it takes beyond its slots (for each kind it serves).
    fn express(&self, kind: TaskKind) -> u32 {
        if self.slots(kind) > 0 {
            self.express_slots
        } else {
            0
        }
    }
}

/// Dispatched tasks of one kind and class, by the worker that has them (`None`: not yet
/// known, e.g. still in the shared queue).
#[derive(Debug, Clone)]
pub struct Busy {
    pub worker: Option<String>,
    pub kind: TaskKind,
    pub class: Priority,
    pub tasks: u32,
}

/// How full a kind is: its capacity, the workers' express headroom for interactive work, and
/// the tasks in flight per class (by rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub capacity: u32,
    pub express: u32,
    pub in_flight: [u32; 3],
}

impl Load {
    /// Room for any class.
    pub fn room(&self) -> u32 {
        self.capacity
            .saturating_sub(self.in_flight.iter().sum::<u32>())
    }

    /// Room for interactive work: the capacity plus the express headroom.
    pub fn interactive_room(&self) -> u32 {
        (self.capacity + self.express).saturating_sub(self.in_flight.iter().sum::<u32>())
    }
}

#[derive(Debug)]
pub struct Fleet {
    workers: HashMap<String, (WorkerState, HashSet<Uuid>)>,
    busy: HashMap<(String, TaskKind), u32>,
    loads: HashMap<TaskKind, Load>,
}

impl Fleet {
    /// `fallback` bounds each kind while no worker has ever sent a heartbeat.
    pub fn new(workers: Vec<WorkerState>, busy: &[Busy], fallback: u32) -> Self {
        let mut loads = HashMap::new();
        for kind in TaskKind::ALL {
            let capacity = if workers.is_empty() {
                fallback
            } else {
                workers.iter().map(|w| w.slots(*kind)).sum()
            };
            let express = workers.iter().map(|w| w.express(*kind)).sum();
            loads.insert(
                *kind,
                Load {
                    capacity,
                    express,
                    in_flight: [0; 3],
                },
            );
        }
        let mut per_worker = HashMap::new();
        for b in busy {
            if let Some(load) = loads.get_mut(&b.kind) {
                load.in_flight[b.class.rank() as usize] += b.tasks;
            }
            if let Some(w) = &b.worker {
                *per_worker.entry((w.clone(), b.kind)).or_insert(0) += b.tasks;
            }
        }
        Self {
            workers: workers
                .into_iter()
                .map(|w| {
                    let holds = w.holds.iter().copied().collect();
                    (w.worker.clone(), (w, holds))
                })
                .collect(),
            busy: per_worker,
            loads,
        }
    }

    pub fn load(&self, kind: TaskKind) -> Load {
        self.loads.get(&kind).copied().unwrap_or_default()
    }

    /// The worker a job's task should wait for: the one that ran the previous chunk, if it
    /// still holds the job's latent, is live, takes work and has a free slot of this kind (or,
    /// for interactive work, of its express lane). Counts the task against that worker.
    pub fn route(
        &mut self,
        job: Uuid,
        kind: TaskKind,
        class: Priority,
        previous: Option<&str>,
    ) -> Option<String> {
        let (w, holds) = self.workers.get(previous?)?;
        let busy = self.busy.entry((w.worker.clone(), kind)).or_insert(0);
        let express = if class == Priority::Interactive {
            w.express(kind)
        } else {
            0
        };
        if !holds.contains(&job) || *busy >= w.slots(kind) + express {
            return None;
        }
        *busy += 1;
        Some(w.worker.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, denoise: u32, live: bool, draining: bool, holds: &[Uuid]) -> WorkerState {
        WorkerState {
            worker: name.into(),
            denoise_slots: denoise,
            vocode_slots: 1,
            express_slots: 1,
            holds: holds.to_vec(),
            draining,
            live,
        }
    }

    fn busy(worker: Option<&str>, class: Priority, tasks: u32) -> Busy {
        Busy {
            worker: worker.map(str::to_string),
            kind: TaskKind::Denoise,
            class,
            tasks,
        }
    }

    #[test]
    fn without_heartbeats_the_static_bound_holds() {
        let f = Fleet::new(Vec::new(), &[busy(None, Priority::Batch, 5)], 8);
        let load = f.load(TaskKind::Denoise);
        assert_eq!((load.capacity, load.room()), (8, 3));
        assert_eq!(f.load(TaskKind::Vocode).room(), 8);
    }

    #[test]
    fn capacity_is_the_slots_of_live_workers_that_take_work() {
        let f = Fleet::new(
            vec![
                worker("a", 4, true, false, &[]),
                worker("b", 8, true, true, &[]),
                worker("c", 16, false, false, &[]),
            ],
            &[
                busy(Some("a"), Priority::Interactive, 1),
                busy(None, Priority::Batch, 2),
            ],
            64,
        );
        let load = f.load(TaskKind::Denoise);
        assert_eq!(load.capacity, 4);
        assert_eq!(load.in_flight, [1, 0, 2]);
        assert_eq!(load.room(), 1);
        // One express slot per live worker that takes work (only a), for interactive work.
        assert_eq!((load.express, load.interactive_room()), (1, 2));
        // Every worker gone: nothing goes out (not the static bound).
        let gone = Fleet::new(vec![worker("c", 16, false, false, &[])], &[], 64);
        assert_eq!(gone.load(TaskKind::Denoise).capacity, 0);
    }

    #[test]
    fn a_chunk_follows_its_latent_while_the_holder_has_room() {
        let job = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut f = Fleet::new(
            vec![
                worker("a", 2, true, false, &[job, other]),
                worker("d", 2, true, true, &[job]),
            ],
            &[busy(Some("a"), Priority::Batch, 1)],
            64,
        );
        assert_eq!(f.route(job, TaskKind::Denoise, Priority::Batch, None), None);
        assert_eq!(
            f.route(job, TaskKind::Denoise, Priority::Batch, Some("d")),
            None,
            "draining"
        );
        assert_eq!(
            f.route(job, TaskKind::Denoise, Priority::Batch, Some("x")),
            None,
            "unknown"
        );
        assert_eq!(
            f.route(
                Uuid::new_v4(),
                TaskKind::Denoise,
                Priority::Batch,
                Some("a")
            ),
            None
        );
        assert_eq!(
            f.route(job, TaskKind::Denoise, Priority::Batch, Some("a"))
                .as_deref(),
            Some("a")
        );
        // a's two slots are taken now; its express slot is for interactive work only.
        assert_eq!(
            f.route(other, TaskKind::Denoise, Priority::Batch, Some("a")),
            None
        );
        assert_eq!(
            f.route(other, TaskKind::Denoise, Priority::Interactive, Some("a"))
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            f.route(other, TaskKind::Denoise, Priority::Interactive, Some("a")),
            None
        );
    }
}
