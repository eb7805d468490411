//! Which hub replica decides on a PostgreSQL store: the one that holds its lease.
//!
//! Several hub processes (replicas) serve one database (on several machines, each with a
//! copy of the data directory's keys); all of them serve agents and admins. One holds the
//! lease and runs the controller (`replicas::leader`); the first to find the lease expired
//! takes over with a new epoch. Every write of the lease holder checks its epoch in the same
//! transaction, so a replica that stalled or lost the database past its lease never writes
//! again; and it stops itself (closing every session, so that agents move to the next
//! `--hub` address) once it cannot renew within the lease's time.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_store::{Lease, Store};

/// How often a replica without the lease looks whether it is free.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// This process's name in the lease: the host and the data directory, so that a hub
/// restarted on the same machine and directory takes its own lease back at once (in a new
/// epoch), while two hubs must differ in one of them.
pub(crate) fn holder(dir: &crate::config::DataDir) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "hub".into());
    let path = std::fs::canonicalize(&dir.root).unwrap_or_else(|_| dir.root.clone());
    format!("{host}:{}", path.display())
}

/// Wait until this process holds the lease (following another replica's decisions meanwhile).
pub(crate) async fn acquire(
    store: &Arc<Store>,
    holder: &str,
    ttl: Duration,
) -> anyhow::Result<Lease> {
    let mut said = false;
    loop {
        let (s, h) = (store.clone(), holder.to_string());
        let got = tokio::task::spawn_blocking(move || s.acquire_lease(&h, ttl)).await?;
        match got {
            Ok(Some(lease)) => {
                store.fence_writes(&lease)?;
                tracing::info!(
                    holder,
                    epoch = lease.epoch,
                    "took the lease; this replica decides (controller, git sync)"
                );
                return Ok(lease);
            }
            Ok(None) if !said => {
                tracing::info!(holder, lease_ttl = ?ttl, "another replica holds the lease and decides; this one serves and follows, and takes over when the lease expires");
                said = true;
            }
            Ok(None) => {}
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot reach the database to look at the lease");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(STANDBY_POLL).await;
    }
}

/// Change-feed entries older than this are pruned by the lease holder (a reader further
/// behind re-reads everything), and how often.
const FEED_RETENTION: Duration = Duration::from_secs(600);
const FEED_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Renew the lease every third of its time, counting from `acquired`; return (which stops the
/// hub) once it is lost, or could not be renewed before it would expire: a renewal that hangs
/// (a dead path to the database) counts as failed when the lease would run out.
pub(crate) async fn keep(store: Arc<Store>, lease: Lease, ttl: Duration, acquired: Instant) {
    let mut renewed = acquired;
    let mut pruned = Instant::now();
    loop {
        tokio::time::sleep_until((renewed + ttl / 3).into()).await;
        let left = ttl.saturating_sub(renewed.elapsed());
        let (s, l) = (store.clone(), lease.clone());
        let attempt = tokio::task::spawn_blocking(move || s.renew_lease(&l, ttl));
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(Ok(true))) => renewed = Instant::now(),
            Ok(Ok(Ok(false))) => {
                tracing::error!(
                    epoch = lease.epoch,
                    "lost the lease to another replica; stopping (restarted, this process serves and follows)"
                );
                return;
            }
            Ok(Ok(Err(e))) if renewed.elapsed() < ttl => {
                tracing::warn!(error = %e, "could not renew the lease; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "could not renew the lease before it expired; stopping so that agents move to a hub that can");
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the lease renewal task failed; stopping");
                return;
            }
            Err(_) => {
                tracing::error!("renewing the lease took until it expired; stopping so that agents move to a hub that can");
                return;
            }
        }
        if pruned.elapsed() >= FEED_PRUNE_EVERY {
            pruned = Instant::now();
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.prune_changes_older_than(FEED_RETENTION))
                .await
            {
                Ok(Ok(n)) if n > 0 => tracing::debug!(entries = n, "pruned the change feed"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not prune the change feed"),
                Err(e) => tracing::warn!(error = %e, "the change-feed pruning task failed"),
            }
        }
    }
}
