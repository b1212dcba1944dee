//! Stored values back into the scheduler's types, the same for both dialects (they differ in
//! integer widths only).

use tutti_shared::job::{Priority, TaskKind};

use crate::error::{Error, Result};
use crate::sched::fair::ShareRow;

pub(super) fn kind(s: &str) -> Result<TaskKind> {
    s.parse()
        .map_err(|e| Error::Internal(format!("task kind: {e}")))
}

pub(super) fn class(rank: impl Into<i64>) -> Result<Priority> {
    let rank = rank.into();
    Priority::from_rank(rank).ok_or_else(|| Error::Internal(format!("priority rank {rank}")))
}

/// The fair-share clocks as read: per class `(kind, rank, vtime)`, per tenant
/// `(kind, rank, tenant, vtime)`.
pub(super) fn share_rows<R: Into<i64>>(
    classes: Vec<(String, R, f64)>,
    tenants: Vec<(String, R, String, f64)>,
) -> Result<Vec<ShareRow>> {
    let classes = classes
        .into_iter()
        .map(|(k, rank, vtime)| (k, rank, None, vtime));
    let tenants = tenants
        .into_iter()
        .map(|(k, rank, tenant, vtime)| (k, rank, Some(tenant), vtime));
    classes
        .chain(tenants)
        .map(|(k, rank, tenant, vtime)| {
            Ok(ShareRow {
                kind: kind(&k)?,
                class: class(rank)?,
                tenant,
                vtime,
            })
        })
        .collect()
}
