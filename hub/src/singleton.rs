//! Singleton handover: when may the hub deliver a singleton to its (new) cluster?
//!
//! The fencing contract (`tether_protocol::fencing`) says an agent out of contact for
//! `fenceAfter` stops its copy, so the hub may move the work after `fenceAfter + clockSkew`.
//! That covers copies the agent *holds*. It does not cover a copy still *on its way*: a
//! delivery sent before the move (to a cluster that then lost its link) is retransmitted by
//! QUIC when the link heals and could start next to the new holder. So before the new cluster
//! gets the work, every other cluster must be unable to run it:
//!
//! - it neither holds an unfenced copy, nor has a delivery of one in flight, nor has a removal
//!   acknowledged but not yet reported done; or
//! - it is tainted (unreachable beyond `fenceAfter + clockSkew`, so its agent has fenced) and
//!   the hub holds no session with it, so nothing sent earlier can still reach it there. (A
//!   new session starts from an inventory, and an agent whose contact is stale stores a late
//!   delivery fenced.)
//!
//! A reachable holder is thus asked to remove its copy first, and the new cluster gets the
//! work once the removal is acknowledged: break before make.

use std::collections::BTreeSet;
use std::sync::Mutex;

type Key = (String, String);

/// Singleton copies the hub's store does not show but that may exist, as (work, cluster):
/// deliveries sent and not yet answered (at most one per session: its delivery task waits for
/// each answer), and removals acknowledged but not yet reported done (the agent acknowledges a
/// removal once it is committed; the objects go in its next reconcile pass, which reports
/// `Removed`). Bounded by works x clusters.
#[derive(Debug, Default)]
pub struct InFlight {
    deliveries: Mutex<BTreeSet<Key>>,
    removals: Mutex<BTreeSet<Key>>,
}

fn key(work: &str, cluster: &str) -> Key {
    (work.to_string(), cluster.to_string())
}

impl InFlight {
    /// Record a delivery about to be sent; it counts until the guard is dropped.
    pub fn start<'a>(&'a self, work: &str, cluster: &str) -> InFlightGuard<'a> {
        let key = key(work, cluster);
        lock(&self.deliveries).insert(key.clone());
        InFlightGuard { set: self, key }
    }

    /// The agent acknowledged removing its copy; it may run until the removal is reported.
    pub fn removal_acknowledged(&self, work: &str, cluster: &str) {
        lock(&self.removals).insert(key(work, cluster));
    }

    /// The agent reported the copy gone (removed, orphaned on request, or fenced).
    pub fn copy_gone(&self, work: &str, cluster: &str) {
        lock(&self.removals).remove(&key(work, cluster));
    }

    pub fn contains(&self, work: &str, cluster: &str) -> bool {
        let k = key(work, cluster);
        lock(&self.deliveries).contains(&k) || lock(&self.removals).contains(&k)
    }
}

fn lock(m: &Mutex<BTreeSet<Key>>) -> std::sync::MutexGuard<'_, BTreeSet<Key>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drop it once the delivery is answered, or once its connection is closed (a closed
/// connection retransmits nothing).
#[must_use]
pub struct InFlightGuard<'a> {
    set: &'a InFlight,
    key: (String, String),
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.set.deliveries).remove(&self.key);
    }
}

/// What the hub knows about one cluster other than the singleton's target.
#[derive(Debug, Clone)]
pub struct Other<'a> {
    pub cluster: &'a str,
    /// Acknowledged an unfenced copy, or a delivery of one is in flight.
    pub may_hold: bool,
    /// Unreachable for longer than `fenceAfter + clockSkew`.
    pub tainted: bool,
    pub session_open: bool,
}

/// The clusters the target must wait for; empty means deliver now.
pub fn blockers<'a>(others: impl IntoIterator<Item = Other<'a>>) -> Vec<String> {
    others
        .into_iter()
        // Cleared only by being fenced for sure: past the deadline with nothing in flight.
        .filter(|o| o.may_hold && (!o.tainted || o.session_open))
        .map(|o| o.cluster.to_string())
        .collect()
}

/// Sessions the hub should close so that nothing in flight can reach a tainted cluster that
/// may hold the work.
pub fn sessions_to_close<'a>(others: impl IntoIterator<Item = Other<'a>>) -> Vec<String> {
    others
        .into_iter()
        .filter(|o| o.may_hold && o.tainted && o.session_open)
        .map(|o| o.cluster.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(cluster: &str, may_hold: bool, tainted: bool, session_open: bool) -> Other<'_> {
        Other {
            cluster,
            may_hold,
            tainted,
            session_open,
        }
    }

    #[test]
    fn in_flight_lasts_as_long_as_its_guard() {
        let f = InFlight::default();
        let g = f.start("w", "a");
        assert!(f.contains("w", "a"));
        assert!(!f.contains("w", "b"));
        drop(g);
        assert!(!f.contains("w", "a"));
    }

    #[test]
    fn an_acknowledged_removal_counts_until_the_copy_is_reported_gone() {
        let f = InFlight::default();
        f.removal_acknowledged("w", "a");
        assert!(f.contains("w", "a"));
        f.copy_gone("w", "b");
        assert!(f.contains("w", "a"));
        f.copy_gone("w", "a");
        assert!(!f.contains("w", "a"));
    }

    #[test]
    fn a_cluster_that_cannot_hold_it_never_blocks() {
        let others = [
            other("a", false, false, true),
            other("b", false, true, true),
        ];
        assert!(blockers(others.clone()).is_empty());
        assert!(sessions_to_close(others).is_empty());
    }

    #[test]
    fn a_reachable_holder_blocks_until_its_removal_is_acknowledged() {
        assert_eq!(blockers([other("a", true, false, true)]), ["a"]);
        assert_eq!(
            blockers([other("a", false, false, true)]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_tainted_holder_blocks_while_the_hub_still_has_a_session_with_it() {
        // The replay of the failure seen in simulation: a delivery to "b" is stuck in a
        // partition; "b" is tainted, but its old session would still carry the copy after the
        // heal. Close the session first, then hand over.
        let stuck = other("b", true, true, true);
        assert_eq!(blockers([stuck.clone()]), ["b"]);
        assert_eq!(sessions_to_close([stuck]), ["b"]);
        assert!(blockers([other("b", true, true, false)]).is_empty());
    }

    #[test]
    fn an_unreachable_but_not_yet_tainted_holder_blocks() {
        assert_eq!(blockers([other("a", true, false, false)]), ["a"]);
        assert!(sessions_to_close([other("a", true, false, true)]).is_empty());
    }
}
