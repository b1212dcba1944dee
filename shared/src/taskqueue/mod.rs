//! The task queue behind one trait: RabbitMQ (lapin) for the farm, an in-process queue for
//! embedded mode. Both give the same contract, checked by one conformance suite
//! (`tests` below): publishes are durable once `publish` returns; a delivery is settled by
//! `ack` or `nack`; an unsettled delivery comes back (to any consumer) when its consumer goes
//! away; `nack(requeue = false)` dead-letters; a consumer holds at most `prefetch` unsettled
//! deliveries; control messages fan out to every subscriber.

mod amqp;
mod memory;

use std::collections::HashMap;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use amqp::AmqpQueue;
pub use memory::MemoryQueue;

use crate::job::TaskKind;
use crate::messages::ControlMessage;
pub use crate::queue::QueueError;

/// The queues tutti uses; each backend maps them to its own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueName {
    Task(TaskKind),
    Results,
}

/// A dead letter put back on the queue it was refused from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub queue: QueueName,
    pub size_bytes: u64,
}

impl QueueName {
    /// `denoise`, `vocode` or `results`, as operators and the dead-letter records name it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Task(kind) => kind.as_str(),
            QueueName::Results => "results",
        }
    }
}

/// Settles one delivery; implemented by each backend.
#[async_trait]
pub trait Acker: Send {
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), QueueError>;
}

/// A message handed to a consumer, to be settled exactly once.
pub struct Delivery {
    pub queue: QueueName,
    pub data: Vec<u8>,
    /// String headers the message was published with (W3C trace context on RabbitMQ); empty on
    /// backends without headers.
    pub headers: HashMap<String, String>,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub fn new(queue: QueueName, data: Vec<u8>, acker: Box<dyn Acker>) -> Self {
        Self {
            queue,
            data,
            headers: HashMap::new(),
            acker,
        }
    }
    pub fn with_headers(mut self, headers: HashMap<String, String>) -> Self {
        self.headers = headers;
        self
    }
    pub async fn ack(self) -> Result<(), QueueError> {
        self.acker.ack().await
    }
    /// `requeue = false` sends the message to the dead letters.
    pub async fn nack(self, requeue: bool) -> Result<(), QueueError> {
        self.acker.nack(requeue).await
    }
}

#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` or an error when the connection behind it is gone.
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>>;
    /// Stops consuming; unsettled deliveries go back to their queues.
    async fn close(self: Box<Self>);
}

#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// Publishes and returns once the queue holds the message (a broker confirm).
    async fn publish(&self, queue: QueueName, body: &[u8]) -> Result<(), QueueError>;
    /// Publishes a task for one worker (chunk affinity): it waits up to `wait` in that
    /// worker's own queue for `kind`; if the worker has not taken it by then, or has no own
    /// queue, it goes to the shared queue of its kind. Backends without per-worker queues
    /// publish to the shared queue at once.
    async fn publish_to_worker(
        &self,
        worker: &str,
        kind: TaskKind,
        body: &[u8],
        wait: std::time::Duration,
        headers: &HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let _ = (worker, wait);
        self.publish_with_headers(QueueName::Task(kind), body, headers)
            .await
    }
    /// Publishes like `publish`, with string headers (the W3C trace context of the task, so
    /// that the consumer's spans join the producer's trace). Backends without message headers
    /// drop them; consumers then fall back to the context inside the message.
    async fn publish_with_headers(
        &self,
        queue: QueueName,
        body: &[u8],
        headers: &HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let _ = headers;
        self.publish(queue, body).await
    }
    /// One round trip to the broker (readiness probes): Ok while it answers.
    async fn ping(&self) -> Result<(), QueueError> {
        self.consumers(QueueName::Results).await.map(|_| ())
    }
    /// Consumes the shared queue of `kind` and `worker`'s own queue for it (where
    /// [`publish_to_worker`](Self::publish_to_worker) sends), each holding at most `prefetch`
    /// unsettled deliveries. Deliveries from either report `QueueName::Task(kind)`. Backends
    /// without per-worker queues consume the shared queue only.
    async fn consume_worker(
        &self,
        kind: TaskKind,
        prefetch: u16,
        worker: &str,
    ) -> Result<Box<dyn Consumer>, QueueError> {
        self.consume(&[QueueName::Task(kind)], prefetch, worker)
            .await
    }
    /// Publishes without waiting for a confirm (progress reports).
    async fn publish_best_effort(&self, queue: QueueName, body: &[u8]) -> Result<(), QueueError> {
        self.publish(queue, body).await
    }
    /// Consumes from `queues`, holding at most `prefetch` unsettled deliveries.
    async fn consume(
        &self,
        queues: &[QueueName],
        prefetch: u16,
        tag: &str,
    ) -> Result<Box<dyn Consumer>, QueueError>;
    /// Sends a control message to every current subscriber.
    async fn broadcast(&self, msg: &ControlMessage) -> Result<(), QueueError>;
    /// Control messages from now on; the stream ends when the connection behind it does.
    async fn control(&self) -> Result<BoxStream<'static, ControlMessage>, QueueError>;
    /// Messages waiting in the dead-letter queue.
    async fn dead_letters(&self) -> Result<u64, QueueError>;
    /// Puts up to `limit` dead letters (oldest first) back on the queues they were refused
    /// from, each published (confirmed) before it leaves the dead letters, so a failure midway
    /// loses nothing (at worst a message is there twice, which the results' fencing absorbs).
    /// With `only`, just that queue's. A dead letter whose origin is unknown stays.
    async fn replay_dead_letters(
        &self,
        limit: u32,
        only: Option<QueueName>,
    ) -> Result<Vec<Replayed>, QueueError>;
    /// Consumers attached to a queue (readiness checks and tests).
    async fn consumers(&self, queue: QueueName) -> Result<u32, QueueError>;
}

#[cfg(test)]
mod tests;
