//! Latents a worker still holds after their chunk finished (chunk affinity): a least recently
//! used cache of denoise states, one per job, bounded by bytes. The next chunk of a held job
//! starts from memory instead of the S3 checkpoint, which stays the fallback (a state evicted
//! here, or a chunk routed to another worker, reads S3). The set of held jobs is shared with the
//! runner, which reports it in heartbeats and decides whether to fetch a checkpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use tutti_model::DenoiseState;

/// Jobs whose latest state is held, and the step it is at; readable from any thread.
#[derive(Debug, Clone, Default)]
pub struct Holds(Arc<Mutex<HashMap<Uuid, usize>>>);

impl Holds {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Uuid, usize>) -> R) -> R {
        // Plain data: a panic elsewhere leaves nothing torn.
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// The step at which `job`'s state is held, if it is.
    pub fn step(&self, job: Uuid) -> Option<usize> {
        self.with(|m| m.get(&job).copied())
    }

    /// Every held job (heartbeats).
    pub fn jobs(&self) -> Vec<Uuid> {
        self.with(|m| m.keys().copied().collect())
    }
}

struct Entry {
    job: Uuid,
    state: DenoiseState,
    bytes: usize,
}

/// Owned by the engine thread (states are tensors on the engine's device).
pub struct HeldStates {
    budget: usize,
    used: usize,
    /// Least recently used first.
    entries: Vec<Entry>,
    holds: Holds,
}

impl HeldStates {
    /// A cache of at most `budget` bytes of tensors; 0 holds nothing.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            entries: Vec::new(),
            holds: Holds::default(),
        }
    }

    pub fn holds(&self) -> Holds {
        self.holds.clone()
    }

    /// Keeps `state` as `job`'s latest, replacing an older one and evicting the least recently
    /// used states past the budget. A state larger than the budget is not kept.
    pub fn insert(&mut self, job: Uuid, state: DenoiseState) {
        self.remove(job);
        let bytes = state.memory_bytes();
        if bytes > self.budget {
            return;
        }
        while self.used + bytes > self.budget && !self.entries.is_empty() {
            let old = self.entries.remove(0);
            self.forget(&old);
        }
        self.used += bytes;
        let step = state.step();
        self.holds.with(|m| m.insert(job, step));
        self.entries.push(Entry { job, state, bytes });
    }

    /// Takes `job`'s state if it is held at `step` (it leaves the cache: the chunk that takes it
    /// advances it, and a failed chunk falls back to the checkpoint).
    pub fn take(&mut self, job: Uuid, step: usize) -> Option<DenoiseState> {
        let i = self
            .entries
            .iter()
            .position(|e| e.job == job && e.state.step() == step)?;
        let e = self.entries.remove(i);
        self.forget(&e);
        Some(e.state)
    }

    /// Drops `job`'s state (cancelled, or replaced).
    pub fn remove(&mut self, job: Uuid) {
        if let Some(i) = self.entries.iter().position(|e| e.job == job) {
            let e = self.entries.remove(i);
            self.forget(&e);
        }
    }

    fn forget(&mut self, e: &Entry) {
        self.used -= e.bytes;
        self.holds.with(|m| m.remove(&e.job));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
