//! Live authenticated sessions by cluster name, so that an admin action can close one at once.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct Sessions {
    by_cluster: Mutex<HashMap<String, quinn::Connection>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Self {
            by_cluster: Mutex::new(HashMap::new()),
        }
    }

    /// Register a session; an older session of the same cluster is closed as superseded.
    pub fn insert(&self, cluster: &str, conn: quinn::Connection) {
        let old = self
            .by_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.to_string(), conn);
        if let Some(old) = old {
            old.close(
                tether_protocol::close_code::SUPERSEDED.into(),
                b"a newer session of this cluster replaced this one",
            );
        }
    }

    /// Remove the entry only if it still belongs to this connection.
    pub fn remove(&self, cluster: &str, stable_id: usize) {
        let mut map = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(cluster).is_some_and(|c| c.stable_id() == stable_id) {
            map.remove(cluster);
        }
    }

    /// Close a cluster's session with an application code; returns whether one was open.
    pub fn close(&self, cluster: &str, code: u32, reason: &str) -> bool {
        let conn = self
            .by_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(cluster);
        match conn {
            Some(c) => {
                c.close(code.into(), reason.as_bytes());
                true
            }
            None => false,
        }
    }

    pub fn stable_id(&self, cluster: &str) -> Option<usize> {
        self.by_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .map(|c| c.stable_id())
    }

    pub fn len(&self) -> usize {
        self.by_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn close_all(&self, code: u32, reason: &str) {
        let all: Vec<_> = self
            .by_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, c) in all {
            c.close(code.into(), reason.as_bytes());
        }
    }
}

impl Sessions {
    pub fn names(&self) -> Vec<String> {
        self.by_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}
