//! Writes each work's manifests atomically as `tether-<work>.yaml` into a directory: exactly
//! what k3s's auto-deploy folder (`/var/lib/rancher/k3s/server/manifests`) consumes.
//!
//! Files not named `tether-*.yaml` are never touched. A path is only ever built from a name
//! that passed [`validate_work_name`] (no `/`, no `.`, no control characters), so it is one
//! file directly in the folder; whatever already sits there under that name (a symlink, a
//! FIFO, a device) is replaced by the rename, never read through or written through.

use super::{condition, refs_of, ApplyReport, ExecError, Executor, Managed};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use tether_protocol::names::validate_work_name;
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

    /// The work's file: always a single file name directly inside the folder.
    pub fn file_for(&self, work: &str) -> Result<PathBuf, ExecError> {
        validate_work_name(work)
            .map_err(|e| ExecError::invalid(format!("work name {work:?} refused: {e}")))?;
        let file = format!("tether-{work}.yaml");
        // The name rule already guarantees this; a rule change must not reopen the hole.
        let mut components = Path::new(&file).components();
        if !matches!(
            (components.next(), components.next()),
            (Some(Component::Normal(_)), None)
        ) {
            return Err(ExecError::invalid(format!(
                "work name {work:?} does not make a plain file name"
            )));
        }
        Ok(self.dir.join(file))
    }
}

/// Largest YAML file the executor writes for one work (and holds in memory while writing).
/// 64 MiB is twice the largest bundle's CBOR; real bundles render to a few MB.
pub const MAX_RENDERED_BYTES: usize = 64 * 1024 * 1024;

/// A writer that fails instead of growing past `max`.
struct Capped<W> {
    inner: W,
    written: usize,
    max: usize,
    exceeded: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() > self.max {
            self.exceeded = true;
            return Err(std::io::Error::other(RenderTooLarge(self.max)));
        }
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the manifests render to more than {0} bytes of YAML")]
pub struct RenderTooLarge(pub usize);

/// Why manifests cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    TooLarge(#[from] RenderTooLarge),
    #[error("rendering YAML: {0}")]
    Yaml(String),
}

fn render_into<W: Write>(
    out: W,
    header: &str,
    manifests: &[serde_json::Value],
    max: usize,
) -> Result<usize, RenderError> {
    let mut out = Capped {
        inner: out,
        written: 0,
        max,
        exceeded: false,
    };
    // The YAML serializer wraps our writer's error; the writer itself says whether it was the cap.
    let fail = |out: &Capped<W>, e: &dyn std::fmt::Display| {
        if out.exceeded {
            RenderError::TooLarge(RenderTooLarge(max))
        } else {
            RenderError::Yaml(e.to_string())
        }
    };
    if let Err(e) = out.write_all(header.as_bytes()) {
        return Err(fail(&out, &e));
    }
    // kubectl and k3s apply a file's documents in order: namespaces and CRDs must come first.
    for m in super::apply_order(manifests)
        .into_iter()
        .map(|i| &manifests[i])
    {
        if let Err(e) = out.write_all(b"---\n") {
            return Err(fail(&out, &e));
        }
        if let Err(e) = out.write_all(super::yaml::document(m).as_bytes()) {
            return Err(fail(&out, &e));
        }
    }
    Ok(out.written)
}

/// Bytes of YAML the manifests render to, counted without keeping them, or why they cannot be
/// rendered within [`MAX_RENDERED_BYTES`]. The agent checks this when a work is delivered.
pub fn rendered_len(manifests: &[serde_json::Value]) -> Result<usize, RenderError> {
    render_into(std::io::sink(), "", manifests, MAX_RENDERED_BYTES)
}

fn render(work: &DesiredWork) -> Result<String, ExecError> {
    let header = format!(
        "# Managed by tether-agent: work {:?} generation {} ({}). Local edits are reverted.\n",
        work.name, work.generation, work.hash
    );
    let mut out = Vec::new();
    render_into(&mut out, &header, &work.manifests, MAX_RENDERED_BYTES)
        .map_err(|e| ExecError::invalid(e.to_string()))?;
    String::from_utf8(out).map_err(|e| ExecError::invalid(format!("rendering YAML: {e}")))
}

/// The file's current content if it is a regular file of at most `max` bytes; `None` for
/// anything else (missing, a symlink, a FIFO, a directory, too big), which the caller replaces.
fn read_regular(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && m.len() <= max as u64 => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let file = open_no_follow(path)?;
    let mut content = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut content)?;
    Ok((content.len() <= max).then_some(content))
}

/// Open for reading, and make sure what was opened is still a regular file (not something
/// swapped in after the metadata check; a FIFO could still block the open, but only someone who
/// can write the folder can put one there, and that someone controls k3s already).
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Write to a temporary file in the same directory, fsync, rename over, fsync the directory:
/// a reader (k3s) sees the old file or the new one, never half of one. The rename replaces
/// whatever sits at `path` (a symlink is replaced, not followed).
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
        _previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        let path = self.file_for(&work.name)?;
        let refs = refs_of(work)?;
        let content = render(work)?;
        let current = read_regular(&path, content.len())
            .map_err(|e| ExecError::transient(format!("reading {}: {e}", path.display())))?;
        if current.as_deref() != Some(content.as_bytes()) {
            // The first line names the generation and hash: the same header with another body
            // is a local edit, another header a new generation.
            let header = content.lines().next().unwrap_or_default().as_bytes();
            match &current {
                Some(c) if c.starts_with(header) => {
                    tracing::warn!(work = %work.name, file = %path.display(), "file was edited locally; restoring the desired state")
                }
                Some(_) => {
                    tracing::info!(work = %work.name, generation = work.generation, file = %path.display(), "writing the new generation")
                }
                None => {}
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
            adopted: Default::default(),
            conditions: vec![condition(
                "Applied",
                true,
                "Written",
                format!("{}", path.display()),
            )],
            readiness_known: false,
            refused: Vec::new(),
        })
    }

    async fn remove(&self, work: &str, _managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        let path = self.file_for(work)?;
        if orphan {
            // The file stays where it is; Tether simply stops rewriting it.
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces_and_crds_are_written_first_in_manifest_order_otherwise() {
        let manifests = vec![
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": "widgets.example.com"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}),
        ];
        let mut out = Vec::new();
        render_into(&mut out, "", &manifests, MAX_RENDERED_BYTES).unwrap();
        let text = String::from_utf8(out).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .map(|k| k.trim_matches('"'))
            .collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "CustomResourceDefinition",
                "Widget",
                "ConfigMap"
            ],
            "{text}"
        );
    }
}
