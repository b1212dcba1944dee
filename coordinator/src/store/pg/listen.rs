//! The notifier's feed from `LISTEN`, and creating the database on a fresh server.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, PgPool};

use super::rows::{JOBS_CHANNEL, TASKS_CHANNEL};
use crate::error::Result;
use crate::notify::{Change, Notifier};

/// Feeds the notifier from `LISTEN` until the store is dropped; reconnects when the
/// connection drops, and then wakes everyone in case a notice was lost meanwhile.
pub(super) async fn listen(pool: PgPool, notifier: std::sync::Weak<Notifier>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "job store: listen failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if notifier.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if listener
            .listen_all([TASKS_CHANNEL, JOBS_CHANNEL])
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
            let Some(notifier) = notifier.upgrade() else {
                return;
            };
            match n {
                Err(_) => continue,
                Ok(Ok(n)) if n.channel() == TASKS_CHANNEL => notifier.tasks_changed(),
                Ok(Ok(n)) => {
                    let change = n.payload().split_once(' ').and_then(|(job, what)| {
                        Some((job.parse().ok()?, Change::from_wire(what)?))
                    });
                    match change {
                        Some((job, what)) => notifier.job_changed(job, what),
                        None => {
                            tracing::warn!(payload = n.payload(), "job store: unknown job notice")
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "job store: notification connection lost");
                    notifier.tasks_changed();
                    break;
                }
            }
        }
    }
}

/// Creates the target database if it is missing (handy on a fresh server; harmless otherwise).
pub(super) async fn ensure_database(opts: &PgConnectOptions) -> Result<()> {
    let Some(name) = opts.get_database().map(str::to_string) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = match admin.connect().await {
        Ok(c) => c,
        // Without access to `postgres`, assume the database exists; the pool will say if not.
        Err(_) => return Ok(()),
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut conn)
            .await
        {
            // Another replica may have created it between the check and here.
            tracing::debug!(error = %e, database = %name, "create database");
        }
    }
    Ok(())
}
