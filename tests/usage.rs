//! Usage and budgets on real farms: a finished job leaves a usage record that GetUsage sums per
//! key, model, day and batch for its own tenant only (admins choose); `tutti usage` prints and
//! exports it; a budget refuses submits with RESOURCE_EXHAUSTED naming it and the time to its
//! reset (RetryInfo over gRPC, Retry-After over the studio's HTTP gateway); the studio's usage
//! view shows a tenant its own.

#[macro_use]
mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{request, state, Backend, Farm, FarmOptions, KeyedClient};
use tonic::Code;
use tutti_proto::v1 as pb;

both_backends!(usage_is_recorded_summed_and_budgeted,);

async fn usage(
    c: &mut KeyedClient,
    group_by: pb::UsageGrouping,
    tenant: &str,
) -> Result<pb::GetUsageResponse, tonic::Status> {
    c.get_usage(pb::GetUsageRequest {
        group_by: group_by as i32,
        tenant: tenant.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn cli(farm: &Farm, key: &str, args: &[&str]) -> String {
    let server = format!("http://{}", farm.addr);
    let out = std::process::Command::new(common::bin())
        .arg("usage")
        .args(["--server", &server, "--api-key", key])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tutti usage");
    assert!(
        out.status.success(),
        "tutti usage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

async fn usage_is_recorded_summed_and_budgeted(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        auth: true,
        ..FarmOptions::on(backend)
    })
    .await;
    for t in ["acme", "beta", "ops"] {
        farm.operator(&["tenant", "create", t]);
    }
    let (acme, beta, admin) = (
        farm.create_key("acme", false),
        farm.create_key("beta", false),
        farm.create_key("ops", true),
    );
    let acme_prefix = acme[..15].to_string();
    assert!(acme_prefix.starts_with("tt_"), "{acme_prefix}");
    let mut a = farm.client_as(Some(&acme)).await;
    let mut req = request("a usage record for a short folk tune");
    req.variations = 2;
    req.steps = Some(4);
    let job = a.submit_generation(req).await.expect("submit").into_inner();
    let done = common::wait_ended(&mut a, &job.id).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    let delivered: f64 = done
        .outputs
        .iter()
        .map(|o| f64::from(o.duration_seconds))
        .sum();
    assert!(delivered > 3.9, "two variations of 2 s: {done:?}");

    // By key: the key that submitted it, with the audio of both variations and the workers'
    // own device time per stage.
    let by_key = usage(&mut a, pb::UsageGrouping::Key, "")
        .await
        .expect("usage");
    assert_eq!(by_key.totals.len(), 1, "{by_key:?}");
    let t = &by_key.totals[0];
    assert_eq!(
        (t.tenant.as_str(), t.group.as_str()),
        ("acme", acme_prefix.as_str())
    );
    assert_eq!((t.jobs, t.succeeded, t.steps), (1, 1, 4));
    assert!((t.audio_seconds - delivered).abs() < 1e-3, "{t:?}");
    assert!(t.device_seconds > 0.0, "{t:?}");
    let stages: Vec<(&str, &str)> = t
        .devices
        .iter()
        .map(|d| (d.stage.as_str(), d.device.as_str()))
        .collect();
    assert_eq!(stages, [("denoise", "cpu"), ("vocode", "cpu")], "{t:?}");
    let by_model = usage(&mut a, pb::UsageGrouping::Model, "")
        .await
        .expect("usage");
    assert!(by_model.totals[0].group.contains('@'), "{by_model:?}");

    // Another tenant sees nothing of it, and may not ask for it; admins choose.
    let mut b = farm.client_as(Some(&beta)).await;
    let none = usage(&mut b, pb::UsageGrouping::Unspecified, "")
        .await
        .expect("usage");
    assert!(none.totals.is_empty(), "{none:?}");
    let refused = usage(&mut b, pb::UsageGrouping::Unspecified, "acme")
        .await
        .expect_err("another tenant's usage");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let mut ops = farm.client_as(Some(&admin)).await;
    let every = usage(&mut ops, pb::UsageGrouping::Day, "")
        .await
        .expect("admin usage");
    assert_eq!(every.totals.len(), 1, "{every:?}");
    assert_eq!(every.totals[0].tenant, "acme");
    assert_eq!(every.totals[0].group.len(), 10, "a UTC day: {every:?}");
    let beta_only = usage(&mut ops, pb::UsageGrouping::Unspecified, "beta")
        .await
        .expect("admin usage of beta");
    assert!(beta_only.totals.is_empty());
    // Bad input names the field and the rule.
    let backwards = a
        .get_usage(pb::GetUsageRequest {
            from: Some(tutti_proto::wkt::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0,
            }),
            to: Some(tutti_proto::wkt::Timestamp {
                seconds: 1_000_000_000,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("from after to");
    assert_eq!(backwards.code(), Code::InvalidArgument);
    assert_eq!(backwards.message(), "from: must be before to");

    // The CLI: a table, and CSV with device seconds per stage and device as columns.
    let table = cli(&farm, &acme, &["--by", "key"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("acme ") && l.contains(&acme_prefix)),
        "{table}"
    );
    let csv = cli(&farm, &acme, &["--by", "model", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with(
            "tenant,group,jobs,succeeded,failed,cancelled,steps,audio_seconds,device_seconds,"
        ),
        "{csv}"
    );
    assert!(lines[0].contains("denoise_cpu_seconds"), "{csv}");
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].starts_with("acme,"), "{csv}");
    assert!(lines[1].contains(",1,1,0,0,4,"), "{csv}");

    // A budget: acme's audio for today is spent, so the next submit is refused until midnight
    // UTC, over gRPC (RetryInfo) and over HTTP (Retry-After). Nothing is stored.
    let budget = format!("{:.3}", delivered + 0.5);
    farm.operator(&[
        "tenant",
        "limits",
        "acme",
        "--audio-seconds-per-day",
        &budget,
    ]);
    assert!(farm
        .operator(&["tenant", "list"])
        .contains("audio_seconds_per_day="));
    let over = a
        .submit_generation(request("one too many"))
        .await
        .expect_err("over the budget");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(
        over.message().starts_with("audio_seconds_per_day: "),
        "{over:?}"
    );
    assert!(over.message().contains("resets at"), "{over:?}");
    let wait = tutti_coordinator::error::retry_delay(&over).expect("RetryInfo");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(86_400),
        "{wait:?}"
    );
    let http = reqwest::Client::new()
        .post(format!("{}api/jobs", farm.studio_url()))
        .header("authorization", format!("Bearer {acme}"))
        .header("content-type", "application/json")
        .body(r#"{"prompt": "over http", "duration_seconds": 2}"#)
        .send()
        .await
        .expect("POST /api/jobs");
    assert_eq!(http.status().as_u16(), 429);
    let after: u64 = http.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=86_400).contains(&after), "{after}");
    let body: serde_json::Value =
        serde_json::from_str(&http.text().await.expect("body")).expect("json");
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(farm.tenant_job_count("acme").await, 1);
    // Beta has no budget.
    b.submit_generation(request("beta is free"))
        .await
        .expect("beta submits");
    // Lifted, acme submits again.
    farm.operator(&["tenant", "limits", "acme"]);
    a.submit_generation(request("budget lifted"))
        .await
        .expect("acme submits");

    // A rate-limit refusal carries its retry delay too (when the bucket holds a token again).
    farm.operator(&[
        "tenant",
        "limits",
        "beta",
        "--submits-per-second",
        "0.01",
        "--submit-burst",
        "1",
    ]);
    b.submit_generation(request("one"))
        .await
        .expect("the burst");
    let rate = b
        .submit_generation(request("two"))
        .await
        .expect_err("over the rate");
    assert!(
        rate.message().starts_with("submits_per_second: "),
        "{rate:?}"
    );
    let wait = tutti_coordinator::error::retry_delay(&rate).expect("RetryInfo");
    assert!(
        wait > Duration::from_secs(90) && wait <= Duration::from_secs(100),
        "{wait:?}"
    );
}

/// The studio's usage view: a tenant sees its own usage and downloads it as CSV.
#[tokio::test]
async fn the_studio_shows_a_tenant_its_usage() {
    let farm = Farm::start(FarmOptions {
        auth: true,
        ..FarmOptions::on(Backend::Distributed)
    })
    .await;
    for t in ["alice", "bob"] {
        farm.operator(&["tenant", "create", t]);
    }
    let (alice, bob) = (
        farm.create_key("alice", false),
        farm.create_key("bob", false),
    );
    let mut c = farm.client_as(Some(&bob)).await;
    let job = c
        .submit_generation(request("bob's tune"))
        .await
        .expect("submit")
        .into_inner();
    let done = common::wait_ended(&mut c, &job.id).await;
    assert_eq!(state(&done), pb::JobState::Succeeded);

    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    b.fill("#api-key", &bob).await;
    b.click("#key-form button[type=submit]").await;
    b.click(r#".tab[data-view="usage"]"#).await;
    b.select("#u-by", "model").await;
    b.click("#usage-form button[type=submit]").await;
    b.wait_js(
        "const r = document.querySelector('#usage tbody tr[data-group]'); \
         return !!r && r.dataset.group.includes('@') && r.children[1].textContent === '1'",
        "bob's usage row",
    )
    .await;
    let group = b.text("#usage tbody tr[data-group] td").await;
    assert!(group.contains('@'), "{group}");
    let devices = b.text("#usage tbody tr[data-group] td:last-child").await;
    assert!(devices.contains("denoise/cpu"), "{devices}");
    b.screenshot("usage").await;

    // Alice has made nothing: her view is empty.
    b.fill("#api-key", &alice).await;
    b.click("#key-form button[type=submit]").await;
    b.click(r#".tab[data-view="create"]"#).await;
    b.click(r#".tab[data-view="usage"]"#).await;
    b.wait_js(
        "return document.querySelector('#usage tbody').textContent.includes('No job ended')",
        "alice's empty usage",
    )
    .await;
    b.close().await;
}
