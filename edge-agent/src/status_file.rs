//! `status.json` in the data directory: what a running agent tells `tether-agent status`.
//!
//! The running agent holds redb's exclusive lock, so `status` cannot open the database while
//! the agent runs. The agent writes this small file instead (write to a temporary name, then
//! rename, so a reader never sees half a file) whenever its session comes up or goes down.
//! It is advice for people, never read back by the agent: losing it loses nothing.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "status.json";
/// A status file larger than this is not ours; `status` refuses to parse it.
const MAX_LEN: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub cluster: String,
    pub hubs: Vec<String>,
    pub cert_serial: String,
    pub cert_not_after_ms: u64,
    pub session: Session,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Session {
    Connected { hub: String, since_ms: u64 },
    Disconnected { since_ms: u64, last_error: String },
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Replace the file atomically. Blocking: call from `spawn_blocking`. No fsync: after a crash
/// an older (or no) file is fine, since `status` also checks whether `pid` still runs.
pub fn write(data_dir: &Path, status: &AgentStatus) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path(data_dir))
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no {FILE_NAME} in {0}: the agent has not reported a session yet")]
    Missing(PathBuf),
    #[error("reading {path}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
}

pub fn read(data_dir: &Path) -> Result<AgentStatus, ReadError> {
    use std::io::Read;
    let p = path(data_dir);
    let unreadable = |detail: String| ReadError::Unreadable {
        path: p.clone(),
        detail,
    };
    let file = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReadError::Missing(data_dir.to_path_buf()))
        }
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let mut body = Vec::new();
    file.take(MAX_LEN + 1)
        .read_to_end(&mut body)
        .map_err(|e| unreadable(e.to_string()))?;
    if body.len() as u64 > MAX_LEN {
        return Err(unreadable(format!("larger than {MAX_LEN} bytes")));
    }
    serde_json::from_slice(&body).map_err(|e| unreadable(e.to_string()))
}

/// What `tether-agent status` prints for a status file.
pub fn describe(s: &AgentStatus) -> String {
    use crate::session::rfc3339;
    let running = if pid_alive(s.pid) {
        format!("running (pid {})", s.pid)
    } else {
        format!("not running (pid {} is gone)", s.pid)
    };
    let session = match &s.session {
        Session::Connected { hub, since_ms } => {
            format!("connected to {hub} since {}", rfc3339(*since_ms))
        }
        Session::Disconnected {
            since_ms,
            last_error,
        } => format!(
            "no session since {} (last error: {last_error})",
            rfc3339(*since_ms)
        ),
    };
    format!(
        "cluster: {}\nagent: {running}\nsession: {session}\nhubs: {}\ncertificate serial: {}\ncertificate not after: {}\nreported at: {}",
        s.cluster,
        s.hubs.join(", "),
        s.cert_serial,
        rfc3339(s.cert_not_after_ms),
        rfc3339(s.updated_at_ms)
    )
}

/// Whether a process with this pid exists (Linux: `/proc/PID`).
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()), Err(ReadError::Missing(_))));
        let s = AgentStatus {
            pid: std::process::id(),
            cluster: "edge-1".into(),
            hubs: vec!["hub:7443".into()],
            cert_serial: "ab".into(),
            cert_not_after_ms: 1,
            session: Session::Disconnected {
                since_ms: 2,
                last_error: "timed out".into(),
            },
            updated_at_ms: 3,
        };
        write(dir.path(), &s).unwrap();
        assert_eq!(read(dir.path()).unwrap(), s);
        assert!(pid_alive(s.pid));
        std::fs::write(path(dir.path()), vec![b' '; MAX_LEN as usize + 1]).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(ReadError::Unreadable { .. })
        ));
    }
}
