//! Who may start a connection: handshake slots in all and per source, QUIC Retry under load,
//! and per-source budgets for anonymous join connections. The rules are pure functions of the
//! counts; `SourceCounts` keeps the counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Handshake time limit while the hub is not loaded.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress beyond which new connections are refused at once.
///
/// Under a reconnect storm (a hub start under tens of thousands of agents) queued handshakes
/// time out anyway, after costing the CPU that the sessions already up need for their
/// heartbeats; those then drop and join the storm. Measured: 60k agents connecting to one
/// 2-core hub collapsed to ~7k live sessions and 400k handshake timeouts. A refusal costs the
/// hub one small Initial packet; the agent backs off (jittered, exponential) and retries.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Handshakes in progress beyond which a source must prove its address (QUIC Retry, RFC 9000
/// 8.1) before it gets a slot. A Retry is stateless and costs the hub one small packet; an
/// honest client answers it in one round trip, a flood of Initials that never completes
/// (spoofed or not) never holds a slot. Below this load nobody pays the extra round trip.
pub const RETRY_ABOVE: usize = 32;

/// Handshakes in progress from one source: an IPv4 address or an IPv6 /64. Generous, since
/// many agents can share one NAT address, but one source can no longer hold every slot.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 32;

/// Handshake time limit while the hub is loaded (above `RETRY_ABOVE`): a half-open handshake
/// gives its slot back sooner. Several round trips of a slow satellite link.
pub const LOADED_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);

/// Open join connections from one source. Joins are rare (one per new cluster, then polls
/// every 2 s until approved); a site bringing up many clusters behind one address at once
/// waits its turn, while anonymous idle connections from one source cannot take every join
/// slot.
pub const MAX_JOINS_PER_SOURCE: usize = 16;

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept {
        timeout: Duration,
    },
    /// Ask for address validation first.
    Retry,
    Refuse(&'static str),
}

/// The handshake rule: handshakes in progress in all and from the attempt's source, and
/// whether its address is validated (it echoed a Retry token).
pub fn verdict(pending: usize, from_source: usize, validated: bool) -> Verdict {
    if pending >= RETRY_ABOVE && !validated {
        return Verdict::Retry;
    }
    if from_source >= MAX_HANDSHAKES_PER_SOURCE {
        return Verdict::Refuse("source_busy");
    }
    if pending >= MAX_PENDING_HANDSHAKES {
        return Verdict::Refuse("overloaded");
    }
    let timeout = if pending >= RETRY_ABOVE {
        LOADED_HANDSHAKE_TIMEOUT
    } else {
        HANDSHAKE_TIMEOUT
    };
    Verdict::Accept { timeout }
}

/// The part of an address that budgets count by.
pub fn source_prefix(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<u128, usize>,
}

/// Things in progress (handshakes, join connections), in all and by source.
#[derive(Clone, Default)]
pub struct SourceCounts {
    counts: Arc<Mutex<Counts>>,
}

/// One counted thing, given back when dropped.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    source: u128,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut e) = c.by_source.entry(self.source) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl SourceCounts {
    /// Count one more from `source` if `rule(total, from_source)` allows it.
    pub fn take<T, E>(
        &self,
        source: IpAddr,
        rule: impl FnOnce(usize, usize) -> Result<T, E>,
    ) -> Result<(Slot, T), E> {
        let prefix = source_prefix(source);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = c.by_source.get(&prefix).copied().unwrap_or(0);
        let allowed = rule(c.total, from_source)?;
        c.total += 1;
        *c.by_source.entry(prefix).or_insert(0) += 1;
        Ok((
            Slot {
                counts: self.counts.clone(),
                source: prefix,
            },
            allowed,
        ))
    }
}

/// Handshakes in progress.
#[derive(Clone, Default)]
pub struct Admission {
    pending: SourceCounts,
}

impl Admission {
    /// Decide on an attempt from `source`; an accepted one holds its slot until dropped.
    pub fn admit(&self, source: IpAddr, validated: bool) -> Result<(Slot, Duration), Verdict> {
        self.pending.take(source, |pending, from_source| {
            match verdict(pending, from_source, validated) {
                Verdict::Accept { timeout } => Ok(timeout),
                other => Err(other),
            }
        })
    }
}

/// Open join connections by source.
#[derive(Clone, Default)]
pub struct JoinSources {
    open: SourceCounts,
}

impl JoinSources {
    pub fn admit(&self, source: IpAddr) -> Option<Slot> {
        self.open
            .take(source, |_, from_source| {
                (from_source < MAX_JOINS_PER_SOURCE).then_some(()).ok_or(())
            })
            .ok()
            .map(|(slot, ())| slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_by_load_source_and_validation() {
        let normal = Verdict::Accept {
            timeout: HANDSHAKE_TIMEOUT,
        };
        let loaded = Verdict::Accept {
            timeout: LOADED_HANDSHAKE_TIMEOUT,
        };
        assert_eq!(verdict(0, 0, false), normal);
        assert_eq!(verdict(RETRY_ABOVE - 1, 0, false), normal);
        assert_eq!(verdict(RETRY_ABOVE, 0, false), Verdict::Retry);
        assert_eq!(verdict(RETRY_ABOVE, 0, true), loaded);
        assert_eq!(
            verdict(0, MAX_HANDSHAKES_PER_SOURCE, true),
            Verdict::Refuse("source_busy")
        );
        assert_eq!(
            verdict(MAX_PENDING_HANDSHAKES, 0, true),
            Verdict::Refuse("overloaded")
        );
    }

    #[test]
    fn slots_are_counted_per_source_and_given_back() {
        let a = Admission::default();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..MAX_HANDSHAKES_PER_SOURCE)
            .map(|_| a.admit(one, true).expect("under the source budget"))
            .collect();
        assert_eq!(
            a.admit(one, true).err(),
            Some(Verdict::Refuse("source_busy"))
        );
        // Another source is not affected, but the load now asks it to validate first.
        assert_eq!(a.admit(two, false).err(), Some(Verdict::Retry));
        assert!(a.admit(two, true).is_ok());
        drop(held);
        assert!(a.admit(one, false).is_ok(), "slots come back when dropped");
    }

    #[test]
    fn ipv6_sources_are_counted_by_64_bit_prefix() {
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:ffff::2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert_eq!(source_prefix(a), source_prefix(b));
        assert_ne!(source_prefix(a), source_prefix(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            source_prefix(mapped),
            source_prefix("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn join_connections_are_limited_per_source() {
        let j = JoinSources::default();
        let one: IpAddr = "198.51.100.7".parse().unwrap();
        let held: Vec<_> = (0..MAX_JOINS_PER_SOURCE)
            .map(|_| j.admit(one).expect("under the budget"))
            .collect();
        assert!(j.admit(one).is_none());
        assert!(j.admit("198.51.100.8".parse().unwrap()).is_some());
        drop(held);
        assert!(j.admit(one).is_some());
    }
}
