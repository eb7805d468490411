//! Manifests from a git repository (GitOps): fetch a revision into a bare cache, pin its commit
//! and read the plain manifests under a path.
//!
//! Blocking (network and disk): callers run it off the async runtime. One fetch runs at a time
//! (the cache is one directory per repository, and a fleet hub must not open a burst of
//! fetches against someone's git server); each is bounded in time and in what it may read.

use crate::works::manifests::{plain_manifests, From, Input, ManifestError, EXTENSIONS};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_protocol::work::{GitSource, WorkDocument, SOURCE_ANNOTATION};

/// Longest one fetch may take before it is interrupted.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of manifest files a source may hold: a Work is one bundle, and kube-prometheus, one of
/// the largest public install sets, is 5.6 MB.
pub(crate) const MAX_SOURCE_BYTES: u64 = 64 << 20;
/// Manifest files a source may hold.
pub(crate) const MAX_SOURCE_FILES: usize = 5000;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("spec.source.git.repository {0:?}: local paths and file:// URLs are refused (they would read the hub's own disk); serve the repository over https, ssh or git://")]
    Local(String),
    #[error("spec.source.git.repository {repository:?}: not a git URL: {message}")]
    BadUrl { repository: String, message: String },
    #[error("{repository}: fetch failed: {message}")]
    Fetch { repository: String, message: String },
    #[error("{repository}: fetch interrupted after {}s", FETCH_TIMEOUT.as_secs())]
    Timeout { repository: String },
    #[error(
        "{repository}: revision {revision:?} is not a branch, a tag or a commit reachable from one"
    )]
    NoRevision {
        repository: String,
        revision: String,
    },
    #[error("{repository} at {commit}: path {path:?} is not a directory")]
    NoPath {
        repository: String,
        commit: String,
        path: String,
    },
    #[error("{repository} at {commit}: the manifests under {path:?} exceed {what}")]
    TooLarge {
        repository: String,
        commit: String,
        path: String,
        what: String,
    },
    #[error("{repository} at {commit}: {error}")]
    Manifests {
        repository: String,
        commit: String,
        error: ManifestError,
    },
    #[error("git cache {path}: {message}")]
    Cache { path: String, message: String },
}

impl GitError {
    /// The fault is the remote's or the network's, not the document's: worth retrying as is.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(
            self,
            GitError::Fetch { .. } | GitError::Timeout { .. } | GitError::Cache { .. }
        )
    }
}

/// What one fetch found.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub commit: String,
    pub manifests: Vec<serde_json::Value>,
}

/// Bare clones of the repositories works name, under the hub's data directory.
pub(crate) struct GitCache {
    root: PathBuf,
    one_at_a_time: Mutex<()>,
}

impl GitCache {
    pub(crate) fn new(root: PathBuf) -> Arc<Self> {
        // reqwest (gix's https transport) uses the process-wide rustls provider: the same ring
        // the hub's own TLS uses. Installing twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(GitCache {
            root,
            one_at_a_time: Mutex::new(()),
        })
    }

    /// Fetch `src` and read its manifests. The commit is the one `src.revision` names now.
    pub(crate) fn fetch(&self, src: &GitSource) -> Result<Fetched, GitError> {
        let repository = src.repository.clone();
        check_url(&repository)?;
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.root.join(cache_name(&repository));
        let repo = fetch_into(&dir, &repository)?;
        let commit = resolve(&repo, &repository, &src.revision)?;
        let commit_hex = commit.to_string();
        let inputs = read_tree(&repo, commit, src, &commit_hex)?;
        let manifests = plain_manifests(&inputs).map_err(|error| GitError::Manifests {
            repository: repository.clone(),
            commit: commit_hex.clone(),
            error,
        })?;
        tracing::debug!(%repository, commit = %commit_hex, files = inputs.len(), manifests = manifests.len(), "git source read");
        Ok(Fetched {
            commit: commit_hex,
            manifests,
        })
    }
}

/// The document to store for a work with a git source: its manifests those of `fetched`, the
/// commit pinned in `spec.source.git.commit` and summarised in the source annotation.
pub(crate) fn pinned(mut doc: WorkDocument, fetched: Fetched) -> WorkDocument {
    if let Some(src) = doc.spec.source.as_mut() {
        let git = &mut src.git;
        let short: String = fetched.commit.chars().take(12).collect();
        let path = if git.path.is_empty() { "." } else { &git.path };
        doc.metadata.annotations.insert(
            SOURCE_ANNOTATION.to_string(),
            format!("git: {} {} {path} @ {short}", git.repository, git.revision),
        );
        git.commit = Some(fetched.commit);
    }
    doc.spec.manifests = fetched.manifests;
    doc
}

fn check_url(repository: &str) -> Result<(), GitError> {
    let url = gix::url::parse(repository.as_bytes()).map_err(|e| GitError::BadUrl {
        repository: repository.into(),
        message: e.to_string(),
    })?;
    match url.scheme {
        gix::url::Scheme::File => Err(GitError::Local(repository.into())),
        gix::url::Scheme::Git
        | gix::url::Scheme::Ssh
        | gix::url::Scheme::Http
        | gix::url::Scheme::Https => Ok(()),
        _ => Err(GitError::BadUrl {
            repository: repository.into(),
            message: "the scheme is not one of https, http, ssh, git".into(),
        }),
    }
}

/// One directory per repository URL, named by its hash: URLs hold characters no file name
/// should, and two works naming one repository share its objects.
fn cache_name(repository: &str) -> String {
    let digest = Sha256::digest(repository.as_bytes());
    hex::encode(&digest[..16])
}

/// Bring every branch and tag of `repository` (and its HEAD) into the bare clone at `dir`.
fn fetch_into(dir: &Path, repository: &str) -> Result<gix::Repository, GitError> {
    let cache = |message: String| GitError::Cache {
        path: dir.display().to_string(),
        message,
    };
    let fetch = |message: String| GitError::Fetch {
        repository: repository.into(),
        message,
    };
    let repo = if dir.join("HEAD").exists() {
        gix::open(dir).map_err(|e| cache(e.to_string()))?
    } else {
        std::fs::create_dir_all(dir).map_err(|e| cache(e.to_string()))?;
        gix::init_bare(dir).map_err(|e| cache(e.to_string()))?
    };
    let remote = repo
        .remote_at(repository)
        .map_err(|e| fetch(e.to_string()))?
        .with_refspecs(
            [
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
                "+HEAD:refs/tether/HEAD",
            ],
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| fetch(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let _watchdog = Watchdog::start(stop.clone());
    let outcome = remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| fetch(e.to_string()))?
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| fetch(e.to_string()))?
        .receive(gix::progress::Discard, &stop);
    match outcome {
        Ok(_) => Ok(repo),
        Err(_) if stop.load(Ordering::Relaxed) => Err(GitError::Timeout {
            repository: repository.into(),
        }),
        Err(e) => Err(fetch(e.to_string())),
    }
}

/// Sets `stop` once `FETCH_TIMEOUT` has passed, unless dropped before.
struct Watchdog {
    _done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(stop: Arc<AtomicBool>) -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                wait.recv_timeout(FETCH_TIMEOUT)
            {
                stop.store(true, Ordering::Relaxed);
            }
        });
        Watchdog { _done: done }
    }
}

/// The commit `revision` names: `HEAD` (the remote's default branch), a branch, a tag (peeled)
/// or a commit id (full or abbreviated) that the fetch brought in.
fn resolve(
    repo: &gix::Repository,
    repository: &str,
    revision: &str,
) -> Result<gix::ObjectId, GitError> {
    let missing = || GitError::NoRevision {
        repository: repository.into(),
        revision: revision.into(),
    };
    let names = if revision == "HEAD" {
        vec!["refs/tether/HEAD".to_string()]
    } else {
        vec![
            format!("refs/heads/{revision}"),
            format!("refs/tags/{revision}"),
        ]
    };
    for name in names {
        if let Ok(Some(mut r)) = repo.try_find_reference(name.as_str()) {
            let id = r.peel_to_id().map_err(|_| missing())?;
            let commit = id
                .object()
                .and_then(|o| o.peel_to_commit())
                .map_err(|_| missing())?;
            return Ok(commit.id);
        }
    }
    let looks_like_id =
        (4..=40).contains(&revision.len()) && revision.chars().all(|c| c.is_ascii_hexdigit());
    if looks_like_id {
        if let Ok(id) = repo.rev_parse_single(revision) {
            if let Ok(commit) = id.object().and_then(|o| o.peel_to_commit()) {
                return Ok(commit.id);
            }
        }
    }
    Err(missing())
}

/// The manifest files under `src.path` at `commit`, in path order (the order `-f DIR` reads a
/// directory in), as inputs labelled with their path in the repository.
fn read_tree(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    src: &GitSource,
    commit_hex: &str,
) -> Result<Vec<Input>, GitError> {
    let repository = &src.repository;
    let path = src.path.trim_matches('/');
    let no_path = || GitError::NoPath {
        repository: repository.clone(),
        commit: commit_hex.into(),
        path: src.path.clone(),
    };
    let broken = |message: String| GitError::Cache {
        path: repo.path().display().to_string(),
        message,
    };
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| broken(e.to_string()))?;
    let tree = if path.is_empty() {
        root
    } else {
        let entry = root
            .lookup_entry_by_path(path)
            .map_err(|e| broken(e.to_string()))?
            .ok_or_else(no_path)?;
        if !entry.mode().is_tree() {
            return Err(no_path());
        }
        entry
            .object()
            .and_then(|o| o.peel_to_tree())
            .map_err(|e| broken(e.to_string()))?
    };
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| broken(e.to_string()))?;
    let mut files: Vec<(Vec<String>, gix::ObjectId)> = recorder
        .records
        .into_iter()
        // Plain files only: a symlink's target is a path on someone's disk, not a manifest.
        .filter(|e| e.mode.is_blob())
        .filter_map(|e| {
            let name = e.filepath.to_string();
            let wanted = Path::new(&name)
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| EXTENSIONS.contains(&x));
            wanted.then(|| (name.split('/').map(str::to_string).collect(), e.oid))
        })
        .collect();
    files.sort();
    let too_large = |what: String| GitError::TooLarge {
        repository: repository.clone(),
        commit: commit_hex.into(),
        path: src.path.clone(),
        what,
    };
    if files.len() > MAX_SOURCE_FILES {
        return Err(too_large(format!("{MAX_SOURCE_FILES} files")));
    }
    let mut bytes = 0u64;
    let mut inputs = Vec::with_capacity(files.len());
    for (components, oid) in files {
        let blob = repo.find_object(oid).map_err(|e| broken(e.to_string()))?;
        bytes += blob.data.len() as u64;
        if bytes > MAX_SOURCE_BYTES {
            return Err(too_large(format!("{MAX_SOURCE_BYTES} bytes")));
        }
        let rel = components.join("/");
        let label = if path.is_empty() {
            rel
        } else {
            format!("{path}/{rel}")
        };
        let text = String::from_utf8(blob.data.clone()).map_err(|_| GitError::Manifests {
            repository: repository.clone(),
            commit: commit_hex.into(),
            error: ManifestError::Document {
                file: label.clone(),
                doc: 1,
                message: "not UTF-8 text".into(),
            },
        })?;
        inputs.push(Input {
            label,
            text,
            from: From::File,
        });
    }
    Ok(inputs)
}
