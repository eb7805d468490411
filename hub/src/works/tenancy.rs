//! What an operator's scope allows of a work's manifests: the namespaces it may target.
//! (Which clusters it may reach is the placement's side: see `admin/routes/works.rs` at apply
//! and `decide` at every decision.)

use serde_json::Value;
use tether_protocol::work::WorkSpec;
use tether_store::hub::AdminScope;

/// One line per manifest the scope does not allow; empty when it allows them all.
pub fn manifest_violations(spec: &WorkSpec, scope: &AdminScope) -> Vec<String> {
    if scope.namespaces.is_empty() {
        return Vec::new();
    }
    let allowed = |ns: &str| scope.namespaces.iter().any(|n| n == ns);
    let mut out = Vec::new();
    for (i, m) in spec.manifests.iter().enumerate() {
        let kind = m.get("kind").and_then(Value::as_str).unwrap_or("?");
        let meta = m.get("metadata");
        let name = meta
            .and_then(|v| v.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let namespace = meta
            .and_then(|v| v.get("namespace"))
            .and_then(Value::as_str);
        let ok = match (kind, namespace) {
            ("Namespace", _) => allowed(name),
            (_, Some(ns)) => allowed(ns),
            (_, None) => false,
        };
        if !ok {
            let target = match (kind, namespace) {
                ("Namespace", _) => format!("namespace {name}"),
                (_, Some(ns)) => format!("namespace {ns}"),
                (_, None) => "no namespace (cluster-scoped, or the cluster's default)".into(),
            };
            out.push(format!(
                "manifests[{i}] {kind} {name} targets {target}, outside the operator's namespaces [{}]",
                scope.namespaces.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces_outside_the_scope_and_namespace_less_objects_are_named() {
        let spec: WorkSpec = serde_json::from_value(json!({"manifests": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "apps"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "kube-system"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "root"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-public"}}
        ]}))
        .unwrap();
        let scoped = AdminScope {
            clusters: Default::default(),
            namespaces: vec!["apps".into()],
        };
        let v = manifest_violations(&spec, &scoped);
        assert_eq!(v.len(), 3, "{v:#?}");
        assert!(
            v[0].starts_with("manifests[2] Secret s targets namespace kube-system"),
            "{}",
            v[0]
        );
        assert!(
            v[1].contains("ClusterRoleBinding root targets no namespace"),
            "{}",
            v[1]
        );
        assert!(v[2].contains("Namespace kube-public"), "{}", v[2]);
        assert!(manifest_violations(&spec, &AdminScope::default()).is_empty());
    }
}
