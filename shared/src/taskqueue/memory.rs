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

use super::{Acker, Consumer, Delivery, QueueError, QueueName, Replayed, TaskQueue};
use crate::messages::ControlMessage;

/// A message as published: body and headers.
#[derive(Clone)]
struct Message {
    body: Vec<u8>,
    headers: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    queues: HashMap<QueueName, VecDeque<Message>>,
    /// Dead letters with the queue each was refused from, oldest first.
    dead: Vec<(QueueName, Message)>,
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

    fn push(&self, queue: QueueName, msg: Message, front: bool) {
        self.with(|s| {
            let q = s.queues.entry(queue).or_default();
            if front {
                q.push_front(msg);
            } else {
                q.push_back(msg);
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
    msg: Option<Message>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(msg) = self.msg.take() {
            self.inner.push(self.queue, msg, true);
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.msg = None;
        Ok(())
    }
    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        if let Some(msg) = self.msg.take() {
            if requeue {
                self.inner.push(self.queue, msg, true);
            } else {
                let queue = self.queue;
                self.inner.with(|s| s.dead.push((queue, msg)));
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
            if let Some((queue, msg)) = found {
                let acker = MemoryAcker {
                    inner: Arc::clone(&self.inner),
                    queue,
                    msg: Some(msg.clone()),
                    _permit: permit,
                };
                let delivery = Delivery::new(queue, msg.body, Box::new(acker));
                return Some(Ok(delivery.with_headers(msg.headers)));
            }
            notified.await;
        }
    }

    async fn close(self: Box<Self>) {}
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn publish(&self, queue: QueueName, body: &[u8]) -> Result<(), QueueError> {
        self.publish_with_headers(queue, body, &HashMap::new())
            .await
    }

    async fn publish_with_headers(
        &self,
        queue: QueueName,
        body: &[u8],
        headers: &HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let msg = Message {
            body: body.to_vec(),
            headers: headers.clone(),
        };
        self.inner.push(queue, msg, false);
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

    async fn replay_dead_letters(
        &self,
        limit: u32,
        only: Option<QueueName>,
    ) -> Result<Vec<Replayed>, QueueError> {
        let taken: Vec<(QueueName, Message)> = self.inner.with(|s| {
            let mut taken = Vec::new();
            let mut kept = Vec::new();
            for (queue, msg) in s.dead.drain(..) {
                if taken.len() < limit as usize && only.is_none_or(|q| q == queue) {
                    taken.push((queue, msg));
                } else {
                    kept.push((queue, msg));
                }
            }
            s.dead = kept;
            taken
        });
        let mut replayed = Vec::with_capacity(taken.len());
        for (queue, msg) in taken {
            replayed.push(Replayed {
                queue,
                size_bytes: msg.body.len() as u64,
            });
            self.inner.push(queue, msg, false);
        }
        Ok(replayed)
    }

    async fn consumers(&self, queue: QueueName) -> Result<u32, QueueError> {
        Ok(self
            .inner
            .with(|s| s.consumers.get(&queue).copied().unwrap_or(0)))
    }
}
