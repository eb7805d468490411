//! Per-cluster rendering: apply a work's override rules, in order, to the copy one cluster
//! receives. Pure; the content hash covers the result, so two clusters with different
//! overrides get (and report) different hashes.

use serde_json::Value;
use tether_protocol::work::{ImageOverride, OverrideRule, WorkSpec};
use tether_protocol::Labels;

/// Everything that makes one cluster's copy differ from the base bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    /// Indices of the override rules that apply, in order.
    pub rules: Vec<usize>,
    /// This cluster's share of `spec.placement.replicas`.
    pub replicas: Option<u32>,
}

/// Render one cluster's copy: the replica share first, then the override rules (explicit
/// overrides win).
pub fn render_assignment(spec: &WorkSpec, a: &Assignment) -> Result<Vec<Value>, String> {
    let mut manifests = spec.manifests.clone();
    if let Some(n) = a.replicas {
        for m in manifests.iter_mut() {
            set_replicas(m, n);
        }
    }
    apply_rules(spec, &a.rules, manifests)
}

fn set_replicas(m: &mut Value, replicas: u32) {
    let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
    if matches!(kind, "Deployment" | "StatefulSet" | "ReplicaSet") {
        if let Some(spec) = m.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("replicas".into(), Value::from(replicas));
        }
    }
}

/// Indices of the rules that apply to a cluster: clusters with the same set share a render.
pub fn matching_rules(spec: &WorkSpec, cluster: &str, labels: &Labels) -> Vec<usize> {
    spec.overrides
        .iter()
        .enumerate()
        .filter(|(_, r)| r.applies_to(cluster, labels))
        .map(|(i, _)| i)
        .collect()
}

pub fn render(spec: &WorkSpec, rules: &[usize]) -> Result<Vec<Value>, String> {
    apply_rules(spec, rules, spec.manifests.clone())
}

fn apply_rules(
    spec: &WorkSpec,
    rules: &[usize],
    mut manifests: Vec<Value>,
) -> Result<Vec<Value>, String> {
    for &i in rules {
        let Some(rule) = spec.overrides.get(i) else {
            continue;
        };
        for m in manifests.iter_mut() {
            apply_rule(rule, m).map_err(|e| format!("spec.overrides[{i}]: {e}"))?;
        }
    }
    Ok(manifests)
}

fn apply_rule(rule: &OverrideRule, m: &mut Value) -> Result<(), String> {
    let kind = m
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = m
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(img) = &rule.image {
        for pod_spec in pod_specs(m, &kind) {
            for list in ["containers", "initContainers"] {
                if let Some(cs) = pod_spec.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs {
                        if let Some(image) = c.get("image").and_then(Value::as_str) {
                            let new = rewrite_image(image, img);
                            c["image"] = Value::String(new);
                        }
                    }
                }
            }
        }
    }
    if let Some(replicas) = rule.replicas {
        set_replicas(m, replicas);
    }
    for (field, values) in [("labels", &rule.labels), ("annotations", &rule.annotations)] {
        if values.is_empty() {
            continue;
        }
        let meta = m
            .as_object_mut()
            .ok_or("manifest is not an object")?
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        let map = meta
            .as_object_mut()
            .ok_or("metadata is not an object")?
            .entry(field)
            .or_insert_with(|| Value::Object(Default::default()));
        let map = map
            .as_object_mut()
            .ok_or_else(|| format!("metadata.{field} is not an object"))?;
        for (k, v) in values {
            map.insert(k.clone(), Value::String(v.clone()));
        }
    }
    if !rule.env.is_empty() {
        for pod_spec in pod_specs(m, &kind) {
            if let Some(cs) = pod_spec.get_mut("containers").and_then(Value::as_array_mut) {
                for c in cs {
                    set_env(c, &rule.env)?;
                }
            }
        }
    }
    for p in &rule.patches {
        let selected = p.kind.as_deref().is_none_or(|k| k == kind)
            && p.name.as_deref().is_none_or(|n| n == name);
        if !selected {
            continue;
        }
        let patch: json_patch::Patch = serde_json::from_value(p.operations.clone())
            .map_err(|e| format!("invalid RFC 6902 patch: {e}"))?;
        json_patch::patch(m, &patch).map_err(|e| format!("patch on {kind} {name}: {e}"))?;
    }
    Ok(())
}

/// The pod specs inside a workload (or the Pod itself).
fn pod_specs<'a>(m: &'a mut Value, kind: &str) -> Vec<&'a mut Value> {
    let path = match kind {
        "Pod" => "/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template/spec",
        _ => return Vec::new(),
    };
    m.pointer_mut(path).into_iter().collect()
}

fn set_env(container: &mut Value, env: &Labels) -> Result<(), String> {
    let obj = container
        .as_object_mut()
        .ok_or("container is not an object")?;
    let list = obj
        .entry("env")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("container env is not a list")?;
    for (k, v) in env {
        list.retain(|e| e.get("name").and_then(Value::as_str) != Some(k.as_str()));
        list.push(serde_json::json!({"name": k, "value": v}));
    }
    Ok(())
}

/// Split `[registry/]repository[:tag][@digest]` the way container runtimes do: the first
/// component is a registry if it has a '.' or ':' or is `localhost`.
fn split_image(image: &str) -> (Option<&str>, &str, Option<&str>, Option<&str>) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let (registry, path) = match rest.split_once('/') {
        Some((first, tail))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), tail)
        }
        _ => (None, rest),
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) => (r, Some(t)),
        None => (path, None),
    };
    (registry, repo, tag, digest)
}

pub fn rewrite_image(image: &str, o: &ImageOverride) -> String {
    let (registry, repo, tag, digest) = split_image(image);
    if o.match_repository.as_deref().is_some_and(|m| m != repo) {
        return image.to_string();
    }
    let registry = o.registry.as_deref().or(registry);
    let repo = o.repository.as_deref().unwrap_or(repo);
    // A new tag replaces a pinned digest: the operator asked for that tag explicitly.
    let (tag, digest) = match &o.tag {
        Some(t) => (Some(t.as_str()), None),
        None => (tag, digest),
    };
    let mut out = String::new();
    if let Some(r) = registry {
        out.push_str(r);
        out.push('/');
    }
    out.push_str(repo);
    if let Some(t) = tag {
        out.push(':');
        out.push_str(t);
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_are_rewritten_like_a_runtime_parses_them() {
        let mirror = ImageOverride {
            registry: Some("mirror.eu.example:5000".into()),
            ..Default::default()
        };
        assert_eq!(
            rewrite_image("nginx:1.27", &mirror),
            "mirror.eu.example:5000/nginx:1.27"
        );
        assert_eq!(
            rewrite_image("ghcr.io/acme/app:v1", &mirror),
            "mirror.eu.example:5000/acme/app:v1"
        );
        let tag = ImageOverride {
            tag: Some("v2".into()),
            match_repository: Some("acme/app".into()),
            ..Default::default()
        };
        assert_eq!(
            rewrite_image("ghcr.io/acme/app@sha256:ab", &tag),
            "ghcr.io/acme/app:v2"
        );
        assert_eq!(rewrite_image("nginx", &tag), "nginx");
    }

    #[test]
    fn rules_apply_in_order_to_the_matching_cluster_only() {
        let doc: WorkSpec = serde_json::from_value(json!({
            "targets": {"selector": {}},
            "manifests": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}],
            "overrides": [
                {"clusterSelector": {"matchLabels": {"region": "eu"}}, "image": {"registry": "mirror.eu"}, "replicas": 1,
                 "env": {"REGION": "eu"}, "labels": {"tier": "edge"}},
                {"clusters": ["b"], "patches": [{"kind": "Deployment", "operations": [{"op": "replace", "path": "/spec/replicas", "value": 5}]}]}
            ]
        }))
        .unwrap();
        let eu: Labels = [("region".to_string(), "eu".to_string())].into();
        let rules = matching_rules(&doc, "b", &eu);
        assert_eq!(rules, vec![0, 1]);
        let out = render(&doc, &rules).unwrap();
        assert_eq!(out[0]["spec"]["replicas"], 5, "later rules win");
        assert_eq!(
            out[0]["spec"]["template"]["spec"]["containers"][0]["image"],
            "mirror.eu/nginx:1.27"
        );
        assert_eq!(
            out[0]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
            "eu"
        );
        assert_eq!(out[0]["metadata"]["labels"]["tier"], "edge");
        assert!(matching_rules(&doc, "c", &Labels::new()).is_empty());
        assert_eq!(render(&doc, &[]).unwrap(), doc.manifests);
    }

    #[test]
    fn a_patch_that_does_not_apply_is_an_error() {
        let doc: WorkSpec = serde_json::from_value(json!({
            "targets": {"selector": {}},
            "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}],
            "overrides": [{"clusters": ["a"], "patches": [{"operations": [{"op": "remove", "path": "/data/missing"}]}]}]
        }))
        .unwrap();
        assert!(render(&doc, &[0]).unwrap_err().contains("overrides[0]"));
    }
}
