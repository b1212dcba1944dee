//! `tutti bench batch-accept`: how fast a coordinator accepts a large batch and how much memory
//! it takes meanwhile. Starts a `tutti coordinator` process of its own (own database and queue
//! prefix, removed afterwards; no workers), streams N generated items through SubmitBatch and
//! samples the coordinator's resident memory from /proc.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tutti::process_farm::{ProcessFarm, Servers};
use tutti_proto::v1 as pb;
use tutti_proto::v1::batches_client::BatchesClient;

#[derive(Debug, clap::Args)]
pub(crate) struct BatchAcceptArgs {
    /// Items in the batch.
    #[arg(long, default_value_t = 100_000)]
    items: u64,
    /// Postgres server (a database of the bench's own is created on it and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// RabbitMQ URL (the bench's queues are deleted after).
    #[arg(
        long,
        env = "TUTTI_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
}

/// Resident memory of a process in bytes: (current, peak), from /proc/<pid>/status.
fn rss(pid: u32) -> Option<(u64, u64)> {
    Some((status_field(pid, "VmRSS:")?, status_field(pid, "VmHWM:")?))
}

/// Anonymous resident memory (heap and stacks, without mapped files such as libtorch).
fn rss_anon(pid: u32) -> Option<u64> {
    status_field(pid, "RssAnon:")
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn item(i: u64) -> pb::SubmitBatchRequest {
    const MOODS: [&str; 4] = ["melancholic", "uplifting", "dark", "dreamy"];
    const STYLES: [&str; 4] = ["lo-fi piano", "synthwave", "string quartet", "jazz trio"];
    let prompt = format!(
        "{} {}, {} BPM, take {i}",
        MOODS[(i % 4) as usize],
        STYLES[(i / 4 % 4) as usize],
        60 + i % 100
    );
    pb::SubmitBatchRequest {
        kind: Some(pb::submit_batch_request::Kind::Item(pb::BatchItem {
            item_id: format!("item-{i:06}"),
            line: i + 1,
            request: Some(pb::SubmitGenerationRequest {
                prompt_kind: Some(pb::submit_generation_request::PromptKind::Prompt(prompt)),
                duration_seconds: Some(2.0),
                seed: Some(i),
                ..Default::default()
            }),
        })),
    }
}

pub(crate) async fn run(a: BatchAcceptArgs) -> anyhow::Result<()> {
    let servers = Servers {
        pg: a.postgres.clone(),
        amqp: a.amqp_url.clone(),
        s3: None,
    };
    let farm = ProcessFarm::new(std::env::current_exe()?, servers, "bench")?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut child = farm
        .coordinator(addr)?
        .env_remove("TUTTI_METRICS_LISTEN")
        .stdout(Stdio::null())
        .spawn()
        .context("starting a coordinator")?;
    let result = measure(&a, child.id(), addr.port()).await;
    let _ = child.kill();
    let _ = child.wait();
    farm.drop_database();
    farm.remove_topology(&[]);
    let report = result?;
    print!("{report}");
    Ok(())
}

async fn measure(a: &BatchAcceptArgs, pid: u32, port: u16) -> anyhow::Result<String> {
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut client = loop {
        match BatchesClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => bail!("the coordinator did not start: {e}"),
        }
    };
    // Let the coordinator settle (migrations, pools) before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (base, _) = rss(pid).context("reading the coordinator's /proc status")?;
    let base_anon = rss_anon(pid).unwrap_or(0);

    // Sample memory while the batch streams in; note it at every tenth of the items.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let (mut peak, mut peak_anon) = (0, 0);
        loop {
            if let Some((now, _)) = rss(pid) {
                peak = peak.max(now);
            }
            peak_anon = peak_anon.max(rss_anon(pid).unwrap_or(0));
            if *done_rx.borrow() {
                return (peak, peak_anon);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = done_rx.changed() => {}
            }
        }
    });
    let n = a.items;
    let marks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let marks_in = std::sync::Arc::clone(&marks);
    let header = pb::SubmitBatchRequest {
        kind: Some(pb::submit_batch_request::Kind::Header(pb::BatchHeader {
            name: "bench".into(),
            manifest_uri: String::new(),
            validate_only: false,
            ..Default::default()
        })),
    };
    let items = tokio_stream::iter(std::iter::once(header).chain((0..n).map(move |i| {
        if n >= 10 && i % (n / 10) == 0 {
            if let (Some((now, _)), Ok(mut m)) = (rss(pid), marks_in.lock()) {
                m.push((i, now));
            }
        }
        item(i)
    })));
    let t0 = Instant::now();
    let response = client
        .submit_batch(items)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let secs = t0.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    let (peak, peak_anon) = sampler.await?;
    let (end, hwm) = rss(pid).unwrap_or((0, 0));
    if response.accepted != n {
        bail!(
            "accepted {} of {n} items ({} rejected: {:?})",
            response.accepted,
            response.rejected,
            response.rejected_items.first()
        );
    }
    let mut out = String::new();
    use std::fmt::Write;
    writeln!(out, "# batch-accept: {n} items streamed to one coordinator")?;
    writeln!(out)?;
    writeln!(out, "| measure | value |")?;
    writeln!(out, "| --- | --- |")?;
    writeln!(out, "| accepted | {} |", response.accepted)?;
    writeln!(out, "| wall time | {secs:.1} s |")?;
    writeln!(out, "| throughput | {:.0} items/s |", n as f64 / secs)?;
    writeln!(out, "| RSS after start | {:.1} MB |", mb(base))?;
    writeln!(
        out,
        "| peak RSS while accepting (sampled every 20 ms) | {:.1} MB |",
        mb(peak)
    )?;
    writeln!(out, "| RSS at the end | {:.1} MB |", mb(end))?;
    writeln!(
        out,
        "| peak RSS of the process (VmHWM) | {:.1} MB |",
        mb(hwm)
    )?;
    writeln!(
        out,
        "| anonymous RSS (heap): after start / peak | {:.1} / {:.1} MB |",
        mb(base_anon),
        mb(peak_anon)
    )?;
    let marks = marks.lock().map(|m| m.clone()).unwrap_or_default();
    if !marks.is_empty() {
        let row: Vec<String> = marks
            .iter()
            .map(|(i, b)| format!("{i}: {:.0} MB", mb(*b)))
            .collect();
        writeln!(out)?;
        writeln!(out, "RSS as items were sent: {}", row.join(", "))?;
    }
    Ok(out)
}
