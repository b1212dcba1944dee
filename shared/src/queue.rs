//! RabbitMQ topology and connection handling (lapin).
//!
//! Queues are durable quorum queues (classic durable where the server lacks quorum support),
//! messages persistent, publishes confirmed. A task message that cannot be parsed is rejected
//! without requeue and lands in the dead-letter queue through `tutti.dlx`.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::job::TaskKind;

/// Names of every exchange and queue, under one prefix (default `tutti`) so that several farms
/// (or test farms) can share a broker without taking each other's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new("tutti")
    }
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    pub fn denoise_queue(&self) -> String {
        format!("{}.denoise", self.prefix)
    }
    pub fn vocode_queue(&self) -> String {
        format!("{}.vocode", self.prefix)
    }
    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }
    /// The queue that carries tasks of a kind.
    pub fn task_queue(&self, kind: TaskKind) -> String {
        match kind {
            TaskKind::Denoise => self.denoise_queue(),
            TaskKind::Vocode => self.vocode_queue(),
        }
    }
    /// One worker's own queue for a kind (chunk affinity): a task published there waits for
    /// that worker until its expiration, then dead-letters to [`task_queue`](Self::task_queue).
    pub fn worker_queue(&self, worker: &str, kind: TaskKind) -> String {
        format!("{}.worker.{worker}.{}", self.prefix, kind.as_str())
    }
}

/// How long a worker's own queue outlives its last consumer. Longer than any affinity wait, so
/// every message left in it expires (and dead-letters to the shared queue) before the queue
/// goes: a deleted queue drops its messages instead of dead-lettering them, which is why the
/// queue is neither exclusive nor auto-delete.
pub const WORKER_QUEUE_EXPIRES: Duration = Duration::from_secs(120);

/// Declares a worker's own queue for `kind` (classic, durable; idempotent). Durable because a
/// broker restart deletes transient queues with their messages: a task the worker had in hand
/// (returned to its queue when the connection dropped) or that waited there for it was lost and
/// came back only when its task lease ran out.
pub async fn declare_worker_queue(
    ch: &Channel,
    t: &Topology,
    worker: &str,
    kind: TaskKind,
) -> Result<String, QueueError> {
    let name = t.worker_queue(worker, kind);
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(t.task_queue(kind))),
    );
    args.insert(
        ShortString::from("x-expires"),
        AMQPValue::LongUInt(WORKER_QUEUE_EXPIRES.as_millis() as u32),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(&name, options, args).await?;
    Ok(name)
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker did not confirm the publish to {0}")]
    NotConfirmed(String),
    #[error("encoding message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How long a publish waits for the broker's confirm: one lost with a dying connection must not
/// hold a dispatch round (and its transaction) or a worker's result for good.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects, retrying with exponential backoff (capped at 5 s) until `give_up_after` passes.
pub async fn connect(url: &str, give_up_after: Duration) -> Result<Connection, QueueError> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(conn) => return Ok(conn),
            Err(e) if started.elapsed() < give_up_after => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "amqp connect failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens a channel with publisher confirms on.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, QueueError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Declares every exchange and queue tutti uses. Idempotent; run by coordinators and workers.
pub async fn declare_topology(conn: &Connection, t: &Topology) -> Result<(), QueueError> {
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dlx = t.dead_letter_exchange();
    ch.exchange_declare(&dlx, ExchangeKind::Fanout, durable, FieldTable::default())
        .await?;
    ch.exchange_declare(
        &t.control_exchange(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    declare_durable_queue(conn, &t.dead_letter_queue(), None).await?;
    ch.queue_bind(
        &t.dead_letter_queue(),
        &dlx,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for q in [t.denoise_queue(), t.vocode_queue(), t.results_queue()] {
        declare_durable_queue(conn, &q, Some(&dlx)).await?;
    }
    let _ = ch.close(200, "topology declared").await;
    Ok(())
}

/// A durable queue, quorum when the server supports it. Declaring an existing queue with other
/// arguments fails and closes the channel, so each attempt uses its own channel.
async fn declare_durable_queue(
    conn: &Connection,
    name: &str,
    dead_letter_exchange: Option<&str>,
) -> Result<(), QueueError> {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut base = FieldTable::default();
    if let Some(dlx) = dead_letter_exchange {
        base.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(dlx)),
        );
    }
    let mut quorum = base.clone();
    quorum.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let ch = conn.create_channel().await?;
    match ch.queue_declare(name, opts, quorum).await {
        Ok(_) => {
            let _ = ch.close(200, "declared").await;
            Ok(())
        }
        Err(e) => {
            tracing::info!(queue = name, error = %e, "quorum queue refused, declaring a classic durable queue");
            let ch = conn.create_channel().await?;
            ch.queue_declare(name, opts, base).await?;
            let _ = ch.close(200, "declared").await;
            Ok(())
        }
    }
}

/// Sets how many unacknowledged deliveries a consumer on `ch` may hold.
pub async fn set_prefetch(ch: &Channel, prefetch: u16) -> Result<(), QueueError> {
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    Ok(())
}

/// Publishes a persistent JSON message and waits for the broker's confirm.
pub async fn publish_json<T: serde::Serialize>(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    message: &T,
    headers: FieldTable,
) -> Result<(), QueueError> {
    let body = serde_json::to_vec(message)?;
    publish_bytes(ch, exchange, routing_key, &body, headers).await
}

/// Publishes persistent bytes and waits for the broker's confirm.
pub async fn publish_bytes(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    headers: FieldTable,
) -> Result<(), QueueError> {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    let publish = async {
        ch.basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?
        .await
    };
    let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, publish)
        .await
        .map_err(|_| QueueError::NotConfirmed(format!("{routing_key} (no answer in time)")))??;
    match confirm {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(QueueError::NotConfirmed(routing_key.to_string())),
    }
}
