//! What one change-feed entry means to a replica's caches: a pure mapping from the table and
//! key a commit wrote to the cache entry to read again.

use std::collections::BTreeSet;

/// Cache entries to read again after a batch of changes, deduplicated.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Refresh {
    pub works: BTreeSet<String>,
    pub decisions: BTreeSet<String>,
    /// Cluster records (labels, state, serials) and session holders.
    pub clusters: BTreeSet<String>,
    pub holders: BTreeSet<String>,
    /// Status rows: (cluster, work).
    pub rows: BTreeSet<(String, String)>,
    pub rollouts: BTreeSet<String>,
    pub admins: bool,
    pub revoked: BTreeSet<String>,
}

impl Refresh {
    /// Add one change; tables no replica caches (join requests, tokens, history, audit) are
    /// read from the store when asked for and need nothing here.
    pub(crate) fn add(&mut self, table: &str, key: &str) {
        let key = key.to_string();
        match table {
            "works" => {
                self.works.insert(key);
            }
            "decisions" => {
                self.decisions.insert(key);
            }
            "clusters" => {
                self.clusters.insert(key);
            }
            "session_holders" => {
                self.holders.insert(key);
            }
            "cluster_works" => {
                if let Some((c, w)) = key.split_once('/') {
                    self.rows.insert((c.to_string(), w.to_string()));
                }
            }
            "rollouts" => {
                self.rollouts.insert(key);
            }
            "admins" => self.admins = true,
            "revoked_serials" => {
                self.revoked.insert(key);
            }
            _ => {}
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_store::hub::{
        cluster_work_key, ADMINS, CLUSTERS, CLUSTER_WORKS, REVOKED, ROLLOUTS, WORKS,
    };

    #[test]
    fn every_cached_table_is_routed_by_its_stored_name() {
        let mut r = Refresh::default();
        r.add(WORKS.name(), "web");
        r.add(WORKS.name(), "web");
        r.add(CLUSTERS.name(), "edge-1");
        r.add(CLUSTER_WORKS.name(), &cluster_work_key("edge-1", "web"));
        r.add(ROLLOUTS.name(), "web");
        r.add(ADMINS.name(), "ab12");
        r.add(REVOKED.name(), "0f");
        r.add(crate::state::DECISIONS.name(), "web");
        r.add(crate::fleet::replica::SESSION_HOLDERS.name(), "edge-1");
        assert_eq!(r.works.len(), 1, "deduplicated");
        assert!(r.clusters.contains("edge-1") && r.holders.contains("edge-1"));
        assert!(r.rows.contains(&("edge-1".into(), "web".into())));
        assert!(r.rollouts.contains("web") && r.decisions.contains("web"));
        assert!(r.admins && r.revoked.contains("0f"));
    }

    #[test]
    fn uncached_tables_need_nothing() {
        let mut r = Refresh::default();
        r.add("join_requests", "edge-9");
        r.add("bootstrap_tokens", "t");
        r.add("work_history", "web/3");
        assert!(r.is_empty());
    }
}
