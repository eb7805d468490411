//! The singleton fencing contract, shared by the agent (who fences) and the hub (who moves).
//!
//! Claim: a singleton is never active on two clusters, under arbitrary partitions, message
//! delays and agent restarts, provided the agent finishes removing its copy within
//! `clock_skew` of its deadline and both sides' clocks run at the same rate within that margin.
//!
//! Proof sketch. The agent measures contact from the *send* time `s` of the last heartbeat the
//! hub acknowledged; that heartbeat reached the hub at `a >= s`, so the hub's last heartbeat
//! time `h >= a >= s`. The agent is inactive from `s + fence_after + r` on (`r` = time to remove,
//! `r <= clock_skew`), and stays inactive until the hub delivers the work to it again. The hub
//! places the work elsewhere no earlier than `h + fence_after + clock_skew >= s + fence_after +
//! r`. An agent that restarts has no contact yet and fences at once. So the old copy is gone
//! before the new one can start. The property test below replays random runs of this model.
//!
//! "Until the hub delivers the work to it again" needs two more rules, because a delivery can
//! be decided before a move and arrive after it (QUIC retransmits it when a partition heals;
//! a simulation found exactly that):
//! - Agent: a singleton that arrives when the agent's contact is already older than
//!   `fence_after` is stored fenced, not run (and a copy running under it is fenced too). By
//!   the argument above, a cluster the hub has since given up on has stale contact.
//! - Hub (`tether_hub::singleton`): before the work starts elsewhere, every other cluster
//!   that holds it, is being sent it, or has not yet reported its removal done either reports
//!   it gone or is past `fence_after + clock_skew` with its session closed (a closed QUIC
//!   connection retransmits nothing, and a new session starts from the agent's inventory).
//!   A reachable holder therefore removes its copy before the new one is sent.
//!
//! The model below covers the first part (one holder, one replacement); the late-delivery
//! rules are tested in the agent (`tests/late_singleton.rs`) and the hub (`singleton`), and
//! end to end by the `singleton-failover` simulation.

use std::time::Duration;

/// Agent side: fence when the hub has not acknowledged a heartbeat sent within `fence_after`,
/// or has not been heard from at all since the agent started.
pub fn must_fence(fence_after: Duration, since_contact: Option<Duration>) -> bool {
    since_contact.is_none_or(|age| age >= fence_after)
}

/// Hub side: the work may be placed elsewhere once the cluster's last heartbeat is older than
/// `fence_after + clock_skew`.
pub fn may_move(
    since_last_heartbeat: Duration,
    fence_after: Duration,
    clock_skew: Duration,
) -> bool {
    since_last_heartbeat > fence_after + clock_skew
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A discrete-time model of one singleton moving from cluster A to cluster B.
    /// Time unit: 10 ms. A sends a heartbeat every `hb` ticks; each message is delayed by a
    /// random number of ticks and dropped while A's link is partitioned.
    #[derive(Debug, Clone)]
    struct Step {
        link_up: bool,
        delay_out: u64,
        delay_back: u64,
        restart: bool,
        removal_ticks: u64,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            any::<bool>(),
            0u64..30,
            0u64..30,
            prop::bool::weighted(0.02),
            0u64..5,
        )
            .prop_map(
                |(link_up, delay_out, delay_back, restart, removal_ticks)| Step {
                    link_up,
                    delay_out,
                    delay_back,
                    restart,
                    removal_ticks,
                },
            )
    }

    proptest! {
        #[test]
        fn singleton_is_never_active_twice(
            steps in proptest::collection::vec(step(), 50..400),
            fence_after in 20u64..200,
            skew in 5u64..20,
            hb in 1u64..20,
        ) {
            let tick = Duration::from_millis(10);
            let fence = tick * fence_after as u32;
            let margin = tick * skew as u32;
            // A's state.
            let mut a_active = true;
            let mut a_last_contact: Option<u64> = Some(0);
            let mut a_fencing_until: Option<u64> = None;
            // In flight: (arrives_at_hub, sent_at) and (arrives_at_agent, sent_at).
            let mut to_hub: Vec<(u64, u64)> = Vec::new();
            let mut to_agent: Vec<(u64, u64)> = Vec::new();
            let mut hub_last_hb = 0u64;
            let mut b_active = false;
            for (t, s) in steps.iter().enumerate() {
                let t = t as u64;
                if s.restart {
                    // Restart: no contact known; the copy is (re)started only after fencing
                    // decides otherwise, i.e. never until the hub delivers again.
                    a_last_contact = None;
                    to_agent.clear();
                }
                if t.is_multiple_of(hb) && s.link_up {
                    to_hub.push((t + s.delay_out, t));
                }
                // Deliveries at the hub (answered if the link is up when they arrive).
                let arrived: Vec<_> = to_hub.iter().filter(|(at, _)| *at <= t).cloned().collect();
                to_hub.retain(|(at, _)| *at > t);
                for (_, sent) in arrived {
                    hub_last_hb = hub_last_hb.max(t);
                    if s.link_up && !b_active {
                        to_agent.push((t + s.delay_back, sent));
                    }
                }
                let acks: Vec<_> = to_agent.iter().filter(|(at, _)| *at <= t).cloned().collect();
                to_agent.retain(|(at, _)| *at > t);
                for (_, sent) in acks {
                    if s.link_up {
                        a_last_contact = Some(a_last_contact.map_or(sent, |c| c.max(sent)));
                    }
                }
                // Agent: fence at the deadline; removal takes a few ticks (<= skew).
                let since = a_last_contact.map(|c| tick * (t - c) as u32);
                if a_active && a_fencing_until.is_none() && must_fence(fence, since) {
                    a_fencing_until = Some(t + s.removal_ticks.min(skew));
                }
                if let Some(done) = a_fencing_until {
                    if t >= done {
                        a_active = false;
                    }
                }
                // Hub: move to B once allowed.
                if !b_active && may_move(tick * (t - hub_last_hb) as u32, fence, margin) {
                    b_active = true;
                }
                prop_assert!(!(a_active && b_active), "both active at t={t}");
            }
        }
    }

    #[test]
    fn boundaries() {
        let s = Duration::from_secs;
        assert!(must_fence(s(60), None));
        assert!(!must_fence(s(60), Some(s(59))));
        assert!(must_fence(s(60), Some(s(60))));
        assert!(!may_move(s(65), s(60), s(5)));
        assert!(may_move(s(66), s(60), s(5)));
    }
}
