//! The scheduler's decisions, free of SQL so that the Postgres and SQLite stores share them:
//! how much work may be in flight (`fleet`: live workers' slots, chunk affinity), which pending
//! tasks go out next (`plan`: class order, a guaranteed batch share, preemption at chunk
//! boundaries) and in what proportion tenants get served (`fair`: start-time fair queueing).
//! `round` plans one dispatch round over a store's transaction.

pub mod fair;
pub mod fleet;
pub mod plan;
pub mod position;
pub mod round;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

pub use round::{plan_round, Outgoing, PendingTask, RoundTx};

/// The scheduler's knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Dispatched-but-unfinished tasks per kind while no worker has ever sent a heartbeat
    /// (workers that predate heartbeats); afterwards live workers' slots bound it.
    pub max_in_flight: u32,
    /// A worker unheard of for this long is gone: no capacity, and its tasks go back to the
    /// backlog.
    pub worker_timeout: Duration,
    /// Fair-share weights of tenants (1 for any tenant not named).
    pub weights: TenantWeights,
    /// Share of each kind's capacity kept for batch work while batch work waits (at least one
    /// slot when the share is above zero and the kind has two slots or more).
    pub batch_share: f64,
    /// How long a task routed to the worker that holds its job's latent waits for that worker
    /// before any worker may take it.
    pub affinity_wait: Duration,
}

/// Fair-share weights, parsed from `tenant=weight,...` (e.g. `acme=3,beta=1`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantWeights(BTreeMap<String, f64>);

impl TenantWeights {
    pub fn weight(&self, tenant: &str) -> f64 {
        self.0.get(tenant).copied().unwrap_or(1.0)
    }
}

impl FromStr for TenantWeights {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tenant, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected tenant=weight"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|e| format!("{part:?}: weight: {e}"))?;
            if !(weight.is_finite() && weight > 0.0) {
                return Err(format!("{part:?}: weight must be a positive number"));
            }
            out.insert(tenant.trim().to_string(), weight);
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_default_to_one() {
        let w: TenantWeights = "acme=3, beta=1.5".parse().expect("weights");
        assert_eq!(w.weight("acme"), 3.0);
        assert_eq!(w.weight("beta"), 1.5);
        assert_eq!(w.weight("other"), 1.0);
        assert_eq!("".parse::<TenantWeights>(), Ok(TenantWeights::default()));
        assert!("acme".parse::<TenantWeights>().is_err());
        assert!("acme=0".parse::<TenantWeights>().is_err());
        assert!("acme=x".parse::<TenantWeights>().is_err());
    }
}
