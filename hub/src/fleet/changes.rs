//! Change events for the controller, keyed and deduplicated (in the style of kube-runtime's
//! reflector and work queue): the writers say *what* changed (a cluster, one cluster's row of a
//! work, a work's rollout state), the controller re-reads only that and decides only the works
//! it touches. A burst of a million status entries about one work is one key.
//!
//! Bounded: past `MAX_KEYS` pending keys the queue drops them all and asks for a full resync,
//! which reads everything anyway.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Pending keys beyond which a full resync is cheaper than keeping them.
pub const MAX_KEYS: usize = 200_000;

/// What changed since the controller last looked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Clusters whose record, health, session or rows may have changed.
    pub clusters: BTreeSet<String>,
    /// (cluster, work) rows that changed (status, delivery acknowledged).
    pub rows: BTreeSet<(String, String)>,
    /// Works whose rollout state an operator changed (pause, resume, undo).
    pub rollouts: BTreeSet<String>,
    /// Everything must be re-read (first pass, overflow, or a writer that cannot say).
    pub resync: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        !self.resync && self.clusters.is_empty() && self.rows.is_empty() && self.rollouts.is_empty()
    }

    fn len(&self) -> usize {
        self.clusters.len() + self.rows.len() + self.rollouts.len()
    }
}

pub struct Changes {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            pending: Mutex::new(Pending {
                resync: true,
                ..Pending::default()
            }),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl Changes {
    fn push(&self, f: impl FnOnce(&mut Pending)) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !p.resync {
                f(&mut p);
                if p.len() > MAX_KEYS {
                    *p = Pending {
                        resync: true,
                        ..Pending::default()
                    };
                }
            }
        }
        self.wake.notify_one();
    }

    /// A cluster's record, health, facts, labels or session changed.
    pub fn cluster(&self, cluster: &str) {
        self.push(|p| {
            p.clusters.insert(cluster.to_string());
        });
    }

    /// Rows of `cluster` for these works changed.
    pub fn rows<'a>(&self, cluster: &str, works: impl IntoIterator<Item = &'a str>) {
        self.push(|p| {
            for w in works {
                p.rows.insert((cluster.to_string(), w.to_string()));
            }
        });
    }

    /// An operator changed a work's rollout state.
    pub fn rollout(&self, work: &str) {
        self.push(|p| {
            p.rollouts.insert(work.to_string());
        });
    }

    /// Re-read everything.
    pub fn resync(&self) {
        self.push(|p| p.resync = true);
    }

    /// Everything pending, leaving the queue empty.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves once something was pushed since the last `take` (or a wake-up was missed).
    pub async fn wait(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deduplicated_and_taken_once() {
        let c = Changes::default();
        assert!(c.take().resync, "the first pass reads everything");
        for _ in 0..1000 {
            c.rows("a", ["w"]);
            c.cluster("a");
        }
        let p = c.take();
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.clusters.len(), 1);
        assert!(!p.resync);
        assert!(c.take().is_empty());
    }

    #[test]
    fn too_many_keys_become_one_resync() {
        let c = Changes::default();
        c.take();
        for i in 0..=MAX_KEYS {
            c.cluster(&format!("c{i}"));
        }
        let p = c.take();
        assert!(p.resync);
        assert!(p.clusters.is_empty(), "bounded: the keys were dropped");
        c.rows("a", ["w"]);
        assert_eq!(c.take().rows.len(), 1);
    }
}
