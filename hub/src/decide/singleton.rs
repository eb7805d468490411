//! Singleton handover: when may the hub deliver a singleton to its (new) cluster?
//!
//! The fencing contract (`tether_protocol::fencing`) says an agent out of contact for
//! `fenceAfter` stops its copy, so the hub may move the work after `fenceAfter + clockSkew`.
//! That covers copies the agent *holds*. It does not cover a copy still *on its way*: a
//! delivery sent before the move (to a cluster that then lost its link) is retransmitted by
//! QUIC when the link heals and could start next to the new holder. So before the new cluster
//! gets the work, every other cluster must be unable to run it:
//!
//! - it neither holds an unfenced copy, nor has a delivery of one in flight, nor has a copy
//!   whose removal it acknowledged but has not yet reported done ([`copy_may_run`]); or
//! - it is tainted (unreachable beyond `fenceAfter + clockSkew`, so its agent has fenced) and
//!   the hub holds no session with it, so nothing sent earlier can still reach it there. (A
//!   new session starts from an inventory, and an agent whose contact is stale stores a late
//!   delivery fenced.)
//!
//! A reachable holder is thus asked to remove its copy first, and the new cluster gets the
//! work once the removal is acknowledged: break before make.

use tether_protocol::WorkPhase;
use tether_store::hub::ClusterWorkRecord;

/// Whether the hub's row says a copy may be running there: an unfenced copy acknowledged, or
/// a last reported status of a copy that was applied (or half-applied). For singletons the
/// row outlives an acknowledged removal until the agent reports the copy `Removed` (the
/// acknowledgement means the removal is committed, not done), and it is persisted, so this
/// holds across sessions and hub restarts.
pub fn copy_may_run(row: Option<&ClusterWorkRecord>) -> bool {
    row.is_some_and(|r| {
        r.delivered.as_ref().is_some_and(|d| !d.fenced)
            || r.status.as_ref().is_some_and(|s| {
                matches!(
                    s.phase,
                    WorkPhase::Available | WorkPhase::Applied | WorkPhase::Failed
                )
            })
    })
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

/// Singleton works tell their agent when to fence itself.
pub fn fence_after_ms(spec: &tether_protocol::work::WorkSpec) -> Option<u64> {
    spec.failover
        .as_ref()
        .filter(|f| f.mode == tether_protocol::work::FailoverMode::Singleton)
        .map(|f| f.fence_after_seconds * 1000)
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

    fn row(delivered: Option<bool>, phase: Option<WorkPhase>) -> ClusterWorkRecord {
        ClusterWorkRecord {
            delivered: delivered.map(|fenced| tether_protocol::HeldWork {
                generation: 1,
                hash: "h".into(),
                fenced,
            }),
            delivered_at_ms: None,
            status: phase.map(|phase| tether_protocol::WorkStatus {
                work: "w".into(),
                generation: 1,
                hash: "h".into(),
                phase,
                conditions: vec![],
                resources: vec![],
                message: String::new(),
                observed_at_ms: 0,
            }),
            status_seq: 1,
        }
    }

    #[test]
    fn a_copy_may_run_until_it_is_reported_gone() {
        assert!(!copy_may_run(None));
        assert!(copy_may_run(Some(&row(Some(false), None))), "acknowledged");
        assert!(
            !copy_may_run(Some(&row(Some(true), None))),
            "acknowledged fenced"
        );
        // Removal acknowledged (delivery cleared), the copy not yet reported removed.
        assert!(copy_may_run(Some(&row(None, Some(WorkPhase::Available)))));
        assert!(copy_may_run(Some(&row(None, Some(WorkPhase::Failed)))));
        for gone in [WorkPhase::Removed, WorkPhase::Orphaned, WorkPhase::Fenced] {
            assert!(!copy_may_run(Some(&row(None, Some(gone)))));
        }
        // Fenced on arrival, but its last status (before fencing) said it ran.
        assert!(copy_may_run(Some(&row(
            Some(true),
            Some(WorkPhase::Applied)
        ))));
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
