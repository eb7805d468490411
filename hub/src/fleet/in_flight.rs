//! Singleton deliveries on their way to a cluster (see `decide::singleton` for why the hub
//! must know them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

type Key = (String, String);

/// Singleton deliveries sent and not yet answered, as (work, cluster) with a count (an old
/// session's delivery may still be winding down when the next session's starts). At most one
/// per session: its delivery task waits for each answer.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<BTreeMap<Key, usize>>);

impl InFlight {
    /// Record a delivery about to be sent; it counts until the guard is dropped.
    pub fn start<'a>(&'a self, work: &str, cluster: &str) -> InFlightGuard<'a> {
        let key = (work.to_string(), cluster.to_string());
        *self.lock().entry(key.clone()).or_insert(0) += 1;
        InFlightGuard { set: self, key }
    }

    /// Take this before reading the store: a delivery that completes in between is then in
    /// the snapshot or in the rows read, never in neither.
    pub fn snapshot(&self) -> BTreeSet<Key> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drop it once the delivery is answered, or once its connection is closed (a closed
/// connection retransmits nothing).
#[must_use]
pub struct InFlightGuard<'a> {
    set: &'a InFlight,
    key: Key,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.set.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_lasts_as_long_as_its_last_guard() {
        let f = InFlight::default();
        let old_session = f.start("w", "a");
        let new_session = f.start("w", "a");
        assert!(f.snapshot().contains(&("w".into(), "a".into())));
        drop(old_session);
        assert!(
            f.snapshot().contains(&("w".into(), "a".into())),
            "the new session's delivery is still on its way"
        );
        drop(new_session);
        assert!(f.snapshot().is_empty());
    }
}
