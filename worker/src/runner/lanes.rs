//! A kind's intake permits: a worker takes tasks while a slot is free, and interactive ones
//! also on its express lanes.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tutti_shared::job::Priority;

/// A kind's intake permits: `slots` for any task, `express` more for interactive ones.
pub(super) struct Lanes {
    slots: Arc<Semaphore>,
    express: Arc<Semaphore>,
}

impl Lanes {
    pub(super) fn new(slots: usize, express: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            express: Arc::new(Semaphore::new(express)),
        }
    }

    /// Waits until a task of some class could start.
    pub(super) async fn any_free(&self) -> Result<(), tokio::sync::AcquireError> {
        if self.slots.available_permits() > 0 || self.express.available_permits() > 0 {
            return Ok(());
        }
        tokio::select! {
            p = self.slots.acquire() => p.map(drop),
            p = self.express.acquire() => p.map(drop),
        }
    }

    /// A permit for a task of `class`: a slot, or for interactive work an express slot,
    /// whichever frees first. (A batch task read while only the express lane had room waits
    /// for a slot; the coordinator sends none beyond the slots, so that is rare and short.)
    pub(super) async fn take(
        &self,
        class: Priority,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
        if class != Priority::Interactive {
            return Arc::clone(&self.slots).acquire_owned().await;
        }
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(p);
        }
        tokio::select! {
            p = Arc::clone(&self.express).acquire_owned() => p,
            p = Arc::clone(&self.slots).acquire_owned() => p,
        }
    }
}
