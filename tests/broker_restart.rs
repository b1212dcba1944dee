//! RabbitMQ restarts while jobs run: coordinator and workers reconnect and every job finishes
//! exactly once. Its own test binary, so that no other farm test shares the broker's outage.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{request, state, Farm, FarmOptions};
use tutti_proto::v1 as pb;

fn rabbitmqctl(arg: &str) -> bool {
    Command::new("rabbitmqctl")
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn jobs_survive_a_broker_restart() {
    if std::env::var("TUTTI_TEST_BROKER_RESTART").as_deref() == Ok("0")
        || !Command::new("rabbitmqctl")
            .arg("status")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: rabbitmqctl cannot control the local broker here");
        return;
    }
    let farm = Farm::start(FarmOptions {
        workers: 1,
        // A lost task would come back when its lease runs out (300 s by default); a short one
        // keeps a failure of this test quick, and the events below tell whether it fired.
        coordinator_env: vec![("TUTTI_TASK_LEASE", "20s".into())],
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    let mut client = farm.client().await;
    for i in 0..3 {
        let mut req = request(&format!("broker restart {i}"));
        req.steps = Some(40);
        req.duration_seconds = Some(20.0);
        ids.push(
            client
                .submit_generation(req)
                .await
                .expect("submit")
                .into_inner()
                .id,
        );
    }
    farm.wait_steps(&ids[0], 8, Duration::from_secs(60)).await;
    assert!(rabbitmqctl("stop_app"), "rabbitmqctl stop_app");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rabbitmqctl("start_app"), "rabbitmqctl start_app");
    for id in &ids {
        let job = farm.wait_job(id, Duration::from_secs(120)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        assert_eq!(job.outputs.len(), 1);
        let events = farm.events(id).await;
        assert_eq!(events.iter().filter(|e| e.0 == "succeeded").count(), 1);
        let mut chunks: Vec<i32> = events
            .iter()
            .filter(|e| e.0 == "chunk_done")
            .filter_map(|e| e.1)
            .collect();
        // Nothing lost in the outage: a task in the worker's hands or its own queue used to
        // vanish with that (transient) queue, or with its result, until the lease brought it back.
        let expired: Vec<_> = events
            .iter()
            .filter(|e| e.0 == "retry" && e.3["code"] == "LEASE_EXPIRED")
            .collect();
        assert!(
            expired.is_empty(),
            "tasks came back only by their lease: {expired:?}"
        );
        let n = chunks.len();
        chunks.dedup();
        assert_eq!(chunks.len(), n, "no chunk counted twice");
    }
}
