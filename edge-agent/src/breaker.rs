//! The deletion circuit breaker: the agent refuses to delete a large share of what it manages
//! at once, the top complaint about fleet managers (a failover or a reconnect that empties a
//! cluster). A removal or prune that would take the deletions of the last `window` past
//! `max_share` of the managed objects is held, reported, and waits for the owner's
//! confirmation on the cluster (`tether-agent confirm-removal WORK`).
//!
//! The budget is pure arithmetic over `now`; confirmations are files in the data directory so
//! that the command works while the running agent holds the database.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Breaker {
    /// Share of managed objects that may be deleted within `window` (1.0: no limit).
    pub max_share: f64,
    /// Deletions always allowed within `window`, so a small cluster can still drop a work.
    pub min_allowance: usize,
    pub window: Duration,
    recent: VecDeque<(Instant, usize)>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(0.5)
    }
}

/// A deletion the breaker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub deleting: usize,
    pub managed: usize,
    pub already: usize,
    pub allowance: usize,
}

impl Held {
    pub fn explain(&self, work: &str, window: Duration) -> String {
        format!(
            "held by the deletion circuit breaker: would delete {} of {} managed objects ({} already deleted in the last {}s, {} allowed); confirm on the cluster with `tether-agent confirm-removal --data-dir DIR {work}`",
            self.deleting,
            self.managed,
            self.already,
            window.as_secs(),
            self.allowance
        )
    }
}

impl Breaker {
    pub fn new(max_share: f64) -> Self {
        Self {
            max_share: max_share.clamp(0.0, 1.0),
            min_allowance: 10,
            window: Duration::from_secs(600),
            recent: VecDeque::new(),
        }
    }

    /// Whether `deleting` objects may go now, out of `managed` managed in all; an admitted
    /// deletion counts against the window.
    pub fn admit(&mut self, now: Instant, deleting: usize, managed: usize) -> Result<(), Held> {
        if deleting == 0 || self.max_share >= 1.0 {
            return Ok(());
        }
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.window)
        {
            self.recent.pop_front();
        }
        let already: usize = self.recent.iter().map(|(_, n)| n).sum();
        let allowance =
            ((managed as f64 * self.max_share).floor() as usize).max(self.min_allowance);
        if already + deleting > allowance {
            return Err(Held {
                deleting,
                managed,
                already,
                allowance,
            });
        }
        self.recent.push_back((now, deleting));
        Ok(())
    }

    /// A confirmed deletion bypasses the budget but still counts against it.
    pub fn record(&mut self, now: Instant, deleting: usize) {
        self.recent.push_back((now, deleting));
    }
}

fn confirmation(data_dir: &Path, work: &str) -> PathBuf {
    data_dir.join("confirm-removal").join(work)
}

/// Written by `tether-agent confirm-removal`; work names are DNS labels, safe as file names.
pub fn confirm(data_dir: &Path, work: &str) -> std::io::Result<PathBuf> {
    let p = confirmation(data_dir, work);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&p, b"")?;
    Ok(p)
}

pub fn is_confirmed(data_dir: &Path, work: &str) -> bool {
    confirmation(data_dir, work).exists()
}

/// A confirmation is good for one deletion.
pub fn consume(data_dir: &Path, work: &str) {
    let p = confirmation(data_dir, work);
    if let Err(e) = std::fs::remove_file(&p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove a used removal confirmation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_mass_deletion_and_lets_ordinary_ones_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0.5);
        // 100 managed: 50 may go within the window, in as many steps as they like.
        assert!(b.admit(t0, 30, 100).is_ok());
        assert!(b.admit(t0, 20, 100).is_ok());
        let held = b.admit(t0, 1, 100).unwrap_err();
        assert_eq!((held.already, held.allowance), (50, 50));
        // After the window the budget is back.
        assert!(b.admit(t0 + b.window, 40, 100).is_ok());
        // One work taking 90 % of a cluster is held outright.
        let mut b = Breaker::new(0.5);
        assert!(b.admit(t0, 90, 100).is_err());
        // A small cluster can still drop a work (the minimum allowance).
        assert!(Breaker::new(0.5).admit(t0, 3, 4).is_ok());
        // 1.0 turns it off; nothing to delete is always fine.
        assert!(Breaker::new(1.0).admit(t0, 1000, 1000).is_ok());
        assert!(Breaker::new(0.0).admit(t0, 0, 1000).is_ok());
    }

    #[test]
    fn confirmations_are_files_used_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_confirmed(dir.path(), "app"));
        confirm(dir.path(), "app").unwrap();
        assert!(is_confirmed(dir.path(), "app"));
        consume(dir.path(), "app");
        assert!(!is_confirmed(dir.path(), "app"));
    }
}
