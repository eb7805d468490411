//! Cluster health as a pure state machine: events and the current time go in, state
//! transitions come out. The hub feeds it from sessions and a periodic tick; the simulator can
//! drive it directly.
//!
//! Rules (per cluster):
//! - `Ready`: the last heartbeat is at most `missed_heartbeats` intervals old, and a session is
//!   up or the last one closed less than one heartbeat interval ago (an agent restarting does
//!   not flap Ready -> Unknown -> Ready).
//! - `Offline`: not Ready, and no sign of life (heartbeat, session opened, hub start) for at
//!   least `offline_grace`. Counted from the last heartbeat, not from when the connection
//!   closes: a silent agent's QUIC connection only times out a minute later.
//! - `Unknown`: everything in between (heartbeats stopped, or disconnected within the grace,
//!   or the hub restarted and has not heard from the cluster yet).

use std::collections::HashMap;
use std::time::Duration;
use tether_store::hub::ClusterState;

#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: u32,
    pub offline_grace: Duration,
}

/// 15 s: Unknown after 45 s of silence. With datagram heartbeats an idle agent costs ~17 KB
/// per hour on the wire at this period (docs/benchmarks.md), within a metered link's budget;
/// 10 s costs ~25 KB/h.
impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            missed_heartbeats: 3,
            offline_grace: Duration::from_secs(300),
        }
    }
}

impl HealthConfig {
    fn stale_after_ms(&self) -> u64 {
        self.heartbeat_interval.as_millis() as u64 * u64::from(self.missed_heartbeats)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub cluster: String,
    pub from: ClusterState,
    pub to: ClusterState,
    pub at_ms: u64,
    /// Last heartbeat seen, for persisting `last_seen`.
    pub last_heartbeat_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Track {
    sessions: u32,
    /// Last heartbeat received by this hub process.
    last_heartbeat_ms: Option<u64>,
    /// Last contact as persisted before this process started (display only).
    last_seen_ms: Option<u64>,
    /// When the last session ended (or when the hub started tracking a disconnected cluster).
    disconnected_since_ms: u64,
    /// Last heartbeat, session opening or start of tracking.
    last_sign_ms: u64,
    state: ClusterState,
    /// The newest sessions this process saw, oldest first (at most `SESSION_HISTORY`).
    recent: std::collections::VecDeque<SessionSpan>,
    /// Another hub replica holds (or last held) this cluster's session and decides its state;
    /// this process shows what that replica stored (see `replicas`) and decides nothing.
    remote: bool,
}

/// Sessions kept per cluster for display: enough to see a flapping link, a few hundred bytes
/// per cluster at most.
pub const SESSION_HISTORY: usize = 5;

pub use crate::api::SessionSpan;

#[derive(Debug)]
pub struct HealthTracker {
    cfg: HealthConfig,
    clusters: HashMap<String, Track>,
}

impl HealthTracker {
    pub fn new(cfg: HealthConfig) -> Self {
        Self {
            cfg,
            clusters: HashMap::new(),
        }
    }

    pub fn config(&self) -> HealthConfig {
        self.cfg
    }

    /// Start tracking a known cluster with no session (hub start, or a new registration). Its
    /// offline grace counts from `now`, since the hub cannot know how long it really was away;
    /// a cluster already Offline stays Offline until it connects again. Heartbeats from before
    /// the restart never make a cluster Ready.
    pub fn track(
        &mut self,
        cluster: &str,
        persisted: ClusterState,
        last_seen_ms: Option<u64>,
        now_ms: u64,
    ) {
        let (state, disconnected_since_ms) = match persisted {
            ClusterState::Offline => (
                ClusterState::Offline,
                now_ms.saturating_sub(self.cfg.offline_grace.as_millis() as u64),
            ),
            _ => (ClusterState::Unknown, now_ms),
        };
        self.clusters.insert(
            cluster.to_string(),
            Track {
                sessions: 0,
                last_heartbeat_ms: None,
                last_seen_ms,
                disconnected_since_ms,
                last_sign_ms: disconnected_since_ms,
                state,
                recent: Default::default(),
                remote: false,
            },
        );
    }

    /// Show the state another replica stored for `cluster`, whose session it holds: no
    /// transition comes from this process for it until [`Self::set_local`] or [`Self::adopt`].
    pub fn mirror(
        &mut self,
        cluster: &str,
        stored: ClusterState,
        last_seen_ms: Option<u64>,
        now_ms: u64,
    ) {
        let t = self.entry(cluster, now_ms);
        t.remote = true;
        t.state = stored;
        t.last_heartbeat_ms = None;
        t.last_seen_ms = last_seen_ms;
    }

    /// This process holds the cluster's session now: it decides the cluster's state again.
    pub fn set_local(&mut self, cluster: &str, now_ms: u64) {
        self.entry(cluster, now_ms).remote = false;
    }

    /// The replica that held the cluster's session died: decide its state here, as for a
    /// session that just ended (Unknown at the next tick, Offline after the grace).
    pub fn adopt(&mut self, cluster: &str, now_ms: u64) {
        if let Some(t) = self.clusters.get_mut(cluster) {
            if t.remote {
                t.remote = false;
                t.disconnected_since_ms = now_ms;
                t.last_sign_ms = now_ms;
            }
        }
    }

    /// Whether another replica decides this cluster's state (see [`Self::mirror`]).
    pub fn is_remote(&self, cluster: &str) -> bool {
        self.clusters.get(cluster).is_some_and(|t| t.remote)
    }

    /// Clusters whose state another replica decides.
    pub fn remote_clusters(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter(|(_, t)| t.remote)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn forget(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
    }

    pub fn session_opened(&mut self, cluster: &str, now_ms: u64) -> Option<Transition> {
        let t = self.entry(cluster, now_ms);
        t.sessions += 1;
        t.last_sign_ms = now_ms;
        if t.recent.len() == SESSION_HISTORY {
            t.recent.pop_front();
        }
        t.recent.push_back(SessionSpan {
            opened_ms: now_ms,
            closed_ms: None,
        });
        self.reevaluate(cluster, now_ms)
    }

    pub fn session_closed(&mut self, cluster: &str, now_ms: u64) -> Option<Transition> {
        let t = self.clusters.get_mut(cluster)?;
        if t.sessions == 0 {
            return None;
        }
        t.sessions -= 1;
        if t.sessions == 0 {
            t.disconnected_since_ms = now_ms;
        }
        // Sessions are not told apart here: the oldest open one is the one a newer session
        // of the same cluster superseded, or the only one.
        if let Some(open) = t.recent.iter_mut().find(|s| s.closed_ms.is_none()) {
            open.closed_ms = Some(now_ms);
        }
        self.reevaluate(cluster, now_ms)
    }

    pub fn heartbeat(&mut self, cluster: &str, now_ms: u64) -> Option<Transition> {
        let t = self.entry(cluster, now_ms);
        t.last_heartbeat_ms = Some(now_ms);
        t.last_sign_ms = now_ms;
        self.reevaluate(cluster, now_ms)
    }

    /// Re-evaluate every cluster; call periodically (at least once per second).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        let names: Vec<String> = self.clusters.keys().cloned().collect();
        let mut out: Vec<Transition> = names
            .iter()
            .filter_map(|n| self.reevaluate(n, now_ms))
            .collect();
        out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        out
    }

    pub fn state(&self, cluster: &str) -> Option<ClusterState> {
        self.clusters.get(cluster).map(|t| t.state)
    }

    /// Last contact: a heartbeat in this process, else what was persisted before it started.
    pub fn last_heartbeat(&self, cluster: &str) -> Option<u64> {
        self.clusters
            .get(cluster)
            .and_then(|t| t.last_heartbeat_ms.or(t.last_seen_ms))
    }

    /// The newest sessions of `cluster` with this hub process, oldest first.
    pub fn sessions_of(&self, cluster: &str) -> Vec<SessionSpan> {
        self.clusters
            .get(cluster)
            .map(|t| t.recent.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn is_connected(&self, cluster: &str) -> bool {
        self.clusters.get(cluster).is_some_and(|t| t.sessions > 0)
    }

    pub fn count_by_state(&self) -> HashMap<ClusterState, usize> {
        let mut m = HashMap::new();
        for t in self.clusters.values() {
            *m.entry(t.state).or_insert(0) += 1;
        }
        m
    }

    fn entry(&mut self, cluster: &str, now_ms: u64) -> &mut Track {
        self.clusters.entry(cluster.to_string()).or_insert(Track {
            sessions: 0,
            last_heartbeat_ms: None,
            last_seen_ms: None,
            disconnected_since_ms: now_ms,
            last_sign_ms: now_ms,
            state: ClusterState::Unknown,
            recent: Default::default(),
            remote: false,
        })
    }

    fn reevaluate(&mut self, cluster: &str, now_ms: u64) -> Option<Transition> {
        let cfg = self.cfg;
        let t = self.clusters.get_mut(cluster)?;
        if t.remote {
            return None;
        }
        let fresh = t
            .last_heartbeat_ms
            .is_some_and(|hb| now_ms.saturating_sub(hb) <= cfg.stale_after_ms());
        let reconnecting = t.sessions == 0
            && now_ms.saturating_sub(t.disconnected_since_ms)
                < cfg.heartbeat_interval.as_millis() as u64;
        let next = if fresh && (t.sessions > 0 || reconnecting) {
            ClusterState::Ready
        } else if now_ms.saturating_sub(t.last_sign_ms) >= cfg.offline_grace.as_millis() as u64 {
            ClusterState::Offline
        } else {
            ClusterState::Unknown
        };
        (next != t.state).then(|| {
            let from = std::mem::replace(&mut t.state, next);
            Transition {
                cluster: cluster.to_string(),
                from,
                to: next,
                at_ms: now_ms,
                last_heartbeat_ms: t.last_heartbeat_ms,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ClusterState::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats: 3,
            offline_grace: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_mirrored_cluster_changes_only_by_what_its_replica_stored() {
        let mut h = HealthTracker::new(cfg());
        h.mirror("a", Ready, Some(1_000), 1_000);
        assert_eq!(h.state("a"), Some(Ready));
        // No heartbeat here for ten minutes: another replica holds the session.
        assert!(h.tick(600_000).is_empty());
        assert_eq!(h.state("a"), Some(Ready));
        assert!(h.session_closed("a", 600_000).is_none());
        h.mirror("a", Unknown, Some(1_000), 600_001);
        assert_eq!(h.state("a"), Some(Unknown));
        assert!(
            h.tick(900_000).is_empty(),
            "the holder decides Offline, not us"
        );
    }

    #[test]
    fn an_adopted_cluster_goes_unknown_then_offline_from_the_adoption() {
        let mut h = HealthTracker::new(cfg());
        h.mirror("a", Ready, Some(1_000), 1_000);
        h.adopt("a", 50_000);
        assert!(!h.is_remote("a"));
        let t = h.tick(50_001);
        assert_eq!((t[0].from, t[0].to), (Ready, Unknown));
        assert!(h.tick(349_999).is_empty(), "grace counts from the adoption");
        assert_eq!(h.tick(350_000)[0].to, Offline);
    }

    #[test]
    fn a_cluster_whose_session_comes_here_is_decided_here() {
        let mut h = HealthTracker::new(cfg());
        h.mirror("a", Unknown, None, 1_000);
        h.set_local("a", 2_000);
        h.session_opened("a", 2_000);
        let t = h.heartbeat("a", 2_000).unwrap();
        assert_eq!(t.to, Ready);
    }

    #[test]
    fn the_newest_sessions_are_kept_with_when_they_closed() {
        let mut h = HealthTracker::new(cfg());
        h.session_opened("a", 1_000);
        h.session_opened("a", 2_000); // a reconnect before the old session timed out
        h.session_closed("a", 3_000);
        let spans = h.sessions_of("a");
        assert_eq!(
            spans,
            vec![
                SessionSpan {
                    opened_ms: 1_000,
                    closed_ms: Some(3_000)
                },
                SessionSpan {
                    opened_ms: 2_000,
                    closed_ms: None
                },
            ]
        );
        for t in 0..10 {
            h.session_closed("a", 4_000 + t);
            h.session_opened("a", 4_000 + t);
        }
        let spans = h.sessions_of("a");
        assert_eq!(spans.len(), SESSION_HISTORY);
        assert_eq!(
            spans.last().map(|s| (s.opened_ms, s.closed_ms)),
            Some((4_009, None))
        );
        assert!(h.sessions_of("b").is_empty());
    }

    #[test]
    fn lifecycle() {
        let mut h = HealthTracker::new(cfg());
        h.track("a", Ready, Some(0), 1_000);
        assert_eq!(
            h.state("a"),
            Some(Unknown),
            "after a hub restart nothing is Ready"
        );
        assert_eq!(h.session_opened("a", 2_000), None, "no heartbeat yet");
        let t = h.heartbeat("a", 2_100).unwrap();
        assert_eq!((t.from, t.to), (Unknown, Ready));
        assert!(
            h.tick(32_100).is_empty(),
            "exactly 3 intervals is still Ready"
        );
        assert_eq!(h.tick(32_101)[0].to, Unknown);
        assert_eq!(h.heartbeat("a", 33_000).unwrap().to, Ready);
        assert_eq!(
            h.session_closed("a", 40_000),
            None,
            "within one interval of a close it may be a restart"
        );
        assert_eq!(h.tick(50_000)[0].to, Unknown);
        assert!(h.tick(332_999).is_empty());
        assert_eq!(
            h.tick(333_000)[0].to,
            Offline,
            "the grace counts from the last heartbeat"
        );
        h.session_opened("a", 400_000);
        assert_eq!(h.heartbeat("a", 400_001).unwrap().to, Ready);
    }

    #[test]
    fn a_silent_agent_goes_offline_a_grace_after_its_last_heartbeat_even_if_connected() {
        let mut h = HealthTracker::new(cfg());
        h.track("a", Unknown, None, 0);
        h.session_opened("a", 1_000);
        h.heartbeat("a", 2_000);
        assert_eq!(h.tick(40_000)[0].to, Unknown);
        assert_eq!(h.tick(302_000)[0].to, Offline, "connection still open");
    }

    #[test]
    fn a_quick_restart_does_not_flap() {
        let mut h = HealthTracker::new(cfg());
        h.track("a", Unknown, None, 0);
        h.session_opened("a", 0);
        h.heartbeat("a", 100);
        assert_eq!(h.session_closed("a", 5_000), None);
        assert_eq!(h.session_opened("a", 6_000), None);
        assert_eq!(h.heartbeat("a", 6_100), None);
        assert_eq!(h.state("a"), Some(Ready));
    }

    #[test]
    fn persisted_offline_stays_offline_until_heard() {
        let mut h = HealthTracker::new(cfg());
        h.track("a", Offline, None, 1_000_000);
        assert!(h.tick(1_000_001).is_empty());
        assert_eq!(h.state("a"), Some(Offline));
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Open,
        Close,
        Beat,
        Tick,
    }

    proptest! {
        /// Whatever the event order, the state always agrees with the rules in the module docs.
        #[test]
        fn state_always_matches_the_rules(
            evs in proptest::collection::vec((prop_oneof![Just(Ev::Open), Just(Ev::Close), Just(Ev::Beat), Just(Ev::Tick)], 0u64..200_000), 1..60)
        ) {
            let mut h = HealthTracker::new(cfg());
            let mut now = 0u64;
            let (mut sessions, mut last_hb, mut disc_since, mut sign) = (0u32, None::<u64>, 0u64, 0u64);
            h.track("c", Unknown, None, 0);
            for (ev, dt) in evs {
                now += dt;
                match ev {
                    Ev::Open => { h.session_opened("c", now); sessions += 1; sign = now; }
                    Ev::Close => {
                        if sessions > 0 {
                            sessions -= 1;
                            if sessions == 0 { disc_since = now; }
                        }
                        h.session_closed("c", now);
                    }
                    Ev::Beat => { h.heartbeat("c", now); last_hb = Some(now); sign = now; }
                    Ev::Tick => { h.tick(now); }
                }
                h.tick(now);
                let fresh = last_hb.is_some_and(|hb| now - hb <= 30_000);
                let expect = if fresh && (sessions > 0 || now - disc_since < 10_000) {
                    Ready
                } else if now - sign >= 300_000 {
                    Offline
                } else {
                    Unknown
                };
                prop_assert_eq!(h.state("c"), Some(expect));
            }
        }
    }
}
