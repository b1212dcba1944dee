//! Dead-letter replay on a real broker: a job's task is dead-lettered by RabbitMQ (refused
//! while no worker could take it), an operator replays it from the studio's operator view once
//! a worker is there, the job finishes, and `tutti queues` shows what was replayed
//! (`tutti dead-letters replay` then finds nothing left). (The
//! in-process queue of embedded mode runs the same replay in the task-queue conformance suite,
//! `shared/src/taskqueue/tests.rs`.)

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::{request, state, Backend, Farm, FarmOptions};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use tutti_proto::v1 as pb;

fn tutti(farm: &Farm, args: &[&str]) -> String {
    let server = format!("http://{}", farm.addr);
    let out = std::process::Command::new(common::bin())
        .args(args)
        .args(["--server", &server])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tutti");
    assert!(
        out.status.success(),
        "tutti {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

async fn wait_messages(farm: &Farm, queue: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = farm.queue_counts(queue).await.map_or(0, |c| c.0);
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {got} messages, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_dead_lettered_task_is_replayed_and_its_job_finishes() {
    let mut farm = Farm::start(FarmOptions {
        workers: 0,
        ..FarmOptions::on(Backend::Distributed)
    })
    .await;
    let (denoise, dead) = (
        format!("{}.denoise", farm.prefix()),
        format!("{}.dead", farm.prefix()),
    );
    let job = farm
        .client()
        .await
        .submit_generation(request("a task that waits in the dead letters"))
        .await
        .expect("submit")
        .into_inner();
    wait_messages(&farm, &denoise, 1).await;

    // The broker dead-letters the task: refused without requeue, as a worker refuses a message
    // it cannot take.
    let conn = lapin::Connection::connect(&common::amqp_url(), Default::default())
        .await
        .expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get(&denoise, BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("the task");
    got.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
        .expect("nack");
    let _ = conn.close(200, "bye").await;
    wait_messages(&farm, &dead, 1).await;
    wait_messages(&farm, &denoise, 0).await;
    assert!(
        tutti(&farm, &["queues"]).contains("1 dead letters waiting"),
        "the operator view counts it"
    );

    // The cause is fixed (a worker is there); the operator replays the dead letters from the
    // studio's operator view.
    farm.add_worker(&[]);
    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    b.click(r#".tab[data-view="operator"]"#).await;
    b.wait_js(
        "return document.querySelector('#dead-waiting').textContent === '1'",
        "the dead letter counted",
    )
    .await;
    b.click("#replay-dead").await;
    b.wait_js(
        "return document.querySelector('#replay-status').textContent === '1 replayed, 0 left'",
        "the replay",
    )
    .await;
    b.wait_js(
        "return document.querySelector('#replays').textContent.includes('1 to denoise by operator')",
        "the replay listed",
    )
    .await;
    b.screenshot("dead-letter-replay").await;
    b.close().await;
    let done = farm.wait_job(&job.id, Duration::from_secs(180)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    wait_messages(&farm, &dead, 0).await;

    // Admins see what was replayed, by whom and when; a second replay finds nothing.
    let queues = tutti(&farm, &["queues"]);
    assert!(queues.contains("dead letters replayed:"), "{queues}");
    assert!(queues.contains("1 to denoise by operator"), "{queues}");
    let again = tutti(&farm, &["dead-letters", "replay", "--queue", "denoise"]);
    assert!(again.contains("0 replayed, 0 dead letters left"), "{again}");
    let server = format!("http://{}", farm.addr);
    let bad = std::process::Command::new(common::bin())
        .args([
            "dead-letters",
            "replay",
            "--queue",
            "nowhere",
            "--server",
            &server,
        ])
        .output()
        .expect("run tutti");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("queue: must be denoise, vocode or results"),
        "{stderr}"
    );
}
