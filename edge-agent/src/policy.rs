//! The edge's consent policy: what this cluster lets the hub create, change or delete.
//!
//! The cluster's owner sets it locally (`tether-agent run --policy FILE`); nothing the hub
//! sends can change it, so a stolen operator credential or a compromised hub cannot take over
//! a cluster that did not consent. Without a file a safe default holds: no bindings to
//! `cluster-admin` or to anonymous users, no roles granting everything, no admission
//! webhooks, nothing in `kube-system`, no privileged or host-level pods.
//!
//! A refused manifest is neither applied nor pruned: it is reported in the work's status
//! (phase `Failed`, condition `EdgePolicy`), and the rest of the work is applied. The checks
//! are pure functions of a manifest; [`Enforcing`] puts them in front of any executor.

use crate::executor::{ApplyReport, ExecError, Executor, Managed};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use tether_protocol::work::ObjectRef;
use tether_store::agent::DesiredWork;

/// Condition kind of a work whose manifests the policy refused.
pub const EDGE_POLICY: &str = "EdgePolicy";
/// A policy file larger than this is not a policy.
const MAX_POLICY_FILE: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Namespaces objects may live in (`*` wildcards); empty means any not denied.
    #[serde(default)]
    pub allow_namespaces: Vec<String>,
    #[serde(default = "default_deny_namespaces")]
    pub deny_namespaces: Vec<String>,
    /// `group/Kind` patterns never accepted (`core` is the core group), e.g.
    /// `rbac.authorization.k8s.io/*`.
    #[serde(default = "default_deny_kinds")]
    pub deny_kinds: Vec<String>,
    /// Cluster-scoped objects (no namespace) allowed, as `group/Kind` patterns; absent means
    /// any not denied.
    #[serde(default)]
    pub allow_cluster_scoped: Option<Vec<String>>,
    /// Bindings to `cluster-admin` or to anonymous users, and roles granting every verb on
    /// every resource.
    #[serde(default)]
    pub allow_cluster_admin: bool,
    /// Privileged containers, hostPath volumes, host network/PID/IPC.
    #[serde(default)]
    pub allow_host_access: bool,
}

fn default_deny_namespaces() -> Vec<String> {
    vec!["kube-system".into()]
}

fn default_deny_kinds() -> Vec<String> {
    vec![
        "admissionregistration.k8s.io/MutatingWebhookConfiguration".into(),
        "admissionregistration.k8s.io/ValidatingWebhookConfiguration".into(),
    ]
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_namespaces: Vec::new(),
            deny_namespaces: default_deny_namespaces(),
            deny_kinds: default_deny_kinds(),
            allow_cluster_scoped: None,
            allow_cluster_admin: false,
            allow_host_access: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the edge policy {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("the edge policy {path} is not valid: {detail}")]
    Invalid { path: String, detail: String },
}

impl Policy {
    /// Read a policy file (YAML or JSON); every field is optional and defaults to the safe one.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        use std::io::Read;
        let p = path.display().to_string();
        let read = |detail: String| PolicyError::Read {
            path: p.clone(),
            detail,
        };
        let mut body = String::new();
        std::fs::File::open(path)
            .map_err(|e| read(e.to_string()))?
            .take(MAX_POLICY_FILE + 1)
            .read_to_string(&mut body)
            .map_err(|e| read(e.to_string()))?;
        if body.len() as u64 > MAX_POLICY_FILE {
            return Err(read(format!("larger than {MAX_POLICY_FILE} bytes")));
        }
        if body.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(&body).map_err(|e| PolicyError::Invalid {
            path: p,
            detail: e.to_string(),
        })
    }

    /// Why this manifest is refused, or `None` when the hub may manage it.
    pub fn refusal(&self, m: &Value) -> Option<String> {
        let api_version = m["apiVersion"].as_str().unwrap_or_default();
        let kind = m["kind"].as_str().unwrap_or_default();
        let group = match api_version.rsplit_once('/') {
            Some((g, _)) => g,
            None => "core",
        };
        let gk = format!("{group}/{kind}");
        if self.deny_kinds.iter().any(|p| matches(p, &gk)) {
            return Some(format!("kind {gk} is denied"));
        }
        let namespace = m["metadata"]["namespace"].as_str();
        let ns_rule = |ns: &str| {
            if self.deny_namespaces.iter().any(|p| matches(p, ns)) {
                Some(format!("namespace {ns} is denied"))
            } else if !self.allow_namespaces.is_empty()
                && !self.allow_namespaces.iter().any(|p| matches(p, ns))
            {
                Some(format!(
                    "namespace {ns} is not among the allowed namespaces"
                ))
            } else {
                None
            }
        };
        match namespace {
            Some(ns) => {
                if let Some(why) = ns_rule(ns) {
                    return Some(why);
                }
            }
            None => {
                if gk == "core/Namespace" {
                    if let Some(why) = ns_rule(m["metadata"]["name"].as_str().unwrap_or_default()) {
                        return Some(why);
                    }
                }
                if let Some(allowed) = &self.allow_cluster_scoped {
                    if gk != "core/Namespace" && !allowed.iter().any(|p| matches(p, &gk)) {
                        return Some(format!("cluster-scoped kind {gk} is not allowed"));
                    }
                }
            }
        }
        if !self.allow_cluster_admin {
            if let Some(why) = grants_everything(group, kind, m) {
                return Some(why);
            }
        }
        if !self.allow_host_access {
            if let Some(why) = host_access(kind, m) {
                return Some(why);
            }
        }
        None
    }
}

/// `*` matches any run of characters; everything else literally.
fn matches(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

const ANONYMOUS: [&str; 2] = ["system:unauthenticated", "system:anonymous"];

fn grants_everything(group: &str, kind: &str, m: &Value) -> Option<String> {
    if group != "rbac.authorization.k8s.io" {
        return None;
    }
    match kind {
        "ClusterRoleBinding" | "RoleBinding" => {
            if m["roleRef"]["name"].as_str() == Some("cluster-admin") {
                return Some("binds cluster-admin".into());
            }
            let subjects = m["subjects"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            subjects
                .iter()
                .filter_map(|s| s["name"].as_str())
                .find(|n| ANONYMOUS.contains(n))
                .map(|n| format!("grants a role to {n}"))
        }
        "ClusterRole" | "Role" => {
            let rules = m["rules"].as_array().map(Vec::as_slice).unwrap_or_default();
            let has_star = |r: &Value, f: &str| {
                r[f].as_array()
                    .is_some_and(|v| v.iter().any(|x| x.as_str() == Some("*")))
            };
            rules
                .iter()
                .any(|r| has_star(r, "verbs") && has_star(r, "resources"))
                .then(|| "grants every verb on every resource".into())
        }
        _ => None,
    }
}

/// The pod spec inside a workload manifest, if it is one.
fn pod_spec<'a>(kind: &str, m: &'a Value) -> Option<&'a Value> {
    match kind {
        "Pod" => Some(&m["spec"]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&m["spec"]["template"]["spec"]),
        "CronJob" => Some(&m["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn host_access(kind: &str, m: &Value) -> Option<String> {
    let spec = pod_spec(kind, m)?;
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field].as_bool() == Some(true) {
            return Some(format!("uses {field}"));
        }
    }
    let volumes = spec["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(v) = volumes.iter().find(|v| v.get("hostPath").is_some()) {
        return Some(format!(
            "mounts hostPath volume {}",
            v["name"].as_str().unwrap_or("?")
        ));
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let containers = spec[list].as_array().map(Vec::as_slice).unwrap_or_default();
        if let Some(c) = containers
            .iter()
            .find(|c| c["securityContext"]["privileged"].as_bool() == Some(true))
        {
            return Some(format!(
                "runs privileged container {}",
                c["name"].as_str().unwrap_or("?")
            ));
        }
    }
    None
}

/// An executor that applies only what the policy allows and reports the rest.
pub struct Enforcing<E> {
    inner: E,
    policy: Policy,
    /// Per work, the content whose refusals were last logged: every pass re-applies, and the
    /// log should say it once.
    logged: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl<E> Enforcing<E> {
    pub fn new(inner: E, policy: Policy) -> Self {
        Self {
            inner,
            policy,
            logged: Default::default(),
        }
    }
}

impl<E: Executor> Executor for Enforcing<E> {
    async fn apply(
        &self,
        work: &DesiredWork,
        previous: &Managed,
    ) -> Result<ApplyReport, ExecError> {
        // Checked first so that the common case (nothing refused) copies nothing: a work
        // can hold megabytes of manifests.
        let verdicts: Vec<Option<String>> = work
            .manifests
            .iter()
            .map(|m| self.policy.refusal(m))
            .collect();
        if verdicts.iter().all(Option::is_none) {
            return self.inner.apply(work, previous).await;
        }
        let mut allowed = DesiredWork {
            name: work.name.clone(),
            generation: work.generation,
            hash: work.hash.clone(),
            force_conflicts: work.force_conflicts,
            manifests: Vec::new(),
            removal: work.removal,
            fence_after_ms: work.fence_after_ms,
            fenced: work.fenced,
        };
        let mut refused = Vec::new();
        let mut refused_refs = Vec::new();
        for (m, verdict) in work.manifests.iter().zip(verdicts) {
            match verdict {
                None => allowed.manifests.push(m.clone()),
                Some(why) => {
                    let r = ObjectRef::of(m).ok();
                    let who = r
                        .as_ref()
                        .map_or_else(|| "a manifest".to_string(), ToString::to_string);
                    refused.push(format!("{who}: {why}"));
                    refused_refs.extend(r);
                }
            }
        }
        let first = self
            .logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(work.name.clone(), work.hash.clone())
            .as_deref()
            != Some(work.hash.as_str());
        if first {
            tracing::warn!(work = %work.name, generation = work.generation, refused = ?refused, "the edge policy refused manifests; applying the rest");
        }
        // A refused object is left alone: not applied, and not pruned either (it leaves the
        // inventory, so Tether stops managing it).
        let mut prev = previous.clone();
        prev.inventory.retain(|r| !refused_refs.contains(r));
        prev.adopted.retain(|r| !refused_refs.contains(r));
        let mut report = self.inner.apply(&allowed, &prev).await?;
        report.refused = refused;
        Ok(report)
    }

    async fn remove(&self, work: &str, managed: &Managed, orphan: bool) -> Result<(), ExecError> {
        self.inner.remove(work, managed, orphan).await
    }

    fn describe(&self) -> String {
        format!("{} (edge policy enforced)", self.inner.describe())
    }

    async fn cluster_facts(&self) -> (Option<String>, Option<u32>) {
        self.inner.cluster_facts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(p: &Policy, m: Value) -> Option<String> {
        p.refusal(&m)
    }

    #[test]
    fn the_default_refuses_what_takes_a_cluster_over() {
        let p = Policy::default();
        let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "x"}, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "Group", "name": "system:unauthenticated"}]});
        assert_eq!(refused(&p, crb).as_deref(), Some("binds cluster-admin"));
        let anon = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "x", "namespace": "app"}, "roleRef": {"kind": "Role", "name": "reader"},
            "subjects": [{"kind": "User", "name": "system:anonymous"}]});
        assert_eq!(
            refused(&p, anon).as_deref(),
            Some("grants a role to system:anonymous")
        );
        let star = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "x"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
        assert!(refused(&p, star).is_some());
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "x", "namespace": "kube-system"}});
        assert_eq!(
            refused(&p, secret).as_deref(),
            Some("namespace kube-system is denied")
        );
        let hook = json!({"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration", "metadata": {"name": "x"}});
        assert!(refused(&p, hook).unwrap().contains("is denied"));
        let pod = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "x", "namespace": "app"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}],
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}}});
        assert_eq!(
            refused(&p, pod).as_deref(),
            Some("mounts hostPath volume root")
        );
        let privileged = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "x", "namespace": "app"},
            "spec": {"containers": [{"name": "c", "securityContext": {"privileged": true}}]}});
        assert_eq!(
            refused(&p, privileged).as_deref(),
            Some("runs privileged container c")
        );

        // What ordinary works carry passes.
        for ok in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "app"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "app"},
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
        ] {
            assert_eq!(refused(&p, ok.clone()), None, "{ok}");
        }
    }

    #[test]
    fn an_owner_can_narrow_or_widen_it() {
        let p: Policy = serde_yaml_ng::from_str(
            "allowNamespaces: [shop-*]\nallowClusterScoped: [core/Namespace, storage.k8s.io/*]\ndenyKinds: [rbac.authorization.k8s.io/*]\n",
        )
        .unwrap();
        let cm = |ns: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": ns}});
        assert_eq!(refused(&p, cm("shop-eu")), None);
        assert!(refused(&p, cm("default"))
            .unwrap()
            .contains("not among the allowed"));
        assert!(
            refused(&p, cm("kube-system")).unwrap().contains("denied"),
            "the default deny stays"
        );
        let sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "s"}});
        assert_eq!(refused(&p, sc), None);
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"}});
        assert!(refused(&p, crd).unwrap().contains("cluster-scoped kind"));
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "r", "namespace": "shop-eu"}, "rules": []});
        assert!(refused(&p, role)
            .unwrap()
            .contains("kind rbac.authorization.k8s.io/Role is denied"));

        let open: Policy = serde_yaml_ng::from_str(
            "denyNamespaces: []\ndenyKinds: []\nallowClusterAdmin: true\nallowHostAccess: true\n",
        )
        .unwrap();
        let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "x"}, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}});
        assert_eq!(refused(&open, crb), None);
        assert!(
            serde_yaml_ng::from_str::<Policy>("allowEverything: true").is_err(),
            "typos are errors"
        );
    }

    #[test]
    fn patterns() {
        assert!(matches("*", "anything"));
        assert!(matches("shop-*", "shop-eu"));
        assert!(!matches("shop-*", "shopeu"));
        assert!(matches("*/Secret", "core/Secret"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("kube-system", "kube-system"));
        assert!(!matches("kube-system", "kube-systemx"));
    }
}
