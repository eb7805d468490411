//! Which hub replica to dial next: every address of every `--hub`, in an order of the agent's
//! own (rendezvous hashing of its name with each address).
//!
//! With several replicas behind one DNS name or several `--hub` flags, each agent prefers a
//! different replica, so sessions spread evenly without a load balancer; when a replica goes
//! away only its agents move, each to its own next choice (the dead replica's load spreads
//! over the others instead of landing on one). Names are resolved again on every round, so a
//! replica added to DNS is picked up and a removed one dropped.

use crate::dial::host_of;
use crate::AgentError;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest one name resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses taken from one name (a bound on what DNS can make the agent dial).
const MAX_ADDRS_PER_NAME: usize = 64;

/// One address to dial, with the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `--hub` value it came from (`HOST:PORT`).
    pub name: String,
    /// The host part, checked against the hub certificate.
    pub host: String,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name == self.addr.to_string() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.name, self.addr)
        }
    }
}

fn score(agent: &str, addr: &SocketAddr) -> [u8; 32] {
    Sha256::digest(format!("{agent}\n{addr}").as_bytes()).into()
}

/// `targets` in this agent's order of preference (highest rendezvous score first), each
/// address once.
pub fn order(agent: &str, mut targets: Vec<Target>) -> Vec<Target> {
    targets.sort_by_cached_key(|t| std::cmp::Reverse(score(agent, &t.addr)));
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(t.addr));
    targets
}

pub struct HubTargets {
    names: Vec<String>,
    agent: String,
    queue: VecDeque<Target>,
}

impl HubTargets {
    pub fn new(names: Vec<String>, agent: &str) -> Result<Self, AgentError> {
        if names.is_empty() {
            return Err(AgentError::Config("no hub address known".into()));
        }
        for n in &names {
            host_of(n)?;
        }
        Ok(Self {
            names,
            agent: agent.to_string(),
            queue: VecDeque::new(),
        })
    }

    /// The next address to try; a new round (names resolved again) once all were tried.
    pub async fn next(&mut self) -> Result<Target, AgentError> {
        if self.queue.is_empty() {
            self.queue = self.resolve_round().await?.into();
        }
        self.queue
            .pop_front()
            .ok_or_else(|| AgentError::Io("no hub address resolved".into()))
    }

    async fn resolve_round(&self) -> Result<Vec<Target>, AgentError> {
        let mut targets = Vec::new();
        let mut errors = Vec::new();
        for name in &self.names {
            let host = host_of(name)?.to_string();
            match resolve_all(name).await {
                Ok(addrs) => targets.extend(addrs.into_iter().map(|addr| Target {
                    name: name.clone(),
                    host: host.clone(),
                    addr,
                })),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if targets.is_empty() {
            return Err(AgentError::Io(errors.join("; ")));
        }
        for e in errors {
            tracing::warn!(error = %e, "a hub address did not resolve; using the others");
        }
        Ok(order(&self.agent, targets))
    }
}

async fn resolve_all(name: &str) -> Result<Vec<SocketAddr>, AgentError> {
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name))
        .await
        .map_err(|_| AgentError::Io(format!("resolving {name} timed out")))?
        .map_err(|e| AgentError::Io(format!("resolving {name}: {e}")))?;
    let addrs: Vec<SocketAddr> = addrs.take(MAX_ADDRS_PER_NAME).collect();
    if addrs.is_empty() {
        return Err(AgentError::Io(format!("{name} resolved to no address")));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn replicas(n: u8) -> Vec<Target> {
        (1..=n)
            .map(|i| Target {
                name: "hub.example:7443".into(),
                host: "hub.example".into(),
                addr: SocketAddr::from(([10, 0, 0, i], 7443)),
            })
            .collect()
    }

    fn first_choices(agents: usize, targets: &[Target]) -> BTreeMap<String, SocketAddr> {
        (0..agents)
            .map(|i| {
                let name = format!("edge-{i}");
                let first = order(&name, targets.to_vec())[0].addr;
                (name, first)
            })
            .collect()
    }

    #[test]
    fn agents_spread_evenly_and_only_a_dead_replicas_agents_move() {
        let three = replicas(3);
        let before = first_choices(3000, &three);
        let mut per: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for a in before.values() {
            *per.entry(*a).or_default() += 1;
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|n| (850..=1150).contains(n)), "{per:?}");

        // Replica 2 is gone: its agents move (to both others), nobody else does.
        let dead = three[1].addr;
        let two: Vec<Target> = three.iter().filter(|t| t.addr != dead).cloned().collect();
        let after = first_choices(3000, &two);
        let mut moved_to: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (agent, was) in &before {
            if *was == dead {
                *moved_to.entry(after[agent]).or_default() += 1;
            } else {
                assert_eq!(after[agent], *was, "{agent} moved without cause");
            }
        }
        assert_eq!(moved_to.len(), 2, "{moved_to:?}");
        assert!(moved_to.values().all(|n| *n > 300), "{moved_to:?}");
    }

    #[test]
    fn the_order_is_stable_and_lists_each_address_once() {
        let mut t = replicas(3);
        t.push(t[0].clone());
        let a = order("edge-1", t.clone());
        t.reverse();
        assert_eq!(order("edge-1", t), a);
        assert_eq!(a.len(), 3);
    }

    #[tokio::test]
    async fn every_address_of_every_name_is_tried_and_bad_names_are_refused() {
        assert!(HubTargets::new(vec![], "a").is_err());
        assert!(HubTargets::new(vec!["no-port".into()], "a").is_err());
        let mut h = HubTargets::new(
            vec!["127.0.0.1:7443".into(), "127.0.0.2:7443".into()],
            "edge-1",
        )
        .unwrap();
        let mut seen = vec![h.next().await.unwrap().addr, h.next().await.unwrap().addr];
        // The next round starts over in the same order.
        assert_eq!(h.next().await.unwrap().addr, seen[0]);
        seen.sort();
        assert_eq!(
            seen,
            vec![
                SocketAddr::from(([127, 0, 0, 1], 7443)),
                SocketAddr::from(([127, 0, 0, 2], 7443))
            ]
        );
    }
}
