//! The in-process queue of embedded mode. It keeps the broker's semantics that the scheduler
//! relies on: an unsettled delivery is put back at the head of its queue when it is dropped
//! (its consumer went away), `nack` without requeue moves it to the dead letters, a semaphore
//! bounds unsettled deliveries per consumer, and control messages fan out over a broadcast
//! channel. Nothing survives the process: the job store re-dispatches what was in flight
//! (leases, and dispatched tasks reset on start), as the broker's redelivery would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{broadcast, Notify, OwnedSemaphorePermit, Semaphore};

use super::{Acker, Consumer, Delivery, QueueError, QueueName, TaskQueue};
use crate::messages::ControlMessage;

#[derive(Default)]
struct State {
    queues: HashMap<QueueName, VecDeque<Vec<u8>>>,
    dead: Vec<Vec<u8>>,
    consumers: HashMap<QueueName, u32>,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
    control: broadcast::Sender<ControlMessage>,
}

impl Inner {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn push(&self, queue: QueueName, body: Vec<u8>, front: bool) {
        self.with(|s| {
            let q = s.queues.entry(queue).or_default();
            if front {
                q.push_front(body);
            } else {
                q.push_back(body);
            }
        });
        self.notify.notify_waiters();
    }
}

/// A cheap handle; clones share the queues.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        let (control, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                control,
            }),
        }
    }

    /// Messages waiting (not delivered) in a queue.
    pub fn len(&self, queue: QueueName) -> usize {
        self.inner
            .with(|s| s.queues.get(&queue).map_or(0, VecDeque::len))
    }
}

struct MemoryAcker {
    inner: Arc<Inner>,
    queue: QueueName,
    /// `Some` until settled; a drop while `Some` puts the message back.
    body: Option<Vec<u8>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            self.inner.push(self.queue, body, true);
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.body = None;
        Ok(())
    }
    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        if let Some(body) = self.body.take() {
            if requeue {
                self.inner.push(self.queue, body, true);
            } else {
                self.inner.with(|s| s.dead.push(body));
            }
        }
        Ok(())
    }
}

struct MemoryConsumer {
    inner: Arc<Inner>,
    queues: Vec<QueueName>,
    permits: Arc<Semaphore>,
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.inner.with(|s| {
            for q in &self.queues {
                if let Some(n) = s.consumers.get_mut(q) {
                    *n = n.saturating_sub(1);
                }
            }
        });
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        loop {
            // Register for the wake-up before looking, so a publish in between is not missed.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self.inner.with(|s| {
                self.queues.iter().find_map(|q| {
                    s.queues
                        .get_mut(q)
                        .and_then(VecDeque::pop_front)
                        .map(|b| (*q, b))
                })
            });
            if let Some((queue, body)) = found {
                let acker = MemoryAcker {
                    inner: Arc::clone(&self.inner),
                    queue,
                    body: Some(body.clone()),
                    _permit: permit,
                };
                return Some(Ok(Delivery::new(queue, body, Box::new(acker))));
            }
            notified.await;
        }
    }

    async fn close(self: Box<Self>) {}
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn publish(&self, queue: QueueName, body: &[u8]) -> Result<(), QueueError> {
        self.inner.push(queue, body.to_vec(), false);
        Ok(())
    }

    async fn consume(
        &self,
        queues: &[QueueName],
        prefetch: u16,
        _tag: &str,
    ) -> Result<Box<dyn Consumer>, QueueError> {
        self.inner.with(|s| {
            for q in queues {
                *s.consumers.entry(*q).or_default() += 1;
            }
        });
        Ok(Box::new(MemoryConsumer {
            inner: Arc::clone(&self.inner),
            queues: queues.to_vec(),
            permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
        }))
    }

    async fn broadcast(&self, msg: &ControlMessage) -> Result<(), QueueError> {
        // No subscriber is not an error: a fanout exchange drops such messages too.
        let _ = self.inner.control.send(msg.clone());
        Ok(())
    }

    async fn control(&self) -> Result<BoxStream<'static, ControlMessage>, QueueError> {
        let rx = self.inner.control.subscribe();
        Ok(tokio_stream::wrappers::BroadcastStream::new(rx)
            .filter_map(|m| async move { m.ok() })
            .boxed())
    }

    async fn dead_letters(&self) -> Result<u64, QueueError> {
        Ok(self.inner.with(|s| s.dead.len() as u64))
    }

    async fn consumers(&self, queue: QueueName) -> Result<u32, QueueError> {
        Ok(self
            .inner
            .with(|s| s.consumers.get(&queue).copied().unwrap_or(0)))
    }
}
