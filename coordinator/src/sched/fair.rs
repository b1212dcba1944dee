//! Weighted fair share between tenants within one (kind, class): start-time fair queueing.
//! Each tenant carries a tag, each (kind, class) a virtual time. Serving a tenant starts at
//! `max(tag, vtime)`, the tenant with the smallest start goes next, its tag moves on by
//! `1 / weight` and the virtual time to that start. Backlogged tenants are served in
//! proportion to their weights; a tenant that was idle restarts at the virtual time, so it
//! cannot bank credit for the time it had nothing to run. The clocks live in the store, so
//! every coordinator continues from the same state.

use std::collections::{BTreeMap, HashMap, HashSet};

use tutti_shared::job::{Priority, TaskKind};

use super::TenantWeights;

/// One stored clock: the virtual time of a (kind, class) when `tenant` is `None`, else that
/// tenant's tag.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareRow {
    pub kind: TaskKind,
    pub class: Priority,
    pub tenant: Option<String>,
    pub vtime: f64,
}

#[derive(Debug, Clone, Default)]
struct Clock {
    vtime: f64,
    tags: BTreeMap<String, f64>,
}

/// The clocks of every (kind, class), loaded from the store and written back after a round.
#[derive(Debug, Default)]
pub struct FairClocks {
    clocks: HashMap<(TaskKind, Priority), Clock>,
    changed: HashSet<(TaskKind, Priority)>,
}

impl FairClocks {
    pub fn from_rows(rows: impl IntoIterator<Item = ShareRow>) -> Self {
        let mut out = Self::default();
        for r in rows {
            let clock = out.clocks.entry((r.kind, r.class)).or_default();
            match r.tenant {
                None => clock.vtime = r.vtime,
                Some(t) => {
                    clock.tags.insert(t, r.vtime);
                }
            }
        }
        out
    }

    /// Picks the tenant served next among `waiting` (each with work in this (kind, class))
    /// and charges it one task.
    pub fn serve<'a>(
        &mut self,
        kind: TaskKind,
        class: Priority,
        waiting: impl IntoIterator<Item = &'a str>,
        weights: &TenantWeights,
    ) -> Option<&'a str> {
        let clock = self.clocks.entry((kind, class)).or_default();
        let start = |t: &str| clock.tags.get(t).copied().unwrap_or(0.0).max(clock.vtime);
        // Ties go to the tenant named first, so a round is deterministic.
        let (tenant, begin) = waiting
            .into_iter()
            .map(|t| (t, start(t)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)))?;
        clock.vtime = begin;
        clock
            .tags
            .insert(tenant.to_string(), begin + 1.0 / weights.weight(tenant));
        self.changed.insert((kind, class));
        Some(tenant)
    }

    /// The rows of every clock that moved, to store.
    pub fn changed_rows(&self) -> Vec<ShareRow> {
        let mut out = Vec::new();
        for k in &self.changed {
            let Some(clock) = self.clocks.get(k) else {
                continue;
            };
            out.push(ShareRow {
                kind: k.0,
                class: k.1,
                tenant: None,
                vtime: clock.vtime,
            });
            out.extend(clock.tags.iter().map(|(t, v)| ShareRow {
                kind: k.0,
                class: k.1,
                tenant: Some(t.clone()),
                vtime: *v,
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: TaskKind = TaskKind::Denoise;
    const C: Priority = Priority::Standard;

    fn serve_n(
        clocks: &mut FairClocks,
        waiting: &[&str],
        w: &TenantWeights,
        n: usize,
    ) -> Vec<String> {
        (0..n)
            .map(|_| {
                clocks
                    .serve(K, C, waiting.iter().copied(), w)
                    .expect("a tenant")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn backlogged_tenants_are_served_in_proportion_to_their_weights() {
        let w: TenantWeights = "a=1,b=3".parse().expect("weights");
        let mut clocks = FairClocks::default();
        let served = serve_n(&mut clocks, &["a", "b"], &w, 400);
        let b = served.iter().filter(|t| *t == "b").count();
        assert_eq!((served.len() - b, b), (100, 300));
    }

    #[test]
    fn an_idle_tenant_banks_no_credit() {
        let w = TenantWeights::default();
        let mut clocks = FairClocks::default();
        // a runs alone for a while ...
        serve_n(&mut clocks, &["a"], &w, 50);
        // ... then b shows up: they alternate from now on instead of b taking 50 in a row.
        let served = serve_n(&mut clocks, &["a", "b"], &w, 10);
        let b = served.iter().filter(|t| *t == "b").count();
        assert_eq!(b, 5, "{served:?}");
    }

    #[test]
    fn clocks_survive_a_round_trip_through_rows() {
        let w: TenantWeights = "a=2".parse().expect("weights");
        let mut clocks = FairClocks::default();
        serve_n(&mut clocks, &["a", "b"], &w, 7);
        let rows = clocks.changed_rows();
        assert_eq!(rows.len(), 3);
        let mut again = FairClocks::from_rows(rows);
        assert_eq!(
            serve_n(&mut again, &["a", "b"], &w, 9),
            serve_n(&mut clocks, &["a", "b"], &w, 9)
        );
        assert!(FairClocks::default().changed_rows().is_empty());
        assert_eq!(again.serve(K, C, [], &w), None);
    }
}
