//! `tetherctl diff`: what an apply would change in a work's manifests, as kubectl diff shows
//! it: one file per object under `live/` (what the hub holds) and `merged/` (what the input
//! makes of it), compared with `diff -u -N -r` or `$TETHER_EXTERNAL_DIFF`.

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tether_hub::AdminClient;
use tether_protocol::work::WorkDocument;

/// Whether any work would change. The directories are removed afterwards. With `cluster`,
/// both sides are that cluster's copy (overrides applied); without, the works' own manifests.
/// The input side is rendered by the hub, so a git source is fetched as an apply would.
pub(crate) async fn diff(
    client: &AdminClient,
    docs: &[WorkDocument],
    cluster: Option<&str>,
) -> anyhow::Result<bool> {
    let root = scratch_dir()?;
    let result = async {
        for doc in docs {
            let name = &doc.metadata.name;
            let live = match cluster {
                Some(c) => client.rendered(name, c).await,
                None => client.work(name).await.map(|d| {
                    if d.summary.deleted {
                        Vec::new()
                    } else {
                        d.document.spec.manifests
                    }
                }),
            };
            // A work that does not exist, or is not placed on the cluster, holds nothing.
            let live = match live {
                Ok(m) => m,
                Err(e) if AdminClient::is_not_found(&e) => Vec::new(),
                Err(e) => return Err(e),
            };
            let merged = client.render_input(doc, cluster).await?;
            write_objects(&root.join("live").join(name), &live)?;
            write_objects(&root.join("merged").join(name), &merged)?;
        }
        run_diff(&root)
    }
    .await;
    if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("tetherctl: removing {}: {e}", root.display());
    }
    result
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("tetherctl-diff-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for sub in ["live", "merged"] {
        std::fs::create_dir(dir.join(sub))?;
    }
    Ok(dir)
}

/// `apps_v1.Deployment.web.frontend.yaml`: a name that sorts by kind and says what it holds.
pub(crate) fn file_name(m: &Value) -> String {
    let part = |v: &Value| {
        v.as_str()
            .unwrap_or("-")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!(
        "{}.{}.{}.{}.yaml",
        part(&m["apiVersion"]),
        part(&m["kind"]),
        part(&m["metadata"]["namespace"]),
        part(&m["metadata"]["name"])
    )
}

fn write_objects(dir: &Path, manifests: &[Value]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for m in manifests {
        let body = serde_yaml_ng::to_string(m)?;
        std::fs::write(dir.join(file_name(m)), body)?;
    }
    Ok(())
}

fn run_diff(root: &Path) -> anyhow::Result<bool> {
    let external = std::env::var("TETHER_EXTERNAL_DIFF").ok();
    let mut words: Vec<String> = match &external {
        Some(cmd) => cmd.split_whitespace().map(String::from).collect(),
        None => vec!["diff".into(), "-u".into(), "-N".into(), "-r".into()],
    };
    if words.is_empty() {
        bail!("TETHER_EXTERNAL_DIFF is empty");
    }
    let program = words.remove(0);
    let status = std::process::Command::new(&program)
        .args(&words)
        .arg("live")
        .arg("merged")
        .current_dir(root)
        .status()
        .with_context(|| format!("running {program} (set TETHER_EXTERNAL_DIFF to another tool)"))?;
    match status.code() {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        _ => bail!("{program} failed ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_names_say_what_they_hold_and_stay_in_their_folder() {
        let m = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"}});
        assert_eq!(file_name(&m), "apps_v1.Deployment.shop.web.yaml");
        let hostile = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "../../etc/passwd"}});
        assert!(
            !file_name(&hostile).contains('/'),
            "{}",
            file_name(&hostile)
        );
    }
}
