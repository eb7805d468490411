//! Applies works to a Kubernetes cluster with kube-rs: discovery, server-side apply (field
//! manager `tether-agent`), pruning of objects that left a work, deletion on removal, and
//! readiness of the workload kinds. `docs/kube-executor.md` explains the rules and the RBAC.
//!
//! Ownership: every applied object carries the label `tether.dev/work=<work>` and the
//! annotation `tether.dev/generation=<generation>`. The inventory (kept by the reconciler in
//! redb) says *where* to look; the label says *what is ours*: pruning and removal only touch
//! objects that still carry our label for this work.
//!
//! Created or adopted: an object that did not exist when the work first applied it was
//! created by Tether and is deleted when it leaves the work or the work is removed. One that
//! existed already (the cluster's own `coredns`, say) was adopted: it is released instead,
//! meaning Tether's label, annotation and `managedFields` entry are removed with one merge patch
//! (guarded by `resourceVersion`) and every value stays. The manifest annotation
//! `tether.dev/on-removal: delete|release` overrides this per object.

use super::{condition, ApplyReport, ExecError, Executor, Managed};
use k8s_openapi::api::core::v1::Node;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, Preconditions,
};
use kube::core::Status;
use kube::{Client, Config};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tether_protocol::work::ObjectRef;
use tether_protocol::{Condition, ResourceStatus};
use tether_store::agent::DesiredWork;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "tether-agent";
/// Label naming the work that owns an object.
pub const WORK_LABEL: &str = "tether.dev/work";
/// Annotation with the work generation that last applied an object.
pub const GENERATION_ANNOTATION: &str = "tether.dev/generation";
/// In a manifest, overrides what removal and pruning do with the object: `delete` deletes it
/// even if adopted, `release` releases it even if Tether created it (or an inventory from
/// before adoption records says so).
pub const ON_REMOVAL_ANNOTATION: &str = "tether.dev/on-removal";
/// Attempts at releasing an object that keeps changing under us (resourceVersion conflicts).
const RELEASE_ATTEMPTS: usize = 3;
/// Longest any single request to the API server may take (connect included).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the executor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    #[error(
        "no Kubernetes configuration found: set KUBECONFIG (or create ~/.kube/config), or run the \
         agent in a pod with a service account (in-cluster config). Details: {0}"
    )]
    NoConfig(String),
    #[error("loading the Kubernetes configuration timed out after {0:?}")]
    Timeout(Duration),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
}

/// One resolved kind: where its objects live and whether they are namespaced.
#[derive(Debug, Clone)]
struct Resolved {
    resource: ApiResource,
    namespaced: bool,
}

/// Outcome of one request, before it is given a meaning.
enum CallError {
    /// The API server answered with an error Status.
    Api(Box<Status>),
    /// No answer: connection refused, TLS failure, timeout...
    Unreachable(String),
}

pub struct KubeExecutor {
    client: Client,
    cluster_url: String,
    request_timeout: Duration,
    /// apiVersion -> kinds served there (refreshed when a kind is missing).
    discovery: Mutex<HashMap<String, HashMap<String, Resolved>>>,
    /// Work -> how each object it applied came to be managed, as found by this process. The
    /// durable record is the reconciler's (from [`ApplyReport::adopted`]); this one covers
    /// passes that failed after applying some objects, which report nothing.
    origins: Mutex<HashMap<String, BTreeMap<ObjectRef, Origin>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Created,
    Adopted,
}

impl KubeExecutor {
    /// Connect with the local kubeconfig (KUBECONFIG or ~/.kube/config) or, failing that, the
    /// in-cluster service account: what `kube::Client::try_default` does, with our timeouts.
    pub async fn connect() -> Result<Self, KubeSetupError> {
        let config = tokio::time::timeout(DEFAULT_REQUEST_TIMEOUT, Config::infer())
            .await
            .map_err(|_| KubeSetupError::Timeout(DEFAULT_REQUEST_TIMEOUT))?
            .map_err(|e| KubeSetupError::NoConfig(error_chain(&e)))?;
        Self::from_config(config)
    }

    /// Build from an explicit configuration (tests point this at a test API server).
    pub fn from_config(config: Config) -> Result<Self, KubeSetupError> {
        Self::with_timeout(config, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Like [`from_config`](Self::from_config) with a different per-request timeout.
    pub fn with_timeout(
        mut config: Config,
        request_timeout: Duration,
    ) -> Result<Self, KubeSetupError> {
        // kube's TLS uses the process default provider; make it ring (no aws-lc, no openssl).
        // Failing means one is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        config.connect_timeout = Some(
            config
                .connect_timeout
                .map_or(request_timeout, |t| t.min(request_timeout)),
        );
        let cluster_url = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let client =
            Client::try_from(config).map_err(|e| KubeSetupError::Client(error_chain(&e)))?;
        Ok(Self {
            client,
            cluster_url,
            request_timeout,
            discovery: Mutex::new(HashMap::new()),
            origins: Mutex::new(HashMap::new()),
        })
    }

    /// Kubernetes version (`gitVersion`, e.g. `v1.33.1+k3s1`) and node count, for the facts the
    /// agent reports. Either is `None` when it cannot be read (down, forbidden).
    pub async fn cluster_facts(&self) -> (Option<String>, Option<u32>) {
        let version = self
            .call(self.client.apiserver_version())
            .await
            .ok()
            .map(|info| info.git_version);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node_count = self
            .call(nodes.list_metadata(&ListParams::default()))
            .await
            .ok()
            .map(|l| u32::try_from(l.items.len()).unwrap_or(u32::MAX));
        (version, node_count)
    }

    async fn call<T>(&self, fut: impl Future<Output = kube::Result<T>>) -> Result<T, CallError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(status))) => Err(CallError::Api(status)),
            Ok(Err(e)) => Err(CallError::Unreachable(format!(
                "cannot reach the Kubernetes API at {}: {}",
                self.cluster_url,
                error_chain(&e)
            ))),
            Err(_) => Err(CallError::Unreachable(format!(
                "the Kubernetes API at {} did not answer within {:?}",
                self.cluster_url, self.request_timeout
            ))),
        }
    }

    fn cached(&self, api_version: &str, kind: &str) -> Option<Resolved> {
        let cache = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(api_version)?.get(kind).cloned()
    }

    /// apiVersion + kind -> resource and scope. Cached; a miss re-reads the group version once
    /// (a CRD may have been installed since).
    async fn resolve(&self, api_version: &str, kind: &str) -> Result<Resolved, ExecError> {
        if let Some(r) = self.cached(api_version, kind) {
            return Ok(r);
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        if version.is_empty()
            || version.contains('/')
            || (api_version.contains('/') && group.is_empty())
        {
            return Err(ExecError::invalid(format!(
                "apiVersion {api_version:?} is malformed: use `v1` or `GROUP/VERSION`"
            )));
        }
        let list = if group.is_empty() {
            self.call(self.client.list_core_api_resources(version))
                .await
        } else {
            self.call(self.client.list_api_group_resources(api_version))
                .await
        };
        let list = match list {
            Ok(l) => l,
            Err(CallError::Api(s)) if s.code == 404 => {
                return Err(ExecError::invalid(format!(
                    "the cluster does not serve apiVersion {api_version} (kind {kind}): check the \
                     spelling, or install the CRD that provides it"
                )))
            }
            Err(CallError::Api(s)) => {
                return Err(ExecError::transient(format!(
                    "discovering {api_version}: {}",
                    status_text(&s)
                )))
            }
            Err(CallError::Unreachable(m)) => return Err(ExecError::transient(m)),
        };
        let mut kinds = HashMap::new();
        for r in list.resources.iter().filter(|r| !r.name.contains('/')) {
            let gvk = GroupVersionKind::gvk(group, version, &r.kind);
            kinds.insert(
                r.kind.clone(),
                Resolved {
                    resource: ApiResource::from_gvk_with_plural(&gvk, &r.name),
                    namespaced: r.namespaced,
                },
            );
        }
        let found = kinds.get(kind).cloned();
        self.discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(api_version.to_string(), kinds);
        found.ok_or_else(|| {
            ExecError::invalid(format!(
                "the cluster serves no kind {kind:?} in {api_version}: check the spelling (kinds \
                 are case-sensitive), or install the CRD that provides it"
            ))
        })
    }

    /// [`Self::resolve`], except that a kind served by a CRD in the same work (applied just
    /// before, see `apply_rank`) is waited for: the API server serves it only once the CRD is
    /// established. Still missing after [`CRD_ESTABLISH_WAIT`], it is a transient failure (the
    /// pass is retried), not an invalid manifest.
    async fn resolve_in(
        &self,
        work: &DesiredWork,
        api_version: &str,
        kind: &str,
    ) -> Result<Resolved, ExecError> {
        let first = self.resolve(api_version, kind).await;
        match first {
            Err(e)
                if e.kind == super::ExecErrorKind::Invalid && crd_in(work, api_version, kind) => {}
            other => return other,
        }
        let start = tokio::time::Instant::now();
        tracing::info!(work = %work.name, %api_version, %kind, "waiting for the CRD in this work to be established");
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match self.resolve(api_version, kind).await {
                Err(e) if e.kind == super::ExecErrorKind::Invalid => {
                    if start.elapsed() >= CRD_ESTABLISH_WAIT {
                        return Err(ExecError::transient(format!(
                            "kind {kind} in {api_version} is not served {}s after its CRD in this \
                             work was applied; retrying",
                            CRD_ESTABLISH_WAIT.as_secs()
                        )));
                    }
                }
                other => return other,
            }
        }
    }

    fn forget(&self, api_version: &str) {
        self.discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(api_version);
    }

    fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if resolved.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }

    /// The identity an object really has: namespaced kinds without a namespace land in the
    /// client's default namespace; cluster-scoped kinds have none.
    fn effective(&self, r: &ObjectRef, resolved: &Resolved) -> ObjectRef {
        let namespace = if resolved.namespaced {
            Some(
                r.namespace
                    .clone()
                    .unwrap_or_else(|| self.client.default_namespace().to_string()),
            )
        } else {
            None
        };
        ObjectRef {
            namespace,
            ..r.clone()
        }
    }

    fn remembered(&self, work: &str, r: &ObjectRef) -> Option<Origin> {
        let origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        origins.get(work)?.get(r).copied()
    }

    fn remember(&self, work: &str, r: &ObjectRef, origin: Origin) {
        self.origins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(work.to_string())
            .or_default()
            .insert(r.clone(), origin);
    }

    /// Whether Tether created `r` or adopted it. Known objects keep what was recorded; an
    /// object this work never applied is adopted if it exists before the first apply (one GET,
    /// once per object).
    async fn origin(
        &self,
        work: &str,
        r: &ObjectRef,
        resolved: &Resolved,
        previous: &Managed,
        previous_inventory: &BTreeSet<ObjectRef>,
    ) -> Result<Origin, CallOutcome> {
        if previous.adopted.contains(r) {
            return Ok(Origin::Adopted);
        }
        if let Some(o) = self.remembered(work, r) {
            return Ok(o);
        }
        if previous_inventory.contains(r) {
            return Ok(Origin::Created);
        }
        let api = self.api(resolved, r.namespace.as_deref());
        let origin = match self.call(api.get_opt(&r.name)).await {
            Ok(Some(_)) => Origin::Adopted,
            Ok(None) => Origin::Created,
            Err(CallError::Unreachable(m)) => return Err(CallOutcome::Unreachable(m)),
            Err(CallError::Api(s)) => {
                return Err(CallOutcome::Failed(ExecError::transient(format!(
                    "reading {r} before applying it: {}",
                    status_text(&s)
                ))))
            }
        };
        self.remember(work, r, origin);
        Ok(origin)
    }

    /// Give an adopted object back: drop Tether's label, annotation and field manager in one
    /// merge patch, keeping every value. `managedFields` in a patch replaces the list (the
    /// documented way to change it; `[{}]` clears it, `[]` would change nothing), and the
    /// object's `resourceVersion` makes the patch fail rather than overwrite a concurrent change
    /// to that list. Returns `false` if the object is gone or no longer ours.
    async fn release(
        &self,
        api: &Api<DynamicObject>,
        work: &str,
        mut obj: DynamicObject,
    ) -> Result<bool, CallError> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        for attempt in 1..=RELEASE_ATTEMPTS {
            let mut others: Vec<Value> = obj
                .metadata
                .managed_fields
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.manager.as_deref() != Some(FIELD_MANAGER))
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect();
            if others.is_empty() {
                others.push(json!({}));
            }
            let release = json!({"metadata": {
                "resourceVersion": obj.metadata.resource_version,
                "managedFields": others,
                "labels": {WORK_LABEL: null},
                "annotations": {GENERATION_ANNOTATION: null},
            }});
            match self
                .call(api.patch(&name, &params, &Patch::Merge(&release)))
                .await
            {
                Ok(_) => return Ok(true),
                Err(CallError::Api(s)) if s.code == 404 => return Ok(false),
                Err(CallError::Api(s)) if s.code == 409 && attempt < RELEASE_ATTEMPTS => {
                    obj = match self.call(api.get_opt(&name)).await? {
                        Some(o) if labelled_for(&o, work) => o,
                        _ => return Ok(false),
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    async fn apply_one(
        &self,
        work: &DesiredWork,
        r: &ObjectRef,
        resolved: &Resolved,
        manifest: &Value,
    ) -> Result<DynamicObject, CallOutcome> {
        let body = prepare(manifest, work, r.namespace.as_deref());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if work.force_conflicts {
            params = params.force();
        }
        let api = self.api(resolved, r.namespace.as_deref());
        match self
            .call(api.patch(&r.name, &params, &Patch::Apply(&body)))
            .await
        {
            Ok(obj) => Ok(obj),
            Err(CallError::Unreachable(m)) => Err(CallOutcome::Unreachable(m)),
            Err(CallError::Api(s)) => {
                if s.code == 404 {
                    // The resource type may have gone away (CRD deleted): rediscover next time.
                    self.forget(&r.api_version);
                }
                Err(CallOutcome::Failed(apply_error(r, &s)))
            }
        }
    }

    /// Delete (or release, when `orphan`) every object labelled for `work` among the kinds and
    /// namespaces of `refs`, except those in `keep`.
    async fn sweep(
        &self,
        work: &str,
        refs: &[ObjectRef],
        keep: &BTreeSet<ObjectRef>,
        orphan: bool,
        adopted: &BTreeSet<ObjectRef>,
    ) -> Result<Vec<ObjectRef>, ExecError> {
        // (apiVersion, kind, namespace) groups in reverse apply order: what lives in a
        // namespace or is served by a CRD goes before it.
        let groups: BTreeSet<(u8, String, String, Option<String>)> = refs
            .iter()
            .map(|r| {
                let rank = 2 - super::apply_rank(&r.api_version, &r.kind);
                (
                    rank,
                    r.api_version.clone(),
                    r.kind.clone(),
                    r.namespace.clone(),
                )
            })
            .collect();
        let mut touched = Vec::new();
        let selector = format!("{WORK_LABEL}={work}");
        for (_, api_version, kind, namespace) in groups {
            let resolved = match self.resolve(&api_version, &kind).await {
                Ok(r) => r,
                // A kind the cluster no longer serves has no objects left to delete.
                Err(e) if e.kind == super::ExecErrorKind::Invalid => {
                    tracing::info!(work, %api_version, %kind, "kind no longer served; nothing to prune");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let namespace = if resolved.namespaced {
                Some(namespace.unwrap_or_else(|| self.client.default_namespace().to_string()))
            } else {
                None
            };
            let api = self.api(&resolved, namespace.as_deref());
            let listed = match self
                .call(api.list(&ListParams::default().labels(&selector)))
                .await
            {
                Ok(l) => l,
                Err(CallError::Api(s)) if s.code == 404 => continue,
                Err(e) => {
                    return Err(call_failed(
                        &format!("listing {kind} labelled {selector}"),
                        e,
                    ))
                }
            };
            for obj in listed.items {
                let Some(name) = obj.metadata.name.clone() else {
                    continue;
                };
                let r = ObjectRef {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    namespace: obj.metadata.namespace.clone().or_else(|| namespace.clone()),
                    name,
                };
                // Belt and braces: the server filtered by label, but never act on a mismatch.
                if keep.contains(&r) || !labelled_for(&obj, work) {
                    continue;
                }
                let was_adopted =
                    adopted.contains(&r) || self.remembered(work, &r) == Some(Origin::Adopted);
                let policy = obj
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ON_REMOVAL_ANNOTATION))
                    .map(String::as_str);
                let release = orphan
                    || match policy {
                        Some("delete") => false,
                        Some("release") => true,
                        _ => was_adopted,
                    };
                let api = self.api(&resolved, r.namespace.as_deref());
                let outcome = if release {
                    self.release(&api, work, obj).await
                } else {
                    let dp = DeleteParams::background().preconditions(Preconditions {
                        uid: obj.metadata.uid.clone(),
                        resource_version: None,
                    });
                    match self.call(api.delete(&r.name, &dp)).await {
                        Ok(_) => Ok(true),
                        // Gone already, or replaced by a new object (uid precondition): not ours.
                        Err(CallError::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
                        Err(e) => Err(e),
                    }
                };
                match outcome {
                    Ok(true) => {
                        tracing::info!(work, object = %r, orphan, adopted = was_adopted, "{}", if release { "released" } else { "deleted" });
                        touched.push(r);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let verb = if release { "releasing" } else { "deleting" };
                        return Err(call_failed(&format!("{verb} {r}"), e));
                    }
                }
            }
        }
        Ok(touched)
    }
}

/// Whether an object carries this work's ownership label.
fn labelled_for(obj: &DynamicObject, work: &str) -> bool {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(WORK_LABEL))
        .is_some_and(|w| w == work)
}

/// A per-object failure, or a sign that the cluster cannot be reached at all.
enum CallOutcome {
    Failed(ExecError),
    Unreachable(String),
}

fn call_failed(what: &str, e: CallError) -> ExecError {
    match e {
        CallError::Unreachable(m) => ExecError::transient(m),
        CallError::Api(s) => ExecError::transient(format!("{what}: {}", status_text(&s))),
    }
}

/// How long an apply pass waits for a CRD it just applied to be served.
const CRD_ESTABLISH_WAIT: Duration = Duration::from_secs(20);

/// Whether `work` holds the CRD that serves `kind` in `api_version`.
fn crd_in(work: &DesiredWork, api_version: &str, kind: &str) -> bool {
    let Some((group, version)) = api_version.split_once('/') else {
        return false;
    };
    work.manifests.iter().any(|m| {
        let s = |p: &str| m.pointer(p).and_then(Value::as_str);
        super::apply_rank(
            s("/apiVersion").unwrap_or_default(),
            s("/kind").unwrap_or_default(),
        ) == 1
            && s("/spec/group") == Some(group)
            && s("/spec/names/kind") == Some(kind)
            && m.pointer("/spec/versions")
                .and_then(Value::as_array)
                .is_some_and(|vs| {
                    vs.iter()
                        .any(|v| v.get("name").and_then(Value::as_str) == Some(version))
                })
    })
}

/// The manifest as applied: our label and annotation added, server-populated metadata
/// dropped (they would act as preconditions), the namespace made explicit.
fn prepare(manifest: &Value, work: &DesiredWork, namespace: Option<&str>) -> Value {
    let mut body = manifest.clone();
    let Some(obj) = body.as_object_mut() else {
        return body;
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        for server_owned in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
        ] {
            meta.remove(server_owned);
        }
        match namespace {
            Some(ns) => {
                meta.insert("namespace".into(), Value::String(ns.to_string()));
            }
            None => {
                meta.remove("namespace");
            }
        }
        for (field, key, value) in [
            ("labels", WORK_LABEL, work.name.clone()),
            (
                "annotations",
                GENERATION_ANNOTATION,
                work.generation.to_string(),
            ),
        ] {
            let map = meta
                .entry(field)
                .or_insert_with(|| Value::Object(Map::new()));
            if !map.is_object() {
                *map = Value::Object(Map::new());
            }
            if let Some(map) = map.as_object_mut() {
                map.insert(key.to_string(), Value::String(value));
            }
        }
    }
    body
}

fn status_text(s: &Status) -> String {
    match (s.message.is_empty(), s.reason.is_empty()) {
        (false, _) => format!("{} (HTTP {})", s.message, s.code),
        (true, false) => format!("{} (HTTP {})", s.reason, s.code),
        (true, true) => format!("HTTP {}", s.code),
    }
}

/// Give an API error a kind the reconciler and the user can act on.
fn apply_error(r: &ObjectRef, s: &Status) -> ExecError {
    match s.code {
        409 => {
            // The Status message names the managers and fields, e.g.
            // `Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas`.
            let mut message = format!("applying {r}: {}", s.message);
            let causes: Vec<String> = s
                .details
                .as_ref()
                .map(|d| {
                    d.causes
                        .iter()
                        .filter(|c| !c.field.is_empty() && !s.message.contains(&c.field))
                        .map(|c| format!("{} ({})", c.field, c.message))
                        .collect()
                })
                .unwrap_or_default();
            if !causes.is_empty() {
                message.push_str(&format!(" [{}]", causes.join(", ")));
            }
            message.push_str(
                "; another field manager owns these fields: set `forceConflicts: true` in the \
                 work's spec to take them over",
            );
            ExecError::conflict(message)
        }
        400 | 404 | 415 | 422 => ExecError::invalid(format!("applying {r}: {}", status_text(s))),
        401 | 403 => ExecError::transient(format!(
            "applying {r}: {}; the agent's credentials lack permission (see the RBAC section of \
             docs/kube-executor.md)",
            status_text(s)
        )),
        _ => ExecError::transient(format!("applying {r}: {}", status_text(s))),
    }
}

/// Readiness of a workload object, if its kind has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Will not get ready by waiting (deadline exceeded, job failed).
    pub degraded: bool,
    pub detail: String,
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn has_condition(v: &Value, kind: &str, status: &str, reason: Option<&str>) -> Option<String> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| {
            c.get("type").and_then(Value::as_str) == Some(kind)
                && c.get("status").and_then(Value::as_str) == Some(status)
                && reason.is_none_or(|r| c.get("reason").and_then(Value::as_str) == Some(r))
        })
        .map(|c| {
            c.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        })
}

/// Readiness rules (the same as `kubectl rollout status`), read from an object as the API
/// server returned it. `None` for kinds without a readiness notion.
pub fn readiness(object: &Value) -> Option<Readiness> {
    let api_version = object.get("apiVersion").and_then(Value::as_str)?;
    let kind = object.get("kind").and_then(Value::as_str)?;
    let generation = int(object, "/metadata/generation").unwrap_or(0);
    let observed = int(object, "/status/observedGeneration").unwrap_or(0);
    let caught_up = observed >= generation && object.get("status").is_some();
    let s = |p: &str| int(object, &format!("/status/{p}")).unwrap_or(0);
    let lag = if caught_up {
        String::new()
    } else {
        format!(" (generation {generation} not yet observed)")
    };
    match (api_version, kind) {
        ("apps/v1", "Deployment") => {
            let want = int(object, "/spec/replicas").unwrap_or(1);
            let (total, ready, updated, available) = (
                s("replicas"),
                s("readyReplicas"),
                s("updatedReplicas"),
                s("availableReplicas"),
            );
            let deadline = has_condition(
                object,
                "Progressing",
                "False",
                Some("ProgressDeadlineExceeded"),
            );
            let failure = has_condition(object, "ReplicaFailure", "True", None);
            let ok = caught_up
                && updated >= want
                && total <= updated
                && available >= updated
                && deadline.is_none();
            let mut detail = format!(
                "replicas={want} ready={ready} updated={updated} available={available}{lag}"
            );
            let trouble = deadline.or(failure);
            if let Some(m) = &trouble {
                detail.push_str(&format!(": {m}"));
            }
            Some(Readiness {
                ready: ok,
                degraded: !ok && trouble.is_some(),
                detail,
            })
        }
        ("apps/v1", "StatefulSet") => {
            let want = int(object, "/spec/replicas").unwrap_or(1);
            let (ready, updated, available) = (
                s("readyReplicas"),
                s("updatedReplicas"),
                s("availableReplicas"),
            );
            let rolling = object
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                .is_none_or(|t| t == "RollingUpdate");
            let partition =
                int(object, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
            let updated_ok = !rolling || updated >= want - partition.clamp(0, want);
            let ok = caught_up && ready >= want && updated_ok;
            Some(Readiness {
                ready: ok,
                degraded: false,
                detail: format!(
                    "replicas={want} ready={ready} updated={updated} available={available}{lag}"
                ),
            })
        }
        ("apps/v1", "DaemonSet") => {
            let want = s("desiredNumberScheduled");
            let (ready, updated, available) = (
                s("numberReady"),
                s("updatedNumberScheduled"),
                s("numberAvailable"),
            );
            let ok = caught_up && updated >= want && available >= want;
            Some(Readiness {
                ready: ok,
                degraded: false,
                detail: format!(
                    "replicas={want} ready={ready} updated={updated} available={available}{lag}"
                ),
            })
        }
        ("batch/v1", "Job") => {
            let complete = has_condition(object, "Complete", "True", None).is_some();
            let failed = has_condition(object, "Failed", "True", None);
            let mut detail = format!(
                "active={} succeeded={} failed={}",
                s("active"),
                s("succeeded"),
                s("failed")
            );
            if complete {
                detail.push_str(" complete");
            }
            if let Some(m) = &failed {
                detail.push_str(&format!(" failed: {m}"));
            }
            Some(Readiness {
                ready: complete,
                degraded: failed.is_some(),
                detail,
            })
        }
        _ => None,
    }
}

/// Work-level conditions from per-object readiness.
fn work_conditions(
    applied: usize,
    resources: &[ResourceStatus],
    degraded: &[String],
) -> Vec<Condition> {
    let not_ready: Vec<&ResourceStatus> = resources
        .iter()
        .filter(|r| r.ready == Some(false))
        .collect();
    let workloads = resources.iter().filter(|r| r.ready.is_some()).count();
    let available = not_ready.is_empty();
    let stalled = !degraded.is_empty();
    vec![
        condition(
            "Applied",
            true,
            "ServerSideApplied",
            format!("{applied} object(s) applied with field manager {FIELD_MANAGER}"),
        ),
        condition(
            "Available",
            available,
            if available { "AllReady" } else { "NotReady" },
            if available {
                format!("{workloads} workload(s) ready")
            } else {
                not_ready
                    .iter()
                    .map(|r| format!("{}: {}", r.object, r.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
        condition(
            "Progressing",
            !available && !stalled,
            match (available, stalled) {
                (true, _) => "Complete",
                (false, false) => "RollingOut",
                (false, true) => "Stalled",
            },
            if available || stalled {
                String::new()
            } else {
                format!(
                    "waiting for {}",
                    not_ready
                        .iter()
                        .map(|r| r.object.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        ),
        condition(
            "Degraded",
            stalled,
            if stalled { "Failing" } else { "AsExpected" },
            degraded.join("; "),
        ),
    ]
}

/// The full causal chain of an error, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl Executor for KubeExecutor {
    async fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        let refs = super::refs_of(work)?;
        let order = super::apply_order(&work.manifests);
        // The previous inventory as real identities (an inventory written by the dir executor
        // has no namespaces), for telling known objects from new ones and for pruning.
        let mut previous_inventory = BTreeSet::new();
        for old in &previous.inventory {
            previous_inventory.insert(match self.resolve(&old.api_version, &old.kind).await {
                Ok(res) => self.effective(old, &res),
                Err(_) => old.clone(),
            });
        }
        let mut origins: Vec<Option<Origin>> = vec![None; refs.len()];

        let mut inventory: Vec<Option<ObjectRef>> = vec![None; refs.len()];
        let mut states: Vec<Option<Readiness>> = vec![None; refs.len()];
        let mut failures: Vec<ExecError> = Vec::new();
        for i in order {
            let resolved = match self
                .resolve_in(work, &refs[i].api_version, &refs[i].kind)
                .await
            {
                Ok(r) => r,
                Err(e) if e.kind == super::ExecErrorKind::Transient => return Err(e),
                Err(e) => {
                    failures.push(ExecError {
                        kind: e.kind,
                        message: format!("manifest {i} ({}): {}", refs[i], e.message),
                    });
                    continue;
                }
            };
            let r = self.effective(&refs[i], &resolved);
            match self
                .origin(&work.name, &r, &resolved, previous, &previous_inventory)
                .await
            {
                Ok(o) => origins[i] = Some(o),
                Err(CallOutcome::Unreachable(m)) => return Err(ExecError::transient(m)),
                Err(CallOutcome::Failed(e)) => {
                    failures.push(e);
                    continue;
                }
            }
            match self
                .apply_one(work, &r, &resolved, &work.manifests[i])
                .await
            {
                Ok(obj) => {
                    let value = serde_json::to_value(&obj).unwrap_or(Value::Null);
                    states[i] = readiness(&value);
                    inventory[i] = Some(r);
                }
                // Every further request would wait for the same dead server.
                Err(CallOutcome::Unreachable(m)) => return Err(ExecError::transient(m)),
                Err(CallOutcome::Failed(e)) => failures.push(e),
            }
        }
        if !failures.is_empty() {
            // Report the one the user can act on first: conflicts, then bad manifests.
            let kind = [
                super::ExecErrorKind::Conflict,
                super::ExecErrorKind::Invalid,
                super::ExecErrorKind::Transient,
            ]
            .into_iter()
            .find(|k| failures.iter().any(|f| &f.kind == k))
            .unwrap_or(super::ExecErrorKind::Transient);
            let total = refs.len();
            let message = if failures.len() == 1 {
                failures.remove(0).message
            } else {
                format!(
                    "{} of {total} objects failed: {}",
                    failures.len(),
                    failures
                        .iter()
                        .map(|f| f.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            // Nothing is pruned until every object applied: the old inventory stays in force.
            return Err(ExecError { kind, message });
        }
        let adopted: BTreeSet<ObjectRef> = inventory
            .iter()
            .zip(&origins)
            .filter(|(_, o)| **o == Some(Origin::Adopted))
            .filter_map(|(r, _)| r.clone())
            .collect();
        let inventory: Vec<ObjectRef> = inventory.into_iter().flatten().collect();

        // Pruning: what the last inventory had and the work no longer has.
        let keep: BTreeSet<ObjectRef> = inventory.iter().cloned().collect();
        let stale: Vec<ObjectRef> = previous_inventory
            .into_iter()
            .filter(|old| !keep.contains(old))
            .collect();
        if !stale.is_empty() {
            self.sweep(&work.name, &stale, &keep, false, &previous.adopted)
                .await?;
        }

        let mut degraded = Vec::new();
        let resources: Vec<ResourceStatus> = inventory
            .iter()
            .zip(states)
            .map(|(r, state)| match state {
                Some(s) => {
                    if s.degraded {
                        degraded.push(format!("{r}: {}", s.detail));
                    }
                    ResourceStatus {
                        object: r.clone(),
                        ready: Some(s.ready),
                        detail: s.detail,
                    }
                }
                None => ResourceStatus {
                    object: r.clone(),
                    ready: None,
                    detail: String::new(),
                },
            })
            .collect();
        Ok(ApplyReport {
            conditions: work_conditions(inventory.len(), &resources, &degraded),
            inventory,
            adopted,
            resources,
            readiness_known: true,
            refused: Vec::new(),
        })
    }

    async fn remove(&self, work: &str, managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        self.sweep(
            work,
            &managed.inventory,
            &BTreeSet::new(),
            orphan,
            &managed.adopted,
        )
        .await?;
        self.origins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(work);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("kube:{}", self.cluster_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, generation: i64, status: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": replicas},
            "status": status,
        })
    }

    #[test]
    fn deployment_readiness() {
        let r = readiness(&deployment(
            3,
            2,
            json!({"observedGeneration": 2, "replicas": 3,
            "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}),
        ))
        .unwrap();
        assert!(!r.ready && !r.degraded);
        assert_eq!(r.detail, "replicas=3 ready=2 updated=3 available=2");

        let r = readiness(&deployment(
            3,
            2,
            json!({"observedGeneration": 2, "replicas": 3,
            "readyReplicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        ))
        .unwrap();
        assert!(r.ready);

        // Old status from before the spec change does not count.
        let r = readiness(&deployment(
            3,
            3,
            json!({"observedGeneration": 2, "replicas": 3,
            "readyReplicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        ))
        .unwrap();
        assert!(!r.ready);
        assert!(
            r.detail.contains("generation 3 not yet observed"),
            "{}",
            r.detail
        );

        // Old replicas still around.
        let r = readiness(&deployment(
            3,
            2,
            json!({"observedGeneration": 2, "replicas": 4,
            "readyReplicas": 4, "updatedReplicas": 3, "availableReplicas": 4}),
        ))
        .unwrap();
        assert!(!r.ready);

        let r = readiness(&deployment(3, 2, json!({"observedGeneration": 2, "replicas": 3,
            "updatedReplicas": 1, "conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-1\" has timed out progressing."}]})))
        .unwrap();
        assert!(!r.ready && r.degraded);
        assert!(r.detail.contains("timed out"), "{}", r.detail);

        // No status at all yet: not ready.
        let r = readiness(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": 1}, "spec": {}}))
        .unwrap();
        assert!(!r.ready);
        assert!(r.detail.starts_with("replicas=1 ready=0"), "{}", r.detail);
    }

    #[test]
    fn statefulset_daemonset_job_readiness() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2}});
        assert!(readiness(&sts).unwrap().ready);
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 2}});
        assert!(!readiness(&sts).unwrap().ready);

        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "numberReady": 3,
                       "updatedNumberScheduled": 3, "numberAvailable": 2}});
        let r = readiness(&ds).unwrap();
        assert!(!r.ready);
        assert_eq!(r.detail, "replicas=3 ready=3 updated=3 available=2");

        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"generation": 1},
            "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}});
        assert!(readiness(&job).unwrap().ready);
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"generation": 1},
            "status": {"failed": 6, "conditions": [{"type": "Failed", "status": "True",
                       "message": "Job has reached the specified backoff limit"}]}});
        let r = readiness(&job).unwrap();
        assert!(!r.ready && r.degraded);

        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert_eq!(readiness(&cm), None);
    }

    #[test]
    fn prepare_adds_ownership_and_drops_server_fields() {
        let work = DesiredWork {
            name: "web".into(),
            generation: 7,
            hash: "h".into(),
            force_conflicts: false,
            manifests: vec![],
            removal: None,
            fence_after_ms: None,
            fenced: false,
        };
        let m = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "resourceVersion": "12", "labels": {"app": "a"}},
            "data": {"k": "v"}});
        let body = prepare(&m, &work, Some("default"));
        assert_eq!(body["metadata"]["labels"][WORK_LABEL], "web");
        assert_eq!(body["metadata"]["labels"]["app"], "a");
        assert_eq!(body["metadata"]["annotations"][GENERATION_ANNOTATION], "7");
        assert_eq!(body["metadata"]["namespace"], "default");
        assert!(body["metadata"].get("resourceVersion").is_none());
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "x", "namespace": "ignored"}});
        assert!(prepare(&ns, &work, None)["metadata"]
            .get("namespace")
            .is_none());
    }

    #[test]
    fn conflict_message_names_manager_and_fix() {
        let status: Status = serde_json::from_value(json!({
            "status": "Failure", "code": 409, "reason": "Conflict",
            "message": "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas",
        }))
        .unwrap();
        let r = ObjectRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        };
        let e = apply_error(&r, &status);
        assert_eq!(e.kind, super::super::ExecErrorKind::Conflict);
        assert!(e.message.contains("kubectl-edit") && e.message.contains(".spec.replicas"));
        assert!(e.message.contains("forceConflicts"));
    }
}
