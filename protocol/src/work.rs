//! The user-facing `Work` document: a named bundle of Kubernetes manifests and where it goes.
//!
//! Users write it as YAML (`apiVersion: tether.dev/v1alpha1`, `kind: Work`); the hub stores it,
//! assigns generations and delivers the manifests. Unknown fields are refused rather than
//! silently ignored, so a typo (or a feature this hub does not have yet) is a clear error.

use crate::names::{validate_cluster_name, validate_labels};
use crate::Labels;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub const WORK_API_VERSION: &str = "tether.dev/v1alpha1";
pub const WORK_KIND: &str = "Work";
/// Manifests per Work. A bundle is one unit of delivery; thousands of objects belong in several.
pub const MAX_MANIFESTS: usize = 1000;
/// Bounds on `metadata.annotations`: they are notes for people and tools (e.g. where the
/// manifests came from), stored with every generation, so they must not become a second payload.
pub const MAX_ANNOTATIONS: usize = 64;
pub const MAX_ANNOTATION_KEY: usize = 253;
pub const MAX_ANNOTATION_VALUE: usize = 4096;
/// Annotation `tetherctl apply` sets on a Work it wrapped around plain manifests.
pub const SOURCE_ANNOTATION: &str = "tether.dev/source";
/// Annotation the hub sets on the generation an undo creates: the generation it restores.
pub const RESTORES_ANNOTATION: &str = "tether.dev/restores";
/// Generations of a work the hub keeps for `rollout history` and `undo` (as Kubernetes'
/// `revisionHistoryLimit`): each holds a whole document, so the history must not grow forever.
pub const HISTORY_KEEP: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: WorkMetadata,
    pub spec: WorkSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Free-form notes; never used for selection. Omitted when empty, so documents stored
    /// before this field existed hash and compare the same.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub annotations: Labels,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkSpec {
    /// Simple targeting (names and/or a label selector). `placement` is the full form.
    #[serde(default, skip_serializing_if = "Targets::is_empty")]
    pub targets: Targets,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Per-cluster changes, applied in order to that cluster's copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSpec>,
    /// Where the hub fetches the manifests from instead of `manifests` (GitOps). The hub
    /// fills `manifests` from the fetched commit and pins that commit in the generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<WorkSource>,
    /// Kubernetes objects, applied in order (namespaces and CRDs first is the user's job).
    /// Left out when `source` names where they come from.
    #[serde(default)]
    pub manifests: Vec<Value>,
    /// Take ownership of fields another manager owns (server-side apply `force=true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_conflicts: bool,
}

/// Where a work's manifests come from, when not written inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkSource {
    pub git: GitSource,
}

/// A directory of plain manifests at a revision of a git repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSource {
    /// `https://`, `http://`, `ssh://` (or `user@host:path`) or `git://` URL.
    pub repository: String,
    /// Branch, tag or commit id; the remote's default branch (`HEAD`) when left out.
    #[serde(
        default = "default_revision",
        skip_serializing_if = "is_default_revision"
    )]
    pub revision: String,
    /// Directory in the repository whose `*.yaml`, `*.yml` and `*.json` files (at any depth)
    /// are the manifests; the repository root when left out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// How often the hub looks for a new commit (as Argo CD, every 3 minutes by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    /// Set by the hub: the commit this generation's manifests were read from. A document
    /// applied with it set is refused, so a user cannot claim a commit the hub did not fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

pub const DEFAULT_GIT_INTERVAL_SECONDS: u64 = 180;
/// The shortest re-check interval: each check is a fetch from someone else's server.
pub const MIN_GIT_INTERVAL_SECONDS: u64 = 10;

fn default_revision() -> String {
    "HEAD".into()
}

fn is_default_revision(r: &String) -> bool {
    r == "HEAD"
}

impl GitSource {
    pub fn interval_seconds(&self) -> u64 {
        self.interval_seconds
            .unwrap_or(DEFAULT_GIT_INTERVAL_SECONDS)
    }
}

/// Which clusters receive the Work: the union of the named clusters and the selector's matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A Kubernetes-style label selector. An empty selector matches every cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty() && self.selector.is_none()
    }
}

/// Facts are selectable as labels under this prefix (`tether.dev/arch: aarch64`).
pub const FACT_LABEL_PREFIX: &str = "tether.dev/";

/// Which clusters a work goes to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Over labels and facts (`tether.dev/arch`, `tether.dev/os`, `tether.dev/kubernetes-version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Pick at most this many; the choice is stable (rendezvous hashing), so it does not churn
    /// when nothing relevant changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clusters: Option<u32>,
    /// With `maxClusters`: spread the choice evenly over the values of a label (or fact), e.g.
    /// `zone`; domains differ by at most one cluster while candidates last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<String>,
    /// Divide a replica total over the selected clusters and write each share into that
    /// cluster's Deployments/StatefulSets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaDivision>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Divide {
    /// By the `weights` rules (clusters matching no rule weigh 1).
    #[default]
    Weighted,
    /// By reported CPU count.
    Capacity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaDivision {
    pub total: u32,
    #[serde(default)]
    pub divide: Divide,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<ReplicaWeight>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaWeight {
    pub selector: LabelSelector,
    pub weight: u32,
}

/// One override rule: which clusters, then what to change in their copy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageOverride>,
    /// Sets `spec.replicas` of Deployments and StatefulSets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub annotations: Labels,
    /// Environment variables set on every container of every pod template.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub env: Labels,
    /// RFC 6902 JSON patches for selected manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<JsonPatchRule>,
}

impl OverrideRule {
    pub fn applies_to(&self, cluster: &str, labels: &Labels) -> bool {
        self.clusters.iter().any(|c| c == cluster)
            || self
                .cluster_selector
                .as_ref()
                .is_some_and(|s| s.matches(labels))
    }
}

/// Rewrites container images: `registry` replaces the registry host (a regional mirror),
/// `repository` the path, `tag` the tag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Only images whose repository (without registry and tag) equals this; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_repository: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonPatchRule {
    /// Manifests this patch applies to (all when both are absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// RFC 6902 operations.
    pub operations: Value,
}

/// A count (`3`) or a percentage (`"25%"`) of the clusters in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CountOrPercent {
    Count(u32),
    Percent(String),
}

impl CountOrPercent {
    /// `Err` with a message for a malformed percentage.
    pub fn percent(&self) -> Result<Option<u8>, String> {
        match self {
            CountOrPercent::Count(_) => Ok(None),
            CountOrPercent::Percent(s) => s
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<u8>().ok())
                .filter(|p| *p <= 100)
                .map(Some)
                .ok_or_else(|| format!("{s:?} is neither a count nor a percentage like \"25%\"")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RolloutStrategy {
    #[default]
    All,
    Progressive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflinePolicySpec {
    #[default]
    Skip,
    Wait,
    Fail,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    #[serde(default)]
    pub strategy: RolloutStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<CountOrPercent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<CountOrPercent>,
    #[serde(default)]
    pub min_success_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u64>,
    #[serde(default)]
    pub offline_policy: OfflinePolicySpec,
    /// Canary groups, in order; clusters in no group go last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<RolloutGroup>,
    /// Roll back to the previous generation when the failure budget is exceeded.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Named windows; a cluster labelled `tether.dev/maintenance-window: <name>` is updated
    /// only inside that window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub maintenance_windows: BTreeMap<String, MaintenanceWindow>,
}

/// Label naming a cluster's maintenance window.
pub const MAINTENANCE_WINDOW_LABEL: &str = "tether.dev/maintenance-window";

/// A window opens at every match of a 5-field cron expression (UTC) and lasts `durationMinutes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub cron: String,
    pub duration_minutes: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    pub mandatory: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FailoverMode {
    /// Move the slot of an unreachable cluster elsewhere; copies may briefly overlap.
    #[default]
    Multi,
    /// At most one copy may run anywhere: the agent fences itself, the hub waits longer.
    Singleton,
}

/// What happens when a selected cluster stays unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverSpec {
    #[serde(default)]
    pub mode: FailoverMode,
    /// How long the `unreachable`/`offline` taints are tolerated before the slot moves.
    #[serde(default = "default_toleration")]
    pub toleration_seconds: u64,
    /// Singleton: the agent removes its copy after this long without hub contact.
    #[serde(default = "default_fence_after")]
    pub fence_after_seconds: u64,
    /// Singleton: extra wait on the hub side for clock-rate differences and delays.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
}

fn default_toleration() -> u64 {
    300
}
fn default_fence_after() -> u64 {
    60
}
fn default_skew() -> u64 {
    5
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => v.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => !v.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::Exists => v.is_some(),
                    SelectorOperator::DoesNotExist => v.is_none(),
                }
            })
    }

    /// The first term these labels fail, said so that an operator sees what to change
    /// (`matchLabels region=eu: the cluster has region=us`); `None` when they match.
    pub fn first_mismatch(&self, labels: &Labels) -> Option<String> {
        let has = |k: &str| match labels.get(k) {
            Some(v) => format!("the cluster has {k}={v}"),
            None => format!("the cluster has no {k} label"),
        };
        if let Some((k, v)) = self
            .match_labels
            .iter()
            .find(|(k, v)| labels.get(*k) != Some(*v))
        {
            return Some(format!("matchLabels {k}={v}: {}", has(k)));
        }
        self.match_expressions
            .iter()
            .enumerate()
            .find(|(_, r)| {
                let one = LabelSelector {
                    match_labels: Labels::new(),
                    match_expressions: vec![(*r).clone()],
                };
                !one.matches(labels)
            })
            .map(|(i, r)| {
                format!(
                    "matchExpressions[{i}] {} {:?} [{}]: {}",
                    r.key,
                    r.operator,
                    r.values.join(", "),
                    has(&r.key)
                )
            })
    }
}

impl Targets {
    pub fn matches(&self, cluster: &str, labels: &Labels) -> bool {
        self.clusters.iter().any(|c| c == cluster)
            || self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// Identity of one Kubernetes object in a bundle; what pruning and status talk about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{} {ns}/{}", self.api_version, self.kind, self.name),
            None => write!(f, "{}/{} {}", self.api_version, self.kind, self.name),
        }
    }
}

impl ObjectRef {
    /// Read the identity fields of a manifest, or say which one is missing.
    pub fn of(manifest: &Value) -> Result<ObjectRef, String> {
        let field = |path: &[&str]| -> Option<String> {
            let mut v = manifest;
            for p in path {
                v = v.get(p)?;
            }
            v.as_str().map(str::to_string)
        };
        let api_version = field(&["apiVersion"]).ok_or("missing apiVersion")?;
        let kind = field(&["kind"]).ok_or("missing kind")?;
        let name = field(&["metadata", "name"]).ok_or("missing metadata.name")?;
        if name.is_empty() || name.len() > 253 {
            return Err(format!("metadata.name {name:?} must be 1-253 characters"));
        }
        Ok(ObjectRef {
            api_version,
            kind,
            namespace: field(&["metadata", "namespace"]),
            name,
        })
    }
}

fn validate_annotations(annotations: &Labels, errors: &mut Vec<String>) {
    if annotations.len() > MAX_ANNOTATIONS {
        errors.push(format!(
            "metadata.annotations has {} entries; the limit is {MAX_ANNOTATIONS}",
            annotations.len()
        ));
    }
    for (k, v) in annotations {
        if k.is_empty() || k.len() > MAX_ANNOTATION_KEY {
            errors.push(format!(
                "metadata.annotations: key {:?} must be 1-{MAX_ANNOTATION_KEY} characters",
                k.chars().take(64).collect::<String>()
            ));
        }
        if v.len() > MAX_ANNOTATION_VALUE {
            errors.push(format!(
                "metadata.annotations[{k:?}]: value has {} bytes; the limit is {MAX_ANNOTATION_VALUE}",
                v.len()
            ));
        }
    }
}

/// Everything wrong with a document, so the user can fix it in one go.
pub fn validate(doc: &WorkDocument) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if doc.api_version != WORK_API_VERSION {
        errors.push(format!(
            "apiVersion must be {WORK_API_VERSION:?}, got {:?}",
            doc.api_version
        ));
    }
    if doc.kind != WORK_KIND {
        errors.push(format!("kind must be {WORK_KIND:?}, got {:?}", doc.kind));
    }
    if let Err(e) = validate_cluster_name(&doc.metadata.name) {
        errors.push(format!(
            "metadata.name: {}",
            e.to_string().replace("cluster name", "work name")
        ));
    }
    if let Err(e) = validate_labels(&doc.metadata.labels) {
        errors.push(format!("metadata.labels: {e}"));
    }
    validate_annotations(&doc.metadata.annotations, &mut errors);
    let targets = &doc.spec.targets;
    match &doc.spec.placement {
        None if targets.is_empty() => errors.push(
            "spec.targets (or spec.placement) needs `clusters` (names) or `selector` (an empty selector {} means every cluster)"
                .into(),
        ),
        Some(_) if !targets.is_empty() => errors.push(
            "use spec.targets or spec.placement, not both".into(),
        ),
        Some(p) => {
            if p.clusters.is_empty() && p.selector.is_none() {
                errors.push("spec.placement needs `clusters` or `selector`".into());
            }
            for c in p.clusters.iter().chain(&p.exclude) {
                if let Err(e) = validate_cluster_name(c) {
                    errors.push(format!("spec.placement: {e}"));
                }
            }
            if p.max_clusters == Some(0) {
                errors.push("spec.placement.maxClusters must be at least 1".into());
            }
        }
        None => {}
    }
    for (i, rule) in doc.spec.overrides.iter().enumerate() {
        if rule.clusters.is_empty() && rule.cluster_selector.is_none() {
            errors.push(format!(
                "spec.overrides[{i}] needs `clusters` or `clusterSelector`"
            ));
        }
        for (j, p) in rule.patches.iter().enumerate() {
            if !p.operations.is_array() {
                errors.push(format!(
                    "spec.overrides[{i}].patches[{j}].operations must be an RFC 6902 list"
                ));
            }
        }
    }
    if let Some(f) = &doc.spec.failover {
        if f.mode == FailoverMode::Singleton && f.fence_after_seconds == 0 {
            errors
                .push("spec.failover.fenceAfterSeconds must be at least 1 for a singleton".into());
        }
    }
    if let Some(r) = &doc.spec.rollout {
        for (what, v) in [
            ("maxConcurrency", &r.max_concurrency),
            ("maxFailures", &r.max_failures),
        ] {
            if let Some(Err(e)) = v.as_ref().map(CountOrPercent::percent) {
                errors.push(format!("spec.rollout.{what}: {e}"));
            }
        }
        if r.max_concurrency == Some(CountOrPercent::Count(0)) {
            errors.push("spec.rollout.maxConcurrency must be at least 1".into());
        }
        for g in &r.groups {
            if g.clusters.is_empty() && g.selector.is_none() {
                errors.push(format!(
                    "spec.rollout.groups {:?} needs `clusters` or `selector`",
                    g.name
                ));
            }
        }
    }
    for c in &targets.clusters {
        if let Err(e) = validate_cluster_name(c) {
            errors.push(format!("spec.targets.clusters: {e}"));
        }
    }
    if let Some(sel) = &targets.selector {
        for r in &sel.match_expressions {
            let needs_values = matches!(r.operator, SelectorOperator::In | SelectorOperator::NotIn);
            if needs_values == r.values.is_empty() {
                errors.push(format!(
                    "spec.targets.selector: operator {:?} on key {:?} {}",
                    r.operator,
                    r.key,
                    if needs_values {
                        "needs values"
                    } else {
                        "takes no values"
                    }
                ));
            }
        }
    }
    if let Some(src) = &doc.spec.source {
        let git = &src.git;
        if git.repository.trim().is_empty() {
            errors.push("spec.source.git.repository must not be empty".into());
        }
        if git.revision.trim().is_empty() {
            errors.push(
                "spec.source.git.revision must not be empty (leave it out for the default branch)"
                    .into(),
            );
        }
        if git.path.split('/').any(|c| c == "..") {
            errors.push(format!(
                "spec.source.git.path {:?} must stay inside the repository (no `..`)",
                git.path
            ));
        }
        if git.interval_seconds() < MIN_GIT_INTERVAL_SECONDS {
            errors.push(format!(
                "spec.source.git.intervalSeconds must be at least {MIN_GIT_INTERVAL_SECONDS}"
            ));
        }
    }
    if doc.spec.manifests.len() > MAX_MANIFESTS {
        errors.push(format!(
            "spec.manifests has {} objects; the limit is {MAX_MANIFESTS} per Work",
            doc.spec.manifests.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, m) in doc.spec.manifests.iter().enumerate() {
        match ObjectRef::of(m) {
            Ok(r) => {
                if !seen.insert(r.clone()) {
                    errors.push(format!("spec.manifests[{i}]: {r} appears twice"));
                }
            }
            Err(e) => errors.push(format!("spec.manifests[{i}]: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(manifests: Vec<Value>) -> WorkDocument {
        WorkDocument {
            api_version: WORK_API_VERSION.into(),
            kind: WORK_KIND.into(),
            metadata: WorkMetadata {
                name: "web".into(),
                labels: Labels::new(),
                annotations: Labels::new(),
            },
            spec: WorkSpec {
                targets: Targets {
                    clusters: vec!["a".into()],
                    selector: None,
                },
                placement: None,
                overrides: vec![],
                rollout: None,
                failover: None,
                source: None,
                manifests,
                force_conflicts: false,
            },
        }
    }

    #[test]
    fn a_git_source_reads_with_defaults_and_its_bounds_are_checked() {
        let text = r#"{"apiVersion":"tether.dev/v1alpha1","kind":"Work","metadata":{"name":"w"},
            "spec":{"targets":{"clusters":["a"]},"source":{"git":{"repository":"https://h/r.git"}}}}"#;
        let d: WorkDocument = serde_json::from_str(text).unwrap();
        let git = &d.spec.source.as_ref().unwrap().git;
        assert_eq!(
            (
                git.revision.as_str(),
                git.path.as_str(),
                git.interval_seconds()
            ),
            ("HEAD", "", DEFAULT_GIT_INTERVAL_SECONDS)
        );
        assert!(d.spec.manifests.is_empty());
        assert_eq!(validate(&d), Ok(()));
        // Defaults are left out again, so a stored document reads back the same.
        let back: WorkDocument = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);

        let mut bad = d.clone();
        let g = &mut bad.spec.source.as_mut().unwrap().git;
        g.path = "apps/../../etc".into();
        g.interval_seconds = Some(1);
        g.revision = " ".into();
        let errors = validate(&bad).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("inside the repository")));
        assert!(errors.iter().any(|e| e.contains("at least 10")));
    }

    #[test]
    fn valid_document_passes_and_problems_are_all_reported() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "d"}});
        assert!(validate(&doc(vec![cm.clone()])).is_ok());
        let mut bad = doc(vec![cm.clone(), cm, json!({"kind": "Pod"})]);
        bad.kind = "Wrok".into();
        bad.spec.targets.clusters = vec!["Bad_Name".into()];
        let errors = validate(&bad).unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("appears twice")));
        assert!(errors.iter().any(|e| e.contains("missing apiVersion")));
    }

    #[test]
    fn annotations_are_accepted_within_bounds() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        let mut d = doc(vec![cm]);
        d.metadata
            .annotations
            .insert(SOURCE_ANNOTATION.into(), "files: a.yaml".into());
        assert!(validate(&d).is_ok());
        // Absent when empty, so older stored documents serialise the same.
        let plain = serde_json::to_value(doc(vec![])).unwrap();
        assert!(plain["metadata"].get("annotations").is_none());

        let mut big = d.clone();
        big.metadata
            .annotations
            .insert("k".into(), "v".repeat(MAX_ANNOTATION_VALUE + 1));
        big.metadata
            .annotations
            .insert("x".repeat(MAX_ANNOTATION_KEY + 1), "v".into());
        big.metadata.annotations.insert(String::new(), "v".into());
        let errors = validate(&big).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");

        let mut many = d;
        for i in 0..MAX_ANNOTATIONS {
            many.metadata
                .annotations
                .insert(format!("k{i}"), "v".into());
        }
        let errors = validate(&many).unwrap_err();
        assert!(errors[0].contains("limit is 64"), "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let yaml = r#"{"apiVersion":"tether.dev/v1alpha1","kind":"Work","metadata":{"name":"w"},
            "spec":{"targets":{"clusters":["a"]},"manifests":[],"placment":{}}}"#;
        let err = serde_json::from_str::<WorkDocument>(yaml).unwrap_err();
        assert!(err.to_string().contains("placment"), "{err}");
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels: Labels = [("region".to_string(), "eu".to_string())].into();
        let req = |op, values: &[&str]| LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![SelectorRequirement {
                key: "region".into(),
                operator: op,
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        };
        assert!(LabelSelector::default().matches(&labels));
        assert!(req(SelectorOperator::In, &["eu", "us"]).matches(&labels));
        assert!(!req(SelectorOperator::NotIn, &["eu"]).matches(&labels));
        assert!(req(SelectorOperator::NotIn, &["eu"]).matches(&Labels::new()));
        assert!(req(SelectorOperator::Exists, &[]).matches(&labels));
        assert!(!req(SelectorOperator::DoesNotExist, &[]).matches(&labels));
    }
}
