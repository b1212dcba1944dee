//! The page tokens of the list RPCs (`ListJobs`, `ListBatches`): the last row's creation time in
//! microseconds and its id, so the next page starts strictly after it in newest-first order.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};

pub fn encode(created_at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", created_at.timestamp_micros(), id)
}

/// The cursor a token names; a token no `rpc` response gave is an invalid `page_token`.
pub fn decode(t: &str, rpc: &str) -> Result<(DateTime<Utc>, Uuid)> {
    let bad = || {
        Error::invalid(
            "page_token",
            format!("must be a token from a previous {rpc} response"),
        )
    };
    let (micros, id) = t.split_once('_').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}
