//! One conformance suite, run against both queues so that they cannot drift. The RabbitMQ
//! runs need a broker (`TUTTI_TEST_AMQP`, default the local one); each uses its own prefix.

use std::time::Duration;

use futures::StreamExt;

use super::{AmqpQueue, MemoryQueue, QueueName, TaskQueue};
use crate::job::TaskKind;
use crate::messages::ControlMessage;
use crate::queue::Topology;

const DENOISE: QueueName = QueueName::Task(TaskKind::Denoise);
const QUIET: Duration = Duration::from_millis(400);

async fn next_data(c: &mut Box<dyn super::Consumer>) -> super::Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery")
}

async fn stays_quiet(c: &mut Box<dyn super::Consumer>) -> bool {
    tokio::time::timeout(QUIET, c.next()).await.is_err()
}

pub(super) async fn delivers_once_when_acked(q: &dyn TaskQueue) {
    q.publish(DENOISE, b"one").await.expect("publish");
    let mut c = q.consume(&[DENOISE], 4, "t").await.expect("consume");
    let d = next_data(&mut c).await;
    assert_eq!(d.data, b"one");
    assert_eq!(d.queue, DENOISE);
    d.ack().await.expect("ack");
    assert!(stays_quiet(&mut c).await, "an acked message came back");
    c.close().await;
}

pub(super) async fn redelivers_what_a_departed_consumer_held(q: &dyn TaskQueue) {
    q.publish(DENOISE, b"held").await.expect("publish");
    let mut c = q.consume(&[DENOISE], 1, "t").await.expect("consume");
    let d = next_data(&mut c).await;
    assert_eq!(d.data, b"held");
    drop(d);
    c.close().await;
    let mut c2 = q.consume(&[DENOISE], 1, "t").await.expect("consume");
    let d = next_data(&mut c2).await;
    assert_eq!(d.data, b"held");
    d.ack().await.expect("ack");
    c2.close().await;
}

pub(super) async fn nack_requeues_or_dead_letters(q: &dyn TaskQueue) {
    let dead_before = q.dead_letters().await.expect("dead letters");
    q.publish(DENOISE, b"again").await.expect("publish");
    let mut c = q.consume(&[DENOISE], 1, "t").await.expect("consume");
    let d = next_data(&mut c).await;
    d.nack(true).await.expect("nack requeue");
    let d = next_data(&mut c).await;
    assert_eq!(d.data, b"again");
    d.nack(false).await.expect("nack dead");
    assert!(
        stays_quiet(&mut c).await,
        "a dead-lettered message came back"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while q.dead_letters().await.expect("dead letters") <= dead_before {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.close().await;
}

/// Waits until the dead-letter queue holds `n` messages (the broker settles asynchronously).
async fn wait_dead(q: &dyn TaskQueue, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = q.dead_letters().await.expect("dead letters");
        if now == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} dead letters, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn dead_letters_replay_to_the_queue_they_came_from(q: &dyn TaskQueue) {
    let vocode = QueueName::Task(TaskKind::Vocode);
    for (queue, body) in [
        (DENOISE, &b"refused once"[..]),
        (vocode, &b"vocode too"[..]),
    ] {
        q.publish(queue, body).await.expect("publish");
        let mut c = q.consume(&[queue], 1, "t").await.expect("consume");
        next_data(&mut c)
            .await
            .nack(false)
            .await
            .expect("nack dead");
        c.close().await;
    }
    wait_dead(q, 2).await;
    // Only the denoise queue's, then the rest.
    let replayed = q
        .replay_dead_letters(10, Some(DENOISE))
        .await
        .expect("replay denoise");
    assert_eq!(
        replayed,
        vec![super::Replayed {
            queue: DENOISE,
            size_bytes: 12
        }]
    );
    wait_dead(q, 1).await;
    let mut c = q.consume(&[DENOISE], 1, "t").await.expect("consume");
    let d = next_data(&mut c).await;
    assert_eq!(d.data, b"refused once");
    d.ack().await.expect("ack");
    c.close().await;
    let rest = q.replay_dead_letters(10, None).await.expect("replay");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].queue, vocode);
    wait_dead(q, 0).await;
    assert!(q
        .replay_dead_letters(10, None)
        .await
        .expect("replay")
        .is_empty());
    let mut c = q.consume(&[vocode], 1, "t").await.expect("consume");
    assert_eq!(next_data(&mut c).await.data, b"vocode too");
    c.close().await;
}

pub(super) async fn prefetch_bounds_unsettled_deliveries(q: &dyn TaskQueue) {
    for b in [b"p1", b"p2"] {
        q.publish(DENOISE, b).await.expect("publish");
    }
    let mut c = q.consume(&[DENOISE], 1, "t").await.expect("consume");
    let d = next_data(&mut c).await;
    assert!(
        stays_quiet(&mut c).await,
        "a second delivery past prefetch 1"
    );
    d.ack().await.expect("ack");
    next_data(&mut c).await.ack().await.expect("ack");
    c.close().await;
}

pub(super) async fn consumes_several_queues_and_counts_consumers(q: &dyn TaskQueue) {
    let vocode = QueueName::Task(TaskKind::Vocode);
    let mut c = q
        .consume(&[DENOISE, vocode], 2, "t")
        .await
        .expect("consume");
    assert_eq!(q.consumers(vocode).await.expect("count"), 1);
    q.publish(vocode, b"v").await.expect("publish");
    let d = next_data(&mut c).await;
    assert_eq!((d.queue, d.data.as_slice()), (vocode, b"v".as_slice()));
    d.ack().await.expect("ack");
    c.close().await;
}

pub(super) async fn headers_travel_with_the_message(q: &dyn TaskQueue) {
    let headers: std::collections::HashMap<String, String> = [(
        "traceparent".to_string(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
    )]
    .into();
    q.publish_with_headers(DENOISE, b"traced", &headers)
        .await
        .expect("publish");
    q.publish(DENOISE, b"plain").await.expect("publish");
    let mut c = q.consume(&[DENOISE], 2, "t").await.expect("consume");
    let d = next_data(&mut c).await;
    assert_eq!(
        (d.data.as_slice(), &d.headers),
        (b"traced".as_slice(), &headers)
    );
    d.ack().await.expect("ack");
    let d = next_data(&mut c).await;
    assert_eq!(d.data, b"plain");
    assert!(!d.headers.contains_key("traceparent"), "{:?}", d.headers);
    d.ack().await.expect("ack");
    q.ping().await.expect("ping");
    c.close().await;
}

pub(super) async fn control_fans_out_to_every_subscriber(q: &dyn TaskQueue) {
    let mut a = q.control().await.expect("control");
    let mut b = q.control().await.expect("control");
    let msg = ControlMessage::Cancel {
        job_id: uuid::Uuid::new_v4(),
    };
    q.broadcast(&msg).await.expect("broadcast");
    for s in [&mut a, &mut b] {
        let got = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("control in time");
        assert_eq!(got, Some(msg.clone()));
    }
}

/// Chunk affinity on RabbitMQ: a task for a worker goes to its own queue while the worker
/// consumes it, moves to the shared queue when untaken after `wait`, and goes to the shared
/// queue at once for a worker without a queue.
async fn publish_to_worker_waits_then_falls_back(q: &AmqpQueue) {
    let kind = TaskKind::Denoise;
    // No queue for this worker: straight to the shared queue.
    q.publish_to_worker(
        "nobody",
        kind,
        b"orphan",
        Duration::from_secs(60),
        &Default::default(),
    )
    .await
    .expect("publish to a worker without a queue");
    let mut shared = q.consume(&[DENOISE], 1, "shared").await.expect("consume");
    let d = next_data(&mut shared).await;
    assert_eq!(d.data, b"orphan");
    d.ack().await.expect("ack");

    // The worker consumes: its task reaches it and not the shared consumer.
    let mut own = q.consume_worker(kind, 2, "w1").await.expect("consume own");
    let trace: std::collections::HashMap<String, String> =
        [("traceparent".to_string(), "00-abc-def-01".to_string())].into();
    q.publish_to_worker("w1", kind, b"mine", Duration::from_secs(60), &trace)
        .await
        .expect("publish to w1");
    let d = next_data(&mut own).await;
    assert_eq!((d.queue, d.data.as_slice()), (DENOISE, b"mine".as_slice()));
    // Routed tasks carry their trace context like shared-queue ones.
    assert_eq!(d.headers.get("traceparent"), trace.get("traceparent"));
    d.ack().await.expect("ack");
    assert!(
        stays_quiet(&mut shared).await,
        "the shared consumer got w1's task"
    );

    // The worker stops consuming (its queue stays): an untaken task moves on after `wait`.
    own.close().await;
    q.publish_to_worker(
        "w1",
        kind,
        b"moved",
        Duration::from_millis(300),
        &Default::default(),
    )
    .await
    .expect("publish to idle w1");
    let d = next_data(&mut shared).await;
    assert_eq!(d.data, b"moved");
    d.ack().await.expect("ack");
    shared.close().await;
}

#[tokio::test]
async fn amqp_publish_to_worker_waits_then_falls_back() {
    let q = amqp();
    publish_to_worker_waits_then_falls_back(&q).await;
    remove(&q).await;
}

fn amqp() -> AmqpQueue {
    let url = std::env::var("TUTTI_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = format!("conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    AmqpQueue::new(url, Topology::new(prefix))
}

/// Deletes a test topology so the broker does not collect one per run.
async fn remove(q: &AmqpQueue) {
    let url = std::env::var("TUTTI_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let Ok(conn) = crate::queue::connect(&url, Duration::from_secs(2)).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let t = q.topology();
    for name in [
        t.worker_queue("w1", TaskKind::Denoise),
        t.denoise_queue(),
        t.vocode_queue(),
        t.results_queue(),
        t.dead_letter_queue(),
    ] {
        let _ = ch
            .queue_delete(&name, lapin::options::QueueDeleteOptions::default())
            .await;
    }
    for name in [t.dead_letter_exchange(), t.control_exchange()] {
        let _ = ch
            .exchange_delete(&name, lapin::options::ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "test topology removed").await;
}

macro_rules! task_queue_suite {
    ($($name:ident),+ $(,)?) => {
        mod memory_suite {
            $(#[tokio::test] async fn $name() { super::$name(&super::MemoryQueue::new()).await; })+
        }
        mod amqp_suite {
            $(#[tokio::test] async fn $name() {
                let q = super::amqp();
                super::$name(&q).await;
                super::remove(&q).await;
            })+
        }
    };
}

task_queue_suite!(
    delivers_once_when_acked,
    redelivers_what_a_departed_consumer_held,
    nack_requeues_or_dead_letters,
    dead_letters_replay_to_the_queue_they_came_from,
    prefetch_bounds_unsettled_deliveries,
    consumes_several_queues_and_counts_consumers,
    headers_travel_with_the_message,
    control_fans_out_to_every_subscriber,
);
