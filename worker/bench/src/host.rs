//! What the benchmarks read of the host: CPU time and load beside a run, and the median of
//! repeated timings.

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Aggregate and own CPU time from `/proc` (Linux only), in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSnapshot {
    pub(crate) cpus: usize,
    busy: u64,
    total: u64,
    own: u64,
}

impl CpuSnapshot {
    pub(crate) fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        let fields: Vec<u64> = lines
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        if fields.len() < 8 {
            return None;
        }
        let total: u64 = fields[..8].iter().sum();
        let busy = total - fields[3] - fields[4];
        let cpus = lines.filter(|l| l.starts_with("cpu")).count().max(1);
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = own_stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let own = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            cpus,
            busy,
            total,
            own,
        })
    }

    /// Cores kept busy by other processes between `self` and `later`.
    pub(crate) fn others_cores_until(&self, later: &Self) -> f64 {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let others = later
            .busy
            .saturating_sub(self.busy)
            .saturating_sub(later.own.saturating_sub(self.own)) as f64;
        others / total * self.cpus as f64
    }
}

pub(crate) fn read_loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of this process, all threads, user and system, in seconds (Linux `/proc`; clock
/// ticks taken as USER_HZ = 100, the value on every Linux build tutti targets). On a shared
/// machine it says what a run cost apart from the time it waited for a core.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
