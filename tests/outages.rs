//! Outages of what the farm depends on are waited out, not charged to jobs: S3 down for 30 s,
//! Postgres down for 20 s and RabbitMQ down for 15 s while jobs run. Every job succeeds once
//! with one output per variation; no attempt is spent on the outage (no retry, no failure);
//! no live worker is declared lost. Its own test binary, and one scenario at a time, so no
//! other test shares an outage (cargo runs test binaries one after another).
//!
//! The servers are the machine's own (`scripts/s3`, `pg_ctlcluster`, `rabbitmqctl`); where
//! this process may not stop and start them the scenario says SKIPPED.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{request, state, Farm, FarmOptions};
use tokio::sync::Mutex;
use tutti_proto::v1 as pb;

/// One outage at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn quietly(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A farm with the defaults an operator runs (4 attempts, 1 s backoff doubling) and a worker.
async fn farm() -> Farm {
    Farm::start(FarmOptions {
        workers: 1,
        chunk_steps: 4,
        retry_backoff: "1s",
        ..Default::default()
    })
    .await
}

async fn submit(farm: &Farm, n: usize, tag: &str) -> Vec<String> {
    let mut client = farm.client().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let mut req = request(&format!("{tag} {i}"));
        req.steps = Some(40);
        req.duration_seconds = Some(6.0);
        ids.push(
            client
                .submit_generation(req)
                .await
                .expect("submit")
                .into_inner()
                .id,
        );
    }
    ids
}

/// Events of these jobs that mean work was charged or redone: retries and failures (with
/// their codes) and stale results.
async fn charged(farm: &Farm, ids: &[String]) -> Vec<String> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().expect("job id")).collect();
    sqlx::query_scalar(
        "SELECT kind || ' ' || coalesce(detail->>'code', '') FROM job_events \
         WHERE job_id = ANY($1) AND kind IN ('retry', 'failed', 'stale_result') ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(farm.pg())
    .await
    .expect("read the job events")
}

/// Every job succeeded with one output each, and nothing was charged to it.
async fn all_done_once(farm: &Farm, ids: &[String], what: &str) {
    for id in ids {
        let job = farm.wait_job(id, Duration::from_secs(300)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{what}: {job:?}");
        assert_eq!(job.outputs.len(), 1, "{what}: {job:?}");
    }
    let charged = charged(farm, ids).await;
    assert!(
        charged.is_empty(),
        "{what}: attempts charged or work redone: {charged:?}"
    );
}

/// Restarts a server when dropped, so a failed assertion never leaves it down for the tests
/// after this one.
struct Restart(Vec<Command>);

impl Drop for Restart {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.status();
        }
    }
}

#[tokio::test]
async fn jobs_outlive_an_s3_outage() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !quietly(Command::new("scripts/s3").arg("status")) {
        eprintln!("SKIPPED: scripts/s3 does not run the S3 server here");
        return;
    }
    let farm = farm().await;
    let ids = submit(&farm, 6, "s3 outage").await;
    farm.wait_steps(&ids[0], 8, Duration::from_secs(120)).await;
    let began = std::time::Instant::now();
    let restart = Restart(vec![{
        let mut c = Command::new("scripts/s3");
        c.arg("start");
        c
    }]);
    assert!(
        quietly(Command::new("scripts/s3").arg("stop")),
        "scripts/s3 stop"
    );
    // Down for 30 s from the stop's start (the stop itself takes a while).
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(began.elapsed())).await;
    drop(restart);
    assert!(
        quietly(Command::new("scripts/s3").arg("status")),
        "S3 back up"
    );
    all_done_once(&farm, &ids, "S3 down 30 s").await;
}

fn pg_version() -> Option<String> {
    std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
}

fn pg_ctl(version: &str, action: &str) -> Command {
    let mut c = Command::new("pg_ctlcluster");
    c.args(["--skip-systemctl-redirect", version, "main", action]);
    c
}

#[tokio::test]
async fn workers_are_not_declared_lost_for_a_database_outage() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(version) = pg_version().filter(|v| quietly(&mut pg_ctl(v, "status"))) else {
        eprintln!("SKIPPED: pg_ctlcluster cannot control the local PostgreSQL here");
        return;
    };
    let farm = farm().await;
    let ids = submit(&farm, 6, "database outage").await;
    farm.wait_steps(&ids[0], 8, Duration::from_secs(120)).await;
    let restart = Restart(vec![pg_ctl(&version, "start")]);
    assert!(quietly(&mut pg_ctl(&version, "stop")), "pg_ctlcluster stop");
    tokio::time::sleep(Duration::from_secs(20)).await;
    drop(restart);
    all_done_once(&farm, &ids, "Postgres down 20 s").await;
}

#[tokio::test]
async fn workers_are_not_declared_lost_for_a_broker_outage() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !quietly(Command::new("rabbitmqctl").arg("status")) {
        eprintln!("SKIPPED: rabbitmqctl cannot control the local broker here");
        return;
    }
    let farm = farm().await;
    let ids = submit(&farm, 6, "broker outage").await;
    farm.wait_steps(&ids[0], 8, Duration::from_secs(120)).await;
    let restart = Restart(vec![{
        let mut c = Command::new("rabbitmqctl");
        c.arg("start_app");
        c
    }]);
    assert!(
        quietly(Command::new("rabbitmqctl").arg("stop_app")),
        "rabbitmqctl stop_app"
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    drop(restart);
    for id in &ids {
        let job = farm.wait_job(id, Duration::from_secs(300)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        assert_eq!(job.outputs.len(), 1, "{job:?}");
    }
    // A chunk in hand when the broker went away is redelivered once it is back (its ack was
    // lost with the connection), so a stale duplicate may come back; what must not happen is
    // a live worker declared lost.
    let charged = charged(&farm, &ids).await;
    assert!(
        !charged
            .iter()
            .any(|c| c.contains("WORKER_LOST") || c.starts_with("failed")),
        "{charged:?}"
    );
    eprintln!("broker outage: redone or stale: {charged:?}");
}
