//! Writes each work's manifests atomically as `tether-<work>.yaml` into a directory: exactly
//! what k3s's auto-deploy folder (`/var/lib/rancher/k3s/server/manifests`) consumes.
//!
//! Files not named `tether-*.yaml` are never touched.

use super::{condition, refs_of, ApplyReport, ExecError, Executor};
use std::io::Write;
use std::path::{Path, PathBuf};
use tether_protocol::work::ObjectRef;
use tether_protocol::ResourceStatus;
use tether_store::agent::DesiredWork;

pub struct DirExecutor {
    dir: PathBuf,
}

impl DirExecutor {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, ExecError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ExecError::transient(format!("creating {}: {e}", dir.display())))?;
        Ok(Self { dir })
    }

    pub fn file_for(&self, work: &str) -> PathBuf {
        self.dir.join(format!("tether-{work}.yaml"))
    }
}

fn render(work: &DesiredWork) -> Result<String, ExecError> {
    let mut out = format!(
        "# Managed by tether-agent: work {:?} generation {} ({}). Local edits are reverted.\n",
        work.name, work.generation, work.hash
    );
    for m in &work.manifests {
        out.push_str("---\n");
        let doc = serde_yaml_ng::to_string(m)
            .map_err(|e| ExecError::invalid(format!("rendering YAML: {e}")))?;
        out.push_str(&doc);
    }
    Ok(out)
}

/// Write to a temporary file in the same directory, fsync, rename over, fsync the directory:
/// a reader (k3s) sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tether-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Executor for DirExecutor {
    async fn apply(
        &self,
        work: &DesiredWork,
        _previous: &[ObjectRef],
    ) -> Result<ApplyReport, ExecError> {
        let refs = refs_of(work)?;
        let content = render(work)?;
        let path = self.file_for(&work.name);
        let current = std::fs::read(&path).ok();
        if current.as_deref() != Some(content.as_bytes()) {
            if current.is_some() {
                tracing::info!(work = %work.name, file = %path.display(), "file differs from the desired state; rewriting");
            }
            write_atomically(&path, content.as_bytes())
                .map_err(|e| ExecError::transient(format!("writing {}: {e}", path.display())))?;
        }
        // Objects that left the work vanish with the old file content: pruning is the file's.
        Ok(ApplyReport {
            resources: refs
                .iter()
                .map(|r| ResourceStatus {
                    object: r.clone(),
                    ready: None,
                    detail: String::new(),
                })
                .collect(),
            inventory: refs,
            conditions: vec![condition(
                "Applied",
                true,
                "Written",
                format!("{}", path.display()),
            )],
            readiness_known: false,
        })
    }

    async fn remove(
        &self,
        work: &str,
        _inventory: &[ObjectRef],
        orphan: bool,
    ) -> Result<(), ExecError> {
        if orphan {
            // The file stays where it is; Tether simply stops rewriting it.
            return Ok(());
        }
        let path = self.file_for(work);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ExecError::transient(format!(
                "removing {}: {e}",
                path.display()
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }
}
