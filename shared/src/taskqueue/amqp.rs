//! The task queue on RabbitMQ: one connection per handle, reopened (with the topology
//! declared again) when it is lost; publishes on a confirm channel; each consumer on its own
//! channel, so closing it returns its unacked deliveries to their queues.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::ShortString;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;

use super::{Acker, Consumer, Delivery, QueueError, QueueName, Replayed, TaskQueue};
use crate::job::TaskKind;
use crate::messages::ControlMessage;
use crate::queue::{self, Topology};

pub struct AmqpQueue {
    url: String,
    topology: Topology,
    connect_timeout: Duration,
    conn: Mutex<Option<(Connection, Channel)>>,
}

impl AmqpQueue {
    pub fn new(url: impl Into<String>, topology: Topology) -> Self {
        Self {
            url: url.into(),
            topology,
            connect_timeout: Duration::from_secs(2),
            conn: Mutex::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn name(&self, q: QueueName) -> String {
        match q {
            QueueName::Task(kind) => self.topology.task_queue(kind),
            QueueName::Results => self.topology.results_queue(),
        }
    }

    /// The live connection and its confirm channel, reconnecting (and declaring the topology)
    /// first if needed.
    async fn live(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<(Connection, Channel)>>, QueueError> {
        let mut guard = self.conn.lock().await;
        let live = guard
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !live {
            let conn = queue::connect(&self.url, self.connect_timeout).await?;
            queue::declare_topology(&conn, &self.topology).await?;
            let ch = queue::confirm_channel(&conn).await?;
            *guard = Some((conn, ch));
        }
        Ok(guard)
    }

    async fn new_channel(&self) -> Result<Channel, QueueError> {
        let guard = self.live().await?;
        match guard.as_ref() {
            Some((c, _)) => Ok(c.create_channel().await?),
            None => Err(QueueError::NotConfirmed("no connection".into())),
        }
    }

    async fn publish_channel(&self) -> Result<Channel, QueueError> {
        let guard = self.live().await?;
        guard
            .as_ref()
            .map(|(_, ch)| ch.clone())
            .ok_or_else(|| QueueError::NotConfirmed("no connection".into()))
    }

    /// Forgets the connection after an error so that the next call opens a new one.
    async fn reset(&self) {
        if let Some((c, _)) = self.conn.lock().await.take() {
            let _ = c.close(200, "reconnecting").await;
        }
    }
}

struct AmqpAcker(lapin::acker::Acker);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        Ok(self.0.ack(BasicAckOptions::default()).await?)
    }
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        Ok(self
            .0
            .nack(BasicNackOptions {
                requeue,
                multiple: false,
            })
            .await?)
    }
}

struct AmqpConsumer {
    channel: Channel,
    names: Vec<(String, QueueName)>,
    deliveries: futures::stream::SelectAll<lapin::Consumer>,
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        let d = match self.deliveries.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e.into())),
        };
        let routing = d.routing_key.as_str().to_string();
        let queue = self
            .names
            .iter()
            .find(|(n, _)| *n == routing)
            .map_or(self.names[0].1, |(_, q)| *q);
        let headers = crate::telemetry::headers_from_amqp(d.properties.headers().as_ref());
        Some(Ok(Delivery::new(
            queue,
            d.data,
            Box::new(AmqpAcker(d.acker)),
        )
        .with_headers(headers)))
    }

    async fn close(self: Box<Self>) {
        let _ = self.channel.close(200, "consumer closed").await;
    }
}

#[async_trait]
impl TaskQueue for AmqpQueue {
    async fn publish(&self, queue: QueueName, body: &[u8]) -> Result<(), QueueError> {
        let ch = self.publish_channel().await?;
        let res =
            queue::publish_bytes(&ch, "", &self.name(queue), body, FieldTable::default()).await;
        if res.is_err() {
            self.reset().await;
        }
        res
    }

    async fn publish_with_headers(
        &self,
        queue: QueueName,
        body: &[u8],
        headers: &std::collections::HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let ch = self.publish_channel().await?;
        let table = crate::telemetry::amqp_headers(headers);
        let res = queue::publish_bytes(&ch, "", &self.name(queue), body, table).await;
        if res.is_err() {
            self.reset().await;
        }
        res
    }

    async fn publish_to_worker(
        &self,
        worker: &str,
        kind: TaskKind,
        body: &[u8],
        wait: Duration,
        headers: &std::collections::HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let ch = self.publish_channel().await?;
        let own = self.topology.worker_queue(worker, kind);
        // The expiration moves an untaken task on to the shared queue (the worker queue's
        // dead-letter route); `mandatory` returns it when the worker has no queue.
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_expiration(ShortString::from(wait.as_millis().max(1).to_string()))
            .with_headers(crate::telemetry::amqp_headers(headers));
        let sent = async {
            ch.basic_publish(
                "",
                &own,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?
            .await
        };
        let Ok(sent) = tokio::time::timeout(crate::queue::CONFIRM_TIMEOUT, sent).await else {
            self.reset().await;
            return Err(QueueError::NotConfirmed(format!(
                "{own} (no answer in time)"
            )));
        };
        match sent {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => {
                tracing::debug!(queue = %own, "no such worker queue, publishing to the shared queue");
                self.publish_with_headers(QueueName::Task(kind), body, headers)
                    .await
            }
            Ok(Confirmation::Nack(_)) => Err(QueueError::NotConfirmed(own)),
            Err(e) => {
                self.reset().await;
                Err(e.into())
            }
        }
    }

    async fn consume_worker(
        &self,
        kind: TaskKind,
        prefetch: u16,
        worker: &str,
    ) -> Result<Box<dyn Consumer>, QueueError> {
        let channel = match self.new_channel().await {
            Ok(c) => c,
            Err(e) => {
                self.reset().await;
                return Err(e);
            }
        };
        // Per-consumer prefetch: quorum queues (the shared ones) refuse global QoS, so the
        // worker holds at most `prefetch` from each queue and bounds its batch itself.
        queue::set_prefetch(&channel, prefetch).await?;
        let own = queue::declare_worker_queue(&channel, &self.topology, worker, kind).await?;
        let shared = self.topology.task_queue(kind);
        let mut consumers = Vec::new();
        let mut names = Vec::new();
        for name in [own, shared] {
            let c = channel
                .basic_consume(
                    &name,
                    &format!("{worker}-{}", uuid::Uuid::new_v4().simple()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(c);
            names.push((name, QueueName::Task(kind)));
        }
        Ok(Box::new(AmqpConsumer {
            channel,
            names,
            deliveries: futures::stream::select_all(consumers),
        }))
    }

    async fn publish_best_effort(&self, queue: QueueName, body: &[u8]) -> Result<(), QueueError> {
        let ch = self.publish_channel().await?;
        // The confirm is not awaited: progress may be lost, results never are.
        ch.basic_publish(
            "",
            &self.name(queue),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await?;
        Ok(())
    }

    async fn consume(
        &self,
        queues: &[QueueName],
        prefetch: u16,
        tag: &str,
    ) -> Result<Box<dyn Consumer>, QueueError> {
        let channel = match self.new_channel().await {
            Ok(c) => c,
            Err(e) => {
                self.reset().await;
                return Err(e);
            }
        };
        queue::set_prefetch(&channel, prefetch).await?;
        let mut consumers = Vec::new();
        let mut names = Vec::new();
        for q in queues {
            let name = self.name(*q);
            let c = channel
                .basic_consume(
                    &name,
                    &format!("{tag}-{}", uuid::Uuid::new_v4().simple()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(c);
            names.push((name, *q));
        }
        if names.is_empty() {
            return Err(QueueError::NotConfirmed("no queue to consume".into()));
        }
        Ok(Box::new(AmqpConsumer {
            channel,
            names,
            deliveries: futures::stream::select_all(consumers),
        }))
    }

    async fn broadcast(&self, msg: &ControlMessage) -> Result<(), QueueError> {
        let ch = self.publish_channel().await?;
        let res = queue::publish_json(
            &ch,
            &self.topology.control_exchange(),
            "",
            msg,
            FieldTable::default(),
        )
        .await;
        if res.is_err() {
            self.reset().await;
        }
        res
    }

    async fn control(&self) -> Result<BoxStream<'static, ControlMessage>, QueueError> {
        // A private queue bound to the fanout exchange, gone with its channel.
        let ch = self.new_channel().await?;
        let q = ch
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            q.name().as_str(),
            &self.topology.control_exchange(),
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                q.name().as_str(),
                "",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        // The channel lives as long as the stream.
        Ok(consumer
            .take_while(|d| futures::future::ready(d.is_ok()))
            .filter_map(move |d| {
                let _keep = &ch;
                let msg = d
                    .ok()
                    .and_then(|d| serde_json::from_slice::<ControlMessage>(&d.data).ok());
                futures::future::ready(msg)
            })
            .boxed())
    }

    async fn dead_letters(&self) -> Result<u64, QueueError> {
        Ok(u64::from(
            self.counts(&self.topology.dead_letter_queue()).await?.0,
        ))
    }

    async fn consumers(&self, queue: QueueName) -> Result<u32, QueueError> {
        Ok(self.counts(&self.name(queue)).await?.1)
    }

    async fn replay_dead_letters(
        &self,
        limit: u32,
        only: Option<QueueName>,
    ) -> Result<Vec<Replayed>, QueueError> {
        let dead = self.topology.dead_letter_queue();
        // At most what waits now: a message put back below is not fetched again.
        let waiting = self.counts(&dead).await?.0.min(limit);
        let ch = self.new_channel().await?;
        let publish = self.publish_channel().await?;
        let mut replayed = Vec::new();
        // Held unsettled until the end, so that `basic_get` moves past them.
        let mut kept = Vec::new();
        let mut result = Ok(());
        for _ in 0..waiting {
            let got = match ch.basic_get(&dead, BasicGetOptions { no_ack: false }).await {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            let d = got.delivery;
            let headers = d.properties.headers().clone().unwrap_or_default();
            let origin = death_queue(&headers).and_then(|n| self.queue_named(&n));
            let Some(queue) = origin.filter(|q| only.is_none_or(|o| o == *q)) else {
                kept.push(d.acker);
                continue;
            };
            // Published (and confirmed) before it leaves the dead letters.
            if let Err(e) =
                queue::publish_bytes(&publish, "", &self.name(queue), &d.data, headers).await
            {
                kept.push(d.acker);
                result = Err(e);
                break;
            }
            d.acker.ack(BasicAckOptions::default()).await?;
            replayed.push(Replayed {
                queue,
                size_bytes: d.data.len() as u64,
            });
        }
        for acker in kept {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await?;
        }
        let _ = ch.close(200, "replayed").await;
        result.map(|()| replayed)
    }
}

/// The queue a dead letter was refused from: RabbitMQ's `x-first-death-queue` header, or the
/// first `x-death` entry's `queue`.
fn death_queue(headers: &FieldTable) -> Option<String> {
    let text = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    };
    let inner = headers.inner();
    if let Some(q) = inner.get("x-first-death-queue").and_then(text) {
        return Some(q);
    }
    match inner.get("x-death")? {
        AMQPValue::FieldArray(deaths) => deaths.as_slice().iter().find_map(|d| match d {
            AMQPValue::FieldTable(t) => t.inner().get("queue").and_then(text),
            _ => None,
        }),
        _ => None,
    }
}

impl AmqpQueue {
    /// The queue of one of this topology's shared queue names.
    fn queue_named(&self, name: &str) -> Option<QueueName> {
        [
            QueueName::Task(TaskKind::Denoise),
            QueueName::Task(TaskKind::Vocode),
            QueueName::Results,
        ]
        .into_iter()
        .find(|q| self.name(*q) == name)
    }

    /// (messages, consumers) of a queue, by a passive declare on a throwaway channel.
    async fn counts(&self, name: &str) -> Result<(u32, u32), QueueError> {
        let ch = self.new_channel().await?;
        let q = ch
            .queue_declare(
                name,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "counted").await;
        Ok((q.message_count(), q.consumer_count()))
    }
}
