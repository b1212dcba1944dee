//! `Operator.ReplayDeadLetters`: dead-lettered messages back on the queues they were refused
//! from, once their cause is fixed; each replay recorded (by key, per queue) for GetQueues.

use std::collections::BTreeMap;

use chrono::Utc;
use tutti_proto::v1 as pb;
use tutti_shared::job::TaskKind;
use tutti_shared::taskqueue::QueueName;

use super::OperatorService;
use crate::api::ts;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::views::ReplayRow;

/// Messages one call replays when it names no limit, and the most it may name.
pub const DEFAULT_REPLAY_LIMIT: u32 = 100;
pub const MAX_REPLAY_LIMIT: u32 = 10_000;

fn queue_of(name: &str) -> Result<Option<QueueName>> {
    match name.trim() {
        "" => Ok(None),
        "denoise" => Ok(Some(QueueName::Task(TaskKind::Denoise))),
        "vocode" => Ok(Some(QueueName::Task(TaskKind::Vocode))),
        "results" => Ok(Some(QueueName::Results)),
        _ => Err(Error::invalid(
            "queue",
            "must be denoise, vocode or results (or empty for every queue)",
        )),
    }
}

pub(crate) fn replay_pb(r: ReplayRow) -> pb::DeadLetterReplay {
    pb::DeadLetterReplay {
        queue: r.queue,
        messages: r.messages,
        size_bytes: r.size_bytes,
        replayed_by: r.by,
        at: Some(ts(r.at)),
    }
}

impl OperatorService {
    pub(crate) async fn replay(
        &self,
        caller: &Caller,
        req: &pb::ReplayDeadLettersRequest,
    ) -> Result<pb::ReplayDeadLettersResponse> {
        let limit = match req.limit {
            0 => DEFAULT_REPLAY_LIMIT,
            n if n > MAX_REPLAY_LIMIT => {
                return Err(Error::invalid(
                    "limit",
                    format!("must be at most {MAX_REPLAY_LIMIT}"),
                ))
            }
            n => n,
        };
        let only = queue_of(&req.queue)?;
        let replayed = self.queue.replay_dead_letters(limit, only).await?;
        let mut per_queue: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        for r in &replayed {
            let e = per_queue.entry(r.queue.as_str()).or_default();
            e.0 += 1;
            e.1 += r.size_bytes;
        }
        let by = caller.key.clone().unwrap_or_else(|| "operator".into());
        let rows: Vec<(&str, u64, u64)> = per_queue
            .iter()
            .map(|(q, (n, bytes))| (*q, *n, *bytes))
            .collect();
        if !rows.is_empty() {
            // The messages are back on their queues already: a failure to record says so.
            self.store.record_replays(&by, &rows).await.map_err(|e| {
                Error::Internal(format!(
                    "replayed {} dead letters but could not record it: {e}",
                    replayed.len()
                ))
            })?;
        }
        tracing::info!(by = %by, replayed = replayed.len(), "dead letters replayed");
        let now = Utc::now();
        Ok(pb::ReplayDeadLettersResponse {
            replayed: replayed.len() as u64,
            replays: rows
                .into_iter()
                .map(|(queue, messages, size_bytes)| {
                    replay_pb(ReplayRow {
                        by: by.clone(),
                        queue: queue.to_string(),
                        messages,
                        size_bytes,
                        at: now,
                    })
                })
                .collect(),
            left: self.queue.dead_letters().await?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queues_are_named_as_operators_see_them() {
        assert!(super::queue_of("").expect("all").is_none());
        assert!(super::queue_of("vocode").expect("vocode").is_some());
        let err = super::queue_of("other").expect_err("unknown");
        assert!(err.to_string().starts_with("queue: "), "{err}");
    }
}
