//! Where a set of jobs spent their time, read from the farm's own records (`jobs`, `job_events`):
//! for `tutti bench farm`, so that its report shows which part of an interactive job grows under
//! a backfill (scheduling waits, or everything at once, as CPU contention does) without a
//! separate look at a kept database.

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

/// Mean milliseconds per job of each part; the parts add up to the mean client-side time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Breakdown {
    /// Accepted to its first dispatch (the backlog and the dispatch round).
    pub(crate) queued: f64,
    /// On the workers: each task's own time (reading its start, the engine, storing its output).
    pub(crate) worker: f64,
    /// From each dispatch to its result, less the worker's time: the rest of the dispatch round,
    /// the task message, the result message and its wait to be applied. (Event times are their
    /// transaction's start: a dispatch's is its round's, a result's is when it began to apply.)
    pub(crate) transit: f64,
    /// From a result to the dispatch round that sends the job's next task.
    pub(crate) between: f64,
    /// What the client saw beyond the job's life in the farm: the submit call and the watch
    /// stream's last event.
    pub(crate) client: f64,
}

impl Breakdown {
    pub(crate) fn total(&self) -> f64 {
        self.queued + self.worker + self.transit + self.between + self.client
    }
}

/// Sums per job, averaged over `ids`. A task's dispatch pairs with its `chunk_done` by chunk
/// and attempt; `client_ms` is the mean time the client measured for the same jobs.
const PER_JOB: &str = r#"
WITH ev AS (
    SELECT job_id, kind, chunk, attempt, at, (detail->>'millis')::float8 AS millis
    FROM job_events WHERE job_id = ANY($1)
), tasks AS (
    SELECT d.job_id, c.millis,
           extract(epoch FROM c.at - d.at) * 1000 - c.millis AS transit
    FROM ev d
    JOIN ev c ON c.job_id = d.job_id AND c.chunk = d.chunk AND c.attempt = d.attempt
             AND c.kind = 'chunk_done'
    WHERE d.kind = 'dispatched'
), per_job AS (
    SELECT j.id,
           extract(epoch FROM j.finished_at - j.created_at) * 1000 AS total,
           extract(epoch FROM (SELECT min(at) FROM ev WHERE ev.job_id = j.id
                               AND ev.kind = 'dispatched') - j.created_at) * 1000 AS queued,
           (SELECT coalesce(sum(millis), 0) FROM tasks t WHERE t.job_id = j.id) AS worker,
           (SELECT coalesce(sum(transit), 0) FROM tasks t WHERE t.job_id = j.id) AS transit
    FROM jobs j WHERE j.id = ANY($1) AND j.finished_at IS NOT NULL
)
SELECT count(*), avg(total)::float8, avg(queued)::float8, avg(worker)::float8,
       avg(transit)::float8
FROM per_job
"#;

/// The breakdown of the finished jobs among `ids`.
pub(crate) async fn breakdown(
    pool: &PgPool,
    ids: &[Uuid],
    client_ms: f64,
) -> anyhow::Result<Breakdown> {
    let (n, total, queued, worker, transit): (
        i64,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    ) = sqlx::query_as(PER_JOB)
        .bind(ids)
        .fetch_one(pool)
        .await
        .context("reading the jobs' events")?;
    anyhow::ensure!(
        n > 0,
        "none of the {} jobs has finished in the database",
        ids.len()
    );
    let total = total.unwrap_or(0.0);
    let (queued, worker, transit) = (
        queued.unwrap_or(0.0),
        worker.unwrap_or(0.0),
        transit.unwrap_or(0.0),
    );
    Ok(Breakdown {
        queued,
        worker,
        transit,
        between: total - queued - worker - transit,
        client: client_ms - total,
    })
}

/// The report's table: one row per part, idle against under the backfill.
pub(crate) fn table(idle: &Breakdown, busy: &Breakdown) -> String {
    let rows = [
        (
            "queued (accepted to first dispatch)",
            idle.queued,
            busy.queued,
        ),
        ("on the workers (tasks' own time)", idle.worker, busy.worker),
        (
            "in transit (dispatch round, task and result messages)",
            idle.transit,
            busy.transit,
        ),
        (
            "between a result and the next dispatch round",
            idle.between,
            busy.between,
        ),
        (
            "client (submit call, watch stream)",
            idle.client,
            busy.client,
        ),
        ("**total**", idle.total(), busy.total()),
    ];
    let mut out =
        String::from("| mean ms per job | idle | under backfill | ratio |\n|---|---|---|---|\n");
    for (name, i, b) in rows {
        let ratio = if i > 0.0 {
            format!("{:.1}x", b / i)
        } else {
            "-".into()
        };
        out.push_str(&format!("| {name} | {i:.1} | {b:.1} | {ratio} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_add_up_to_what_the_client_saw() {
        let b = Breakdown {
            queued: 1.0,
            worker: 30.0,
            transit: 12.0,
            between: 4.0,
            client: 3.0,
        };
        assert_eq!(b.total(), 50.0);
        let t = table(&b, &b);
        assert!(t.contains("| **total** | 50.0 | 50.0 | 1.0x |"), "{t}");
        assert_eq!(t.lines().count(), 8);
    }
}
