//! `tutti usage`: a farm's usage totals for a period (Generation.GetUsage) as a table, CSV or
//! JSON.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use tutti_proto::v1 as pb;

use super::channel::{status_err, ServerArgs};
use super::client::connect_to;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum GroupBy {
    Model,
    Key,
    Day,
    Batch,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UsageArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Start of the period: a UTC date (2026-12-01) or an RFC 3339 time (default: 30 days
    /// before --to).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// End of the period, excluded (default: now).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
    /// Totals per model, API key, UTC day or batch (default: one total per tenant).
    #[arg(long = "by", value_enum)]
    pub by: Option<GroupBy>,
    /// Admin keys: one tenant's usage (default: every tenant's for admins, else your own).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print CSV (one row per tenant and group, device seconds per stage and device in columns).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be a date (2026-12-01) or an RFC 3339 time".to_string())
}

fn ts(t: DateTime<Utc>) -> tutti_proto::wkt::Timestamp {
    tutti_proto::wkt::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn show(t: Option<&tutti_proto::wkt::Timestamp>) -> String {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// One CSV field, quoted when it must be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The (stage, device) columns of every total, in order.
fn device_columns(totals: &[pb::UsageTotal]) -> Vec<(String, String)> {
    let mut cols: Vec<(String, String)> = totals
        .iter()
        .flat_map(|t| {
            t.devices
                .iter()
                .map(|d| (d.stage.clone(), d.device.clone()))
        })
        .collect();
    cols.sort();
    cols.dedup();
    cols
}

pub(crate) fn csv(resp: &pb::GetUsageResponse) -> String {
    let cols = device_columns(&resp.totals);
    let mut out = String::from(
        "tenant,group,jobs,succeeded,failed,cancelled,steps,audio_seconds,device_seconds",
    );
    for (stage, device) in &cols {
        out.push_str(&format!(",{}", field(&format!("{stage}_{device}_seconds"))));
    }
    out.push('\n');
    for t in &resp.totals {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{:.3},{:.3}",
            field(&t.tenant),
            field(&t.group),
            t.jobs,
            t.succeeded,
            t.failed,
            t.cancelled,
            t.steps,
            t.audio_seconds,
            t.device_seconds
        ));
        for (stage, device) in &cols {
            let secs: f64 = t
                .devices
                .iter()
                .filter(|d| &d.stage == stage && &d.device == device)
                .map(|d| d.seconds)
                .sum();
            out.push_str(&format!(",{secs:.3}"));
        }
        out.push('\n');
    }
    out
}

pub(crate) async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let group_by = match args.by {
        None => pb::UsageGrouping::Unspecified,
        Some(GroupBy::Model) => pb::UsageGrouping::Model,
        Some(GroupBy::Key) => pb::UsageGrouping::Key,
        Some(GroupBy::Day) => pb::UsageGrouping::Day,
        Some(GroupBy::Batch) => pb::UsageGrouping::Batch,
    };
    let req = pb::GetUsageRequest {
        from: args.from.map(ts),
        to: args.to.map(ts),
        group_by: group_by as i32,
        tenant: args.tenant.clone().unwrap_or_default(),
    };
    let resp = connect_to(&args.server.server, &args.server.credentials)
        .await?
        .get_usage(req)
        .await
        .map_err(status_err)?
        .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).context("encoding the response")?
        );
        return Ok(());
    }
    if args.csv {
        print!("{}", csv(&resp));
        return Ok(());
    }
    println!(
        "usage from {} to {} (UTC)",
        show(resp.from.as_ref()),
        show(resp.to.as_ref())
    );
    println!(
        "{:<20} {:<38} {:>6} {:>6} {:>6} {:>6} {:>8} {:>10} {:>10}  DEVICES",
        "TENANT", "GROUP", "JOBS", "OK", "FAILED", "CANC", "STEPS", "AUDIO S", "DEVICE S"
    );
    for t in &resp.totals {
        let devices: Vec<String> = t
            .devices
            .iter()
            .map(|d| format!("{}/{} {:.1}s", d.stage, d.device, d.seconds))
            .collect();
        let group = if t.group.is_empty() { "-" } else { &t.group };
        println!(
            "{:<20} {:<38} {:>6} {:>6} {:>6} {:>6} {:>8} {:>10.1} {:>10.1}  {}",
            t.tenant,
            group,
            t.jobs,
            t.succeeded,
            t.failed,
            t.cancelled,
            t.steps,
            t.audio_seconds,
            t.device_seconds,
            devices.join(", ")
        );
    }
    if resp.totals.is_empty() {
        println!("(no job ended in this period)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_spreads_devices_into_columns() {
        let resp = pb::GetUsageResponse {
            totals: vec![pb::UsageTotal {
                tenant: "a".into(),
                group: "m,1".into(),
                jobs: 2,
                audio_seconds: 4.0,
                devices: vec![pb::DeviceUsage {
                    stage: "denoise".into(),
                    device: "cuda".into(),
                    seconds: 1.5,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = csv(&resp);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with(",denoise_cuda_seconds"), "{text}");
        assert_eq!(lines[1], "a,\"m,1\",2,0,0,0,0,4.000,0.000,1.500");
        assert!(parse_time("2026-12-01").is_ok());
        assert!(parse_time("2026-12-01T10:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
