//! `tutti bench farm` runs end to end on a small load (a README command must keep working) and
//! its report breaks the interactive jobs' time down from the farm's own records.

mod common;

use std::process::Command;

#[test]
fn bench_farm_reports_where_interactive_time_goes() {
    let s3 = common::s3_settings();
    let pg = std::env::var("TUTTI_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let out = Command::new(common::bin())
        .args([
            "bench",
            "farm",
            "--jobs",
            "2",
            "--interactive",
            "3",
            "--backfill",
            "6",
            "--duration",
            "1s",
            "--submitters",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .env("TUTTI_BENCH_PG", pg)
        .env("TUTTI_AMQP_URL", common::amqp_url())
        .env("TUTTI_S3_ENDPOINT", s3.endpoint.unwrap_or_default())
        .env("TUTTI_S3_BUCKET", &s3.bucket)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
        .env_remove("TUTTI_BENCH_KEEP_DB")
        .output()
        .expect("run tutti bench farm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench farm failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "farm's own time",
        "p95 ratio",
        "| queued (accepted to first dispatch) |",
        "| on the workers (tasks' own time) |",
        "| **total** |",
        "submits/s",
    ] {
        assert!(
            stdout.contains(part),
            "no {part:?} in the report:\n{stdout}"
        );
    }
    // Every interactive job ran three tasks on a worker: their time is there, not zero.
    let workers_row = stdout
        .lines()
        .find(|l| l.starts_with("| on the workers"))
        .expect("the workers' row");
    let idle_ms: f64 = workers_row
        .split('|')
        .nth(2)
        .and_then(|c| c.trim().parse().ok())
        .expect("the idle column");
    assert!(idle_ms > 0.0, "{workers_row}");
}
