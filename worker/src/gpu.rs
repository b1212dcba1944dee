//! GPU memory gauges on CUDA workers. libtorch's allocator statistics are not exposed through
//! `tch`, so the worker asks the NVIDIA driver, through `nvidia-smi` (shipped with the driver
//! on every CUDA node and mounted into containers by the NVIDIA container toolkit), for each
//! visible GPU's used and total memory every few seconds.

use std::time::Duration;

use tokio::sync::watch;
use tutti_shared::metrics::names;

const EVERY: Duration = Duration::from_secs(10);

/// One GPU's memory, as `nvidia-smi` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GpuMemory {
    pub index: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// Parses `nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits`
/// (MiB); lines it cannot read are skipped.
pub(crate) fn parse(csv: &str) -> Vec<GpuMemory> {
    const MIB: u64 = 1024 * 1024;
    csv.lines()
        .filter_map(|line| {
            let mut cols = line.split(',').map(str::trim);
            let index = cols.next()?.to_string();
            let used: u64 = cols.next()?.parse().ok()?;
            let total: u64 = cols.next()?.parse().ok()?;
            (!index.is_empty()).then_some(GpuMemory {
                index,
                used_bytes: used * MIB,
                total_bytes: total * MIB,
            })
        })
        .collect()
}

async fn query() -> Option<Vec<GpuMemory>> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Sets the GPU memory gauges until `shutdown`; returns at once (with a note) when
/// `nvidia-smi` cannot be run.
pub(crate) async fn report(mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => continue,
        }
        let Some(gpus) = query().await else {
            tracing::info!("nvidia-smi is not available: no GPU memory metrics");
            return;
        };
        for g in gpus {
            metrics::gauge!(names::GPU_MEMORY_USED, "gpu" => g.index.clone())
                .set(g.used_bytes as f64);
            metrics::gauge!(names::GPU_MEMORY_TOTAL, "gpu" => g.index).set(g.total_bytes as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nvidia_smi_csv() {
        let got = parse("0, 1536, 81559\n1, 0, 81559\n[N/A], oops\n\n");
        assert_eq!(
            got,
            vec![
                GpuMemory {
                    index: "0".into(),
                    used_bytes: 1536 << 20,
                    total_bytes: 81559 << 20
                },
                GpuMemory {
                    index: "1".into(),
                    used_bytes: 0,
                    total_bytes: 81559 << 20
                },
            ]
        );
    }
}
