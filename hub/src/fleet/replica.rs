//! This hub process as one replica among several on one PostgreSQL database (see
//! `replicas`): which replica holds each cluster's session, which replicas are alive, whether
//! this one holds the lease, and the rule for who decides a cluster's health.
//!
//! The replica holding the cluster's session sees its heartbeats, so it alone may store
//! Ready, Unknown or Offline for it; it stays in charge after the session ends (Unknown, then
//! Offline after the grace) until another replica takes the session. When the holder dies,
//! nobody would ever mark its clusters away: the lease holder speaks for them.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tether_store::StrTable;

/// Which replica holds (or last held) each cluster's session.
pub(crate) const SESSION_HOLDERS: StrTable<Holder> = StrTable::new("session_holders");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub replica: String,
    pub since_ms: u64,
}

/// This process as one replica among several.
pub(crate) struct Replica {
    /// Unique among the replicas of a database: host and data directory (`lease::holder`).
    pub name: String,
    /// Cluster -> the replica holding its session, as stored (kept current by `feed`).
    holders: Mutex<HashMap<String, String>>,
    /// Replicas whose liveness beat has not expired, this one included.
    live: Mutex<BTreeSet<String>>,
    leader: AtomicBool,
    /// The lease while this replica holds it (released at a clean stop).
    pub(crate) lease: Mutex<Option<tether_store::Lease>>,
}

impl Replica {
    pub(crate) fn new(name: String) -> Self {
        let live = BTreeSet::from([name.clone()]);
        Self {
            name,
            holders: Mutex::default(),
            live: Mutex::new(live),
            leader: AtomicBool::new(false),
            lease: Mutex::new(None),
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    pub(crate) fn set_leader(&self, lease: tether_store::Lease) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
        self.leader.store(true, Ordering::Release);
    }

    pub(crate) fn holder(&self, cluster: &str) -> Option<String> {
        self.holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned()
    }

    pub(crate) fn set_holder(&self, cluster: &str, holder: Option<String>) {
        let mut h = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        match holder {
            Some(r) => h.insert(cluster.to_string(), r),
            None => h.remove(cluster),
        };
    }

    pub(crate) fn holders(&self) -> Vec<(String, String)> {
        self.holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, r)| (c.clone(), r.clone()))
            .collect()
    }

    pub(crate) fn live(&self) -> BTreeSet<String> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_live(&self, mut live: BTreeSet<String>) {
        live.insert(self.name.clone());
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// Whether this replica decides `cluster`'s health (see `holders::responsible`).
    pub(crate) fn responsible(&self, stored_holder: Option<&str>) -> bool {
        responsible(&self.name, stored_holder, &self.live(), self.is_leader())
    }

    /// Same, from the holder as this replica last heard it.
    pub(crate) fn responsible_now(&self, cluster: &str) -> bool {
        let h = self.holder(cluster);
        self.responsible(h.as_deref())
    }
}

/// Whether replica `me` decides the health of a cluster whose stored session holder is
/// `holder`, given the replicas alive now and whether `me` holds the lease.
pub(crate) fn responsible(
    me: &str,
    holder: Option<&str>,
    live: &BTreeSet<String>,
    leader: bool,
) -> bool {
    match holder {
        Some(h) if h == me => true,
        Some(h) if live.contains(h) => false,
        // Never connected under replicas, or its holder died: the leader speaks for it.
        _ => leader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_holder_decides_while_it_lives() {
        let l = live(&["a", "b"]);
        assert!(responsible("a", Some("a"), &l, false));
        assert!(
            !responsible("b", Some("a"), &l, true),
            "not even the leader"
        );
    }

    #[test]
    fn the_leader_speaks_for_a_dead_holder_and_for_nobody_s() {
        let l = live(&["b"]);
        assert!(responsible("b", Some("a"), &l, true));
        assert!(!responsible("c", Some("a"), &l, false));
        assert!(responsible("b", None, &l, true));
        assert!(!responsible("c", None, &l, false));
    }

    proptest! {
        /// Among live replicas with at most one leader, at most one decides each cluster,
        /// and with a live leader exactly one does.
        #[test]
        fn at_most_one_replica_decides(
            n in 1usize..6,
            holder in proptest::option::of(0usize..8),
            leader in proptest::option::of(0usize..6),
        ) {
            let names: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            let l: BTreeSet<String> = names.iter().cloned().collect();
            let holder = holder.map(|h| format!("r{h}"));
            let deciders = names
                .iter()
                .enumerate()
                .filter(|(i, me)| responsible(me, holder.as_deref(), &l, leader == Some(*i)))
                .count();
            prop_assert!(deciders <= 1);
            if leader.is_some_and(|i| i < n) {
                prop_assert_eq!(deciders, 1);
            }
        }
    }
}
