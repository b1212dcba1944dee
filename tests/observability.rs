//! Metrics and probes of a running farm: `/metrics` carries the `tutti_` series the dashboard
//! and alerts use, `/healthz` and `/readyz` answer, and gRPC health reports SERVING.

mod common;

use std::time::Duration;

use common::{request, state, Farm, FarmOptions};
use tutti_proto::v1 as pb;

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("http");
    let code = r.status().as_u16();
    (code, r.text().await.expect("body"))
}

#[tokio::test]
async fn the_coordinator_exports_metrics_and_probes() {
    let farm = Farm::start(FarmOptions::default()).await;
    let base = format!("http://{}", farm.metrics_addr);
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        (200, "ok".to_string())
    );
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);

    let mut client = farm.client().await;
    let job = client
        .submit_generation(request("metrics check"))
        .await
        .expect("submit")
        .into_inner();
    let job = farm.wait_job(&job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&job), pb::JobState::Succeeded);

    // Gauges refresh every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = get(&format!("{base}/metrics")).await;
        assert_eq!(code, 200);
        let finished = body.lines().any(|l| {
            l.starts_with("tutti_jobs_finished_total{")
                && l.contains("state=\"succeeded\"")
                && l.ends_with(" 1")
        });
        if finished {
            assert!(
                body.contains("tutti_jobs_submitted_total{class=\"standard\"} 1"),
                "{body}"
            );
            assert!(body.contains("tutti_backlog{"), "{body}");
            assert!(body.contains("tutti_ready 1"), "{body}");
            // The scheduler's own series: every task of the job was dispatched once, after a
            // wait in the backlog; the error and anomaly counters are there at 0.
            let value = |prefix: &str| -> f64 {
                body.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            for queue in ["denoise", "vocode"] {
                let dispatched =
                    format!("tutti_tasks_dispatched_total{{queue=\"{queue}\",class=\"standard\"}}");
                assert!(value(&dispatched) >= 1.0, "{dispatched} in {body}");
                let waited = format!(
                    "tutti_queue_latency_seconds_count{{queue=\"{queue}\",class=\"standard\"}}"
                );
                assert_eq!(value(&waited), value(&dispatched), "{body}");
            }
            assert_eq!(value("tutti_postgres_errors_total"), 0.0, "{body}");
            assert_eq!(value("tutti_stale_results_total{"), 0.0, "{body}");
            assert_eq!(value("tutti_task_retries_total{"), 0.0, "{body}");
            for series in [
                "tutti_postgres_errors_total ",
                "tutti_dead_letters_total{by=\"coordinator\"} ",
                "tutti_stale_results_total{stage=\"vocode\"} ",
                "tutti_s3_errors_total{op=\"presign\"} ",
            ] {
                assert!(body.contains(series), "no {series} in {body}");
            }
            for line in body.lines().filter(|l| l.starts_with("tutti_")) {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(
                    tutti_shared::metrics::names::ALL.contains(&base),
                    "{name} is not a declared metric"
                );
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finished-jobs count: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // gRPC health of the Generation service.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", farm.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tutti.v1.Generation".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
