//! Every authorized connection, from the moment its certificate is accepted, so that an admin
//! action can close it at once; and the one live (Hello-completed) session per cluster.
//!
//! A connection is tracked *before* its authorization is checked against the store, and that
//! order is what makes revocation airtight: a deny or detach commits first and closes tracked
//! connections second, so a connection either sees the committed revocation in its own check or
//! is already tracked when the revocation sweeps. There is no window in which a connection is
//! authorized but invisible (a red-team client once held one open across `clusters detach`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    /// Every tracked connection by QUIC stable id: cluster and serial from its certificate.
    tracked: HashMap<usize, Tracked>,
    /// The registered session of each cluster.
    live: HashMap<String, quinn::Connection>,
    /// Stable ids of live sessions whose agent takes `ConfirmRemoval` (`Hello.confirmations`).
    confirming: std::collections::HashSet<usize>,
}

struct Tracked {
    cluster: String,
    serial: String,
    conn: quinn::Connection,
}

#[derive(Default, Clone)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

/// Keeps a connection tracked until dropped (when its task ends, however it ends).
pub struct TrackedConn {
    inner: Arc<Mutex<Inner>>,
    id: usize,
}

impl Drop for TrackedConn {
    fn drop(&mut self) {
        lock(&self.inner).tracked.remove(&self.id);
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Track a connection whose certificate names `cluster` with `serial`, before anything else
    /// is decided about it.
    pub fn track(&self, cluster: &str, serial: &str, conn: &quinn::Connection) -> TrackedConn {
        let id = conn.stable_id();
        lock(&self.inner).tracked.insert(
            id,
            Tracked {
                cluster: cluster.to_string(),
                serial: serial.to_string(),
                conn: conn.clone(),
            },
        );
        TrackedConn {
            inner: self.inner.clone(),
            id,
        }
    }

    /// Register a session; an older session of the same cluster is closed as superseded.
    pub fn insert(&self, cluster: &str, conn: quinn::Connection, takes_confirmations: bool) {
        let mut inner = lock(&self.inner);
        if takes_confirmations {
            inner.confirming.insert(conn.stable_id());
        }
        let old = inner.live.insert(cluster.to_string(), conn);
        if let Some(old) = &old {
            inner.confirming.remove(&old.stable_id());
        }
        drop(inner);
        if let Some(old) = old {
            old.close(
                tether_protocol::close_code::SUPERSEDED.into(),
                b"a newer session of this cluster replaced this one",
            );
        }
    }

    /// Remove the entry only if it still belongs to this connection.
    pub fn remove(&self, cluster: &str, stable_id: usize) {
        let mut inner = lock(&self.inner);
        if inner
            .live
            .get(cluster)
            .is_some_and(|c| c.stable_id() == stable_id)
        {
            inner.live.remove(cluster);
        }
        inner.confirming.remove(&stable_id);
    }

    /// The live session of `cluster` if its agent takes `ConfirmRemoval`: `Err(true)` when it
    /// has a session that does not, `Err(false)` when it has none.
    pub fn confirming(&self, cluster: &str) -> Result<quinn::Connection, bool> {
        let inner = lock(&self.inner);
        let conn = inner.live.get(cluster).ok_or(false)?;
        if inner.confirming.contains(&conn.stable_id()) {
            Ok(conn.clone())
        } else {
            Err(true)
        }
    }

    /// Close a cluster's registered session (it will reconnect); returns whether one was open.
    pub fn close(&self, cluster: &str, code: u32, reason: &str) -> bool {
        let conn = {
            let mut inner = lock(&self.inner);
            let conn = inner.live.remove(cluster);
            if let Some(c) = &conn {
                inner.confirming.remove(&c.stable_id());
            }
            conn
        };
        conn.map(|c| c.close(code.into(), reason.as_bytes()))
            .is_some()
    }

    /// Close every connection of `cluster`, and every connection presenting one of `serials`,
    /// whether or not it has sent Hello yet. Returns how many were closed.
    pub fn close_cluster(
        &self,
        cluster: &str,
        serials: &[String],
        code: u32,
        reason: &str,
    ) -> usize {
        self.close_where(cluster, code, reason, |t| {
            t.cluster == cluster || serials.contains(&t.serial)
        })
    }

    /// Close every connection of `cluster` whose certificate serial is not in `valid` (a
    /// revocation or renewal committed by another hub replica). Returns how many were closed.
    pub fn close_other_serials(
        &self,
        cluster: &str,
        valid: &[String],
        code: u32,
        reason: &str,
    ) -> usize {
        self.close_where(cluster, code, reason, |t| {
            t.cluster == cluster && !valid.contains(&t.serial)
        })
    }

    /// Close the tracked connections `doomed` picks; `cluster`'s registered session stops
    /// counting as live if it is one of them.
    fn close_where(
        &self,
        cluster: &str,
        code: u32,
        reason: &str,
        doomed: impl Fn(&Tracked) -> bool,
    ) -> usize {
        let doomed: Vec<quinn::Connection> = {
            let mut inner = lock(&self.inner);
            let doomed: Vec<quinn::Connection> = inner
                .tracked
                .values()
                .filter(|t| doomed(t))
                .map(|t| t.conn.clone())
                .collect();
            if inner
                .live
                .get(cluster)
                .is_some_and(|c| doomed.iter().any(|d| d.stable_id() == c.stable_id()))
            {
                inner.live.remove(cluster);
            }
            doomed
        };
        for c in &doomed {
            c.close(code.into(), reason.as_bytes());
        }
        doomed.len()
    }

    pub fn stable_id(&self, cluster: &str) -> Option<usize> {
        lock(&self.inner).live.get(cluster).map(|c| c.stable_id())
    }

    /// Registered sessions.
    pub fn len(&self) -> usize {
        lock(&self.inner).live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tracked connections, registered or not.
    pub fn tracked(&self) -> usize {
        lock(&self.inner).tracked.len()
    }

    pub fn close_all(&self, code: u32, reason: &str) {
        let all: Vec<_> = {
            let mut inner = lock(&self.inner);
            inner.live.clear();
            inner.tracked.values().map(|t| t.conn.clone()).collect()
        };
        for c in all {
            c.close(code.into(), reason.as_bytes());
        }
    }

    pub fn names(&self) -> Vec<String> {
        lock(&self.inner).live.keys().cloned().collect()
    }
}
