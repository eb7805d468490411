//! Executors turn a work's desired manifests into objects in the cluster.
//!
//! The reconciler calls them on every pass, whether or not the hub is reachable, so `apply`
//! must be idempotent and must correct drift. Each reports the objects it manages (the
//! inventory), and which of them it adopted (they existed before Tether first applied them), so
//! that removal and pruning delete only what Tether created and release the rest.

pub mod dir;
pub mod kube;
pub mod memory;
pub mod yaml;

use std::collections::BTreeSet;
use std::future::Future;
use tether_protocol::work::ObjectRef;
use tether_protocol::{Condition, ResourceStatus};
use tether_store::agent::DesiredWork;

/// What Tether manages for one work, as recorded after its last successful apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managed {
    pub inventory: Vec<ObjectRef>,
    /// Those of `inventory` that existed before Tether first applied them. Removal and pruning
    /// release these (Tether's marks and field ownership go, the object stays) instead of
    /// deleting them. Inventory entries not listed here were created by Tether.
    pub adopted: BTreeSet<ObjectRef>,
}

impl Managed {
    /// Objects all created by Tether (what an inventory without adoption records means).
    pub fn created(inventory: Vec<ObjectRef>) -> Self {
        Self {
            inventory,
            adopted: BTreeSet::new(),
        }
    }
}

/// Outcome of a successful apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyReport {
    /// Every object the work now manages in the cluster.
    pub inventory: Vec<ObjectRef>,
    /// Those of `inventory` that Tether adopted rather than created (see [`Managed::adopted`]).
    pub adopted: BTreeSet<ObjectRef>,
    pub resources: Vec<ResourceStatus>,
    pub conditions: Vec<Condition>,
    /// Whether the executor can observe readiness at all (a directory cannot).
    pub readiness_known: bool,
    /// Manifests the edge policy refused (`object: why`); the rest were applied.
    pub refused: Vec<String>,
}

impl ApplyReport {
    /// What the work manages now, for the next apply or the removal.
    pub fn managed(&self) -> Managed {
        Managed {
            inventory: self.inventory.clone(),
            adopted: self.adopted.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecErrorKind {
    /// Another field manager owns a field; the work may set `forceConflicts`.
    Conflict,
    /// The manifests themselves are wrong (unknown kind, schema error): retrying will not help.
    Invalid,
    /// The cluster or the disk failed; the next pass retries.
    Transient,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub kind: ExecErrorKind,
    pub message: String,
}

impl ExecError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ExecErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: ExecErrorKind::Invalid,
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            kind: ExecErrorKind::Conflict,
            message: message.into(),
        }
    }
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ExecErrorKind::Conflict => "ApplyConflict",
            ExecErrorKind::Invalid => "InvalidManifest",
            ExecErrorKind::Transient => "ApplyFailed",
        }
    }
}

pub trait Executor: Send + Sync + 'static {
    /// Make the cluster match `work`, pruning objects of `previous` that left the work.
    fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> impl Future<Output = Result<ApplyReport, ExecError>> + Send;

    /// Stop managing a work: delete the objects it created and release those it adopted, or
    /// release them all (`orphan`).
    fn remove(
        &self,
        work: &str,
        managed: &Managed,
        orphan: bool,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;

    fn describe(&self) -> String;

    /// Kubernetes version and node count, when the executor talks to a cluster.
    fn cluster_facts(&self) -> impl Future<Output = (Option<String>, Option<u32>)> + Send {
        async { (None, None) }
    }
}

/// The executor chosen on the command line.
// One executor per process, built once and shared behind an Arc: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyExecutor {
    Memory(memory::MemoryExecutor),
    Dir(dir::DirExecutor),
    Kube(kube::KubeExecutor),
}

impl Executor for AnyExecutor {
    async fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        match self {
            AnyExecutor::Memory(e) => e.apply(work, previous).await,
            AnyExecutor::Dir(e) => e.apply(work, previous).await,
            AnyExecutor::Kube(e) => e.apply(work, previous).await,
        }
    }

    async fn remove(&self, work: &str, managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        match self {
            AnyExecutor::Memory(e) => e.remove(work, managed, orphan).await,
            AnyExecutor::Dir(e) => e.remove(work, managed, orphan).await,
            AnyExecutor::Kube(e) => e.remove(work, managed, orphan).await,
        }
    }

    async fn cluster_facts(&self) -> (Option<String>, Option<u32>) {
        match self {
            AnyExecutor::Kube(e) => e.cluster_facts().await,
            _ => (None, None),
        }
    }

    fn describe(&self) -> String {
        match self {
            AnyExecutor::Memory(e) => e.describe(),
            AnyExecutor::Dir(e) => e.describe(),
            AnyExecutor::Kube(e) => e.describe(),
        }
    }
}

/// The identity of one manifest, with a name and namespace usable as URL path segments
/// (Kubernetes' rule for every name: not `.` or `..`, no `/` or `%`). The kube executor puts
/// them into request paths, so `../../secrets/x` must never get that far.
pub fn object_ref(manifest: &serde_json::Value) -> Result<ObjectRef, String> {
    let r = ObjectRef::of(manifest)?;
    let segment = |what: &str, s: &str| {
        if s == "." || s == ".." || s.contains(['/', '%']) || s.chars().any(char::is_control) {
            Err(format!(
                "{what} {s:?} is not a valid path segment (no '/', '%', control characters, '.' or '..')"
            ))
        } else {
            Ok(())
        }
    };
    segment("metadata.name", &r.name)?;
    if let Some(ns) = &r.namespace {
        if ns.is_empty() || ns.len() > 63 {
            return Err(format!("metadata.namespace {ns:?} must be 1-63 characters"));
        }
        segment("metadata.namespace", ns)?;
    }
    Ok(r)
}

/// Object identities of a bundle, in manifest order.
/// Where an object goes in the apply order: Namespaces (0), then CustomResourceDefinitions
/// (1), then everything else (2), manifest order kept within each. Objects are removed in the
/// reverse order, so a namespace or a CRD goes after what lives in it.
pub(crate) fn apply_rank(api_version: &str, kind: &str) -> u8 {
    if api_version == "v1" && kind == "Namespace" {
        0
    } else if kind == "CustomResourceDefinition" && api_version.starts_with("apiextensions.k8s.io/")
    {
        1
    } else {
        2
    }
}

/// The manifests' indices in apply order (see [`apply_rank`]); a stable sort.
pub(crate) fn apply_order(manifests: &[serde_json::Value]) -> Vec<usize> {
    let rank = |m: &serde_json::Value| {
        apply_rank(
            m.get("apiVersion")
                .and_then(|v| v.as_str())
                .unwrap_or_default(),
            m.get("kind").and_then(|v| v.as_str()).unwrap_or_default(),
        )
    };
    let mut order: Vec<usize> = (0..manifests.len()).collect();
    order.sort_by_key(|&i| rank(&manifests[i]));
    order
}

pub fn refs_of(work: &DesiredWork) -> Result<Vec<ObjectRef>, ExecError> {
    work.manifests
        .iter()
        .enumerate()
        .map(|(i, m)| object_ref(m).map_err(|e| ExecError::invalid(format!("manifest {i}: {e}"))))
        .collect()
}

pub fn condition(kind: &str, ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        kind: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
    }
}
