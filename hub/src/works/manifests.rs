//! What `tetherctl apply -f` reads: Work documents as before, or the plain Kubernetes manifests
//! kubectl users already have (files, directories, `helm template` on stdin), wrapped into one
//! Work. Pure apart from reading the inputs, so every rule is unit-tested here.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tether_protocol::work::{
    validate, LabelSelector, ObjectRef, Targets, WorkDocument, WorkMetadata, WorkSpec,
    MAX_ANNOTATION_VALUE, SOURCE_ANNOTATION, WORK_API_VERSION, WORK_KIND,
};
use tether_protocol::Labels;

/// Files a directory contributes; anything else in it (READMEs, charts' templates) is ignored.
pub(crate) const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    // Not a `source`: the cause is already in the message, and a chain would print it twice.
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("`-f -` given more than once: stdin can be read only once")]
    StdinTwice,
    #[error("no -f given: pass a file, a directory or `-` for stdin")]
    NoInput,
    #[error("-k {path}: neither kubectl (which has kustomize built in) nor kustomize is on PATH; install one (Debian: apt install kubernetes-client), or run `kustomize build {path} | tetherctl apply -f - --name NAME ...`")]
    NoKustomize { path: String },
    #[error("-k {path}: {message}")]
    Kustomize { path: String, message: String },
    #[error("{path}: no *.yaml, *.yml or *.json files in this directory")]
    EmptyDir { path: String },
    #[error("{file}, document {doc}: {message}")]
    Document {
        file: String,
        doc: usize,
        message: String,
    },
    #[error("no documents found in {0}")]
    Nothing(String),
    #[error("{work_file}, document {work_doc} is a Work but {plain_file}, document {plain_doc} is a plain Kubernetes manifest; apply Works and plain manifests separately (plain ones are wrapped with --name)")]
    Mixed {
        work_file: String,
        work_doc: usize,
        plain_file: String,
        plain_doc: usize,
    },
    #[error("--name, --clusters and --selector are for plain manifests, but the input holds Work documents, which name and target themselves")]
    FlagsWithWorks,
    #[error(
        "plain Kubernetes manifests need --name NAME: they are wrapped into one Work of that name"
    )]
    NoName,
    #[error("work {name:?} needs a target: --clusters a,b and/or --selector k=v (matchLabels)")]
    NoTargets { name: String },
    #[error("{first} and {second} are the same object ({object})")]
    Duplicate {
        first: String,
        second: String,
        object: String,
    },
    #[error("work {name:?}: {}", errors.join("; "))]
    Invalid { name: String, errors: Vec<String> },
}

/// One input as read: `label` is the path as the user wrote it (or `stdin`), used in errors and
/// in the source annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub label: String,
    pub text: String,
    pub from: From,
}

/// Where an input's text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    File,
    Stdin,
    /// `-k DIR`: the output of kustomize over that directory.
    Kustomize,
}

/// Read every `-f` argument: `-` is stdin, a directory contributes its `*.yaml`, `*.yml` and
/// `*.json` files at any depth in sorted order, anything else is read as a file.
pub fn read_inputs(args: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<Input>, ManifestError> {
    if args.is_empty() {
        return Err(ManifestError::NoInput);
    }
    let mut inputs = Vec::new();
    let mut stdin_read = false;
    for arg in args {
        if arg.as_os_str() == "-" {
            if stdin_read {
                return Err(ManifestError::StdinTwice);
            }
            stdin_read = true;
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|error| ManifestError::Read {
                    path: "stdin".into(),
                    error,
                })?;
            inputs.push(Input {
                label: "stdin".into(),
                text,
                from: From::Stdin,
            });
            continue;
        }
        let meta = std::fs::metadata(arg).map_err(|e| read_error(arg, e))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            collect(arg, &mut files)?;
            if files.is_empty() {
                return Err(ManifestError::EmptyDir {
                    path: arg.display().to_string(),
                });
            }
            // Path order is component-wise, i.e. a sorted depth-first walk: `a/z.yaml` comes
            // before `b.yaml`, whatever the directory listing order was.
            files.sort();
            files
        } else {
            vec![arg.clone()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| read_error(&f, e))?;
            inputs.push(Input {
                label: f.display().to_string(),
                text,
                from: From::File,
            });
        }
    }
    Ok(inputs)
}

/// Longest a kustomize run may take (remote bases are fetched by kustomize itself).
const KUSTOMIZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Most output a kustomize run may produce; a work is bounded far below this anyway.
const KUSTOMIZE_MAX_OUTPUT: u64 = 64 << 20;

/// `-k DIR`: what `kubectl kustomize DIR` renders, or `kustomize build DIR` when there is no
/// kubectl. Bounded in time and size; kustomize's own error is passed on.
pub fn kustomize(dir: &Path) -> Result<Input, ManifestError> {
    kustomize_with(dir, &[("kubectl", "kustomize"), ("kustomize", "build")])
}

/// [`kustomize`] with the (binary, subcommand) pairs to try, in order.
fn kustomize_with(dir: &Path, tools: &[(&str, &str)]) -> Result<Input, ManifestError> {
    use std::process::{Command, Stdio};
    let path = dir.display().to_string();
    let fail = |message: String| ManifestError::Kustomize {
        path: path.clone(),
        message,
    };
    if !dir.is_dir() {
        return Err(fail(
            "not a directory (a kustomization directory is expected)".into(),
        ));
    }
    for &(bin, sub) in tools {
        let child = Command::new(bin)
            .arg(sub)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(format!("starting {bin}: {e}"))),
        };
        // Both pipes are drained while waiting, or a large output would block the child.
        let drain = |pipe: Option<Box<dyn Read + Send>>, cap: u64| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(cap + 1).read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            KUSTOMIZE_MAX_OUTPUT,
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            64 << 10,
        );
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > KUSTOMIZE_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!(
                        "{bin} {sub} did not finish within {}s",
                        KUSTOMIZE_TIMEOUT.as_secs()
                    )));
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => return Err(fail(format!("waiting for {bin}: {e}"))),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            let why = String::from_utf8_lossy(&stderr);
            return Err(fail(format!(
                "{bin} {sub} failed ({status}): {}",
                why.trim()
            )));
        }
        if stdout.len() as u64 > KUSTOMIZE_MAX_OUTPUT {
            return Err(fail(format!(
                "{bin} {sub} rendered more than {} MiB",
                KUSTOMIZE_MAX_OUTPUT >> 20
            )));
        }
        let text = String::from_utf8(stdout)
            .map_err(|e| fail(format!("{bin} {sub} wrote invalid UTF-8: {e}")))?;
        return Ok(Input {
            label: path.clone(),
            text,
            from: From::Kustomize,
        });
    }
    Err(ManifestError::NoKustomize { path })
}

fn read_error(path: &Path, error: std::io::Error) -> ManifestError {
    ManifestError::Read {
        path: path.display().to_string(),
        error,
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let entries = std::fs::read_dir(dir).map_err(|e| read_error(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| read_error(dir, e))?.path();
        // symlink_metadata: a symlinked directory is not followed, so a link loop cannot make
        // the walk endless; symlinked files are read like files.
        let meta = std::fs::symlink_metadata(&path).map_err(|e| read_error(&path, e))?;
        if meta.is_dir() {
            collect(&path, out)?;
            continue;
        }
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        if wanted && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

/// How plain manifests are wrapped: the flags of `tetherctl apply`.
#[derive(Debug, Clone, Default)]
pub struct WrapOptions {
    pub name: Option<String>,
    pub clusters: Vec<String>,
    pub selector: Labels,
}

impl WrapOptions {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.clusters.is_empty() && self.selector.is_empty()
    }
}

/// Where a document came from, for messages: file label and 1-based document number.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    doc: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, document {}", self.file, self.doc)
    }
}

/// Documents as read, split into Work documents and plain Kubernetes objects (`*List` kinds
/// expanded), each with where it came from.
type Split = (
    Vec<(Origin, serde_json::Value)>,
    Vec<(Origin, serde_json::Value)>,
);

fn split(inputs: &[Input]) -> Result<Split, ManifestError> {
    let mut works: Vec<(Origin, serde_json::Value)> = Vec::new();
    let mut plain: Vec<(Origin, serde_json::Value)> = Vec::new();
    for input in inputs {
        for (i, de) in serde_yaml_ng::Deserializer::from_str(&input.text).enumerate() {
            let origin = Origin {
                file: input.label.clone(),
                doc: i + 1,
            };
            let bad = |message: String| ManifestError::Document {
                file: origin.file.clone(),
                doc: origin.doc,
                message,
            };
            let value = serde_yaml_ng::Value::deserialize(de)
                .map_err(|e| bad(format!("not valid YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let value = serde_json::to_value(&value)
                .map_err(|e| bad(format!("not representable as JSON: {e}")))?;
            let (api_version, kind) = identity(&value).map_err(&bad)?;
            if api_version.starts_with("tether.dev/") && kind == WORK_KIND {
                works.push((origin, value));
            } else if kind.ends_with("List") && value.get("items").is_some() {
                let Some(items) = value.get("items").and_then(|v| v.as_array()) else {
                    return Err(bad(format!("{kind}: items must be a list")));
                };
                for (j, item) in items.iter().enumerate() {
                    identity(item).map_err(|m| bad(format!("{kind} items[{j}]: {m}")))?;
                    plain.push((origin.clone(), item.clone()));
                }
            } else {
                plain.push((origin, value));
            }
        }
    }
    Ok((works, plain))
}

fn nothing(inputs: &[Input]) -> ManifestError {
    ManifestError::Nothing(
        inputs
            .iter()
            .map(|i| i.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Turn what was read into the Works to apply: the Work documents themselves, or one Work
/// named `opts.name` holding every plain manifest in input order.
pub fn build_works(
    inputs: &[Input],
    opts: &WrapOptions,
) -> Result<Vec<WorkDocument>, ManifestError> {
    let (works, plain) = split(inputs)?;
    match (works.first(), plain.first()) {
        (Some((w, _)), Some((p, _))) => Err(ManifestError::Mixed {
            work_file: w.file.clone(),
            work_doc: w.doc,
            plain_file: p.file.clone(),
            plain_doc: p.doc,
        }),
        (Some(_), None) => {
            if !opts.is_empty() {
                return Err(ManifestError::FlagsWithWorks);
            }
            works.into_iter().map(|(o, v)| parse_work(&o, v)).collect()
        }
        (None, Some(_)) => wrap(inputs, plain, opts).map(|w| vec![w]),
        (None, None) => Err(nothing(inputs)),
    }
}

/// The plain Kubernetes objects of `inputs`, in order, for a source that holds nothing else
/// (a directory in a git repository). A Work document among them is refused: a Work does not
/// fetch other Works.
pub(crate) fn plain_manifests(inputs: &[Input]) -> Result<Vec<serde_json::Value>, ManifestError> {
    let (works, plain) = split(inputs)?;
    if let Some((origin, _)) = works.first() {
        return Err(ManifestError::Document {
            file: origin.file.clone(),
            doc: origin.doc,
            message: "a Work document; a git source holds plain Kubernetes manifests only".into(),
        });
    }
    if plain.is_empty() {
        return Err(nothing(inputs));
    }
    no_duplicates(&plain)?;
    Ok(plain.into_iter().map(|(_, m)| m).collect())
}

/// Checked here rather than left to `validate`, whose messages only know the position in the
/// merged list, not which file the object came from.
fn no_duplicates(plain: &[(Origin, serde_json::Value)]) -> Result<(), ManifestError> {
    let mut seen: BTreeMap<ObjectRef, &Origin> = BTreeMap::new();
    for (origin, m) in plain {
        let r = ObjectRef::of(m).map_err(|message| ManifestError::Document {
            file: origin.file.clone(),
            doc: origin.doc,
            message,
        })?;
        if let Some(first) = seen.get(&r) {
            return Err(ManifestError::Duplicate {
                first: first.to_string(),
                second: origin.to_string(),
                object: r.to_string(),
            });
        }
        seen.insert(r, origin);
    }
    Ok(())
}

fn identity(value: &serde_json::Value) -> Result<(String, String), String> {
    if !value.is_object() {
        return Err("not a mapping (expected a Kubernetes object)".into());
    }
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match (field("apiVersion"), field("kind")) {
        ("", _) => Err("missing apiVersion".into()),
        (_, "") => Err("missing kind".into()),
        (a, k) => Ok((a.to_string(), k.to_string())),
    }
}

fn parse_work(origin: &Origin, value: serde_json::Value) -> Result<WorkDocument, ManifestError> {
    let bad = |message: String| ManifestError::Document {
        file: origin.file.clone(),
        doc: origin.doc,
        message,
    };
    let doc: WorkDocument =
        serde_json::from_value(value).map_err(|e| bad(format!("not a valid Work: {e}")))?;
    validate(&doc).map_err(|errors| {
        bad(format!(
            "work {:?}: {}",
            doc.metadata.name,
            errors.join("; ")
        ))
    })?;
    Ok(doc)
}

fn wrap(
    inputs: &[Input],
    plain: Vec<(Origin, serde_json::Value)>,
    opts: &WrapOptions,
) -> Result<WorkDocument, ManifestError> {
    let name = opts.name.clone().ok_or(ManifestError::NoName)?;
    if opts.clusters.is_empty() && opts.selector.is_empty() {
        return Err(ManifestError::NoTargets { name });
    }
    no_duplicates(&plain)?;
    let doc = WorkDocument {
        api_version: WORK_API_VERSION.into(),
        kind: WORK_KIND.into(),
        metadata: WorkMetadata {
            name: name.clone(),
            labels: Labels::new(),
            annotations: Labels::from([(SOURCE_ANNOTATION.to_string(), source(inputs))]),
        },
        spec: WorkSpec {
            targets: Targets {
                clusters: opts.clusters.clone(),
                selector: (!opts.selector.is_empty()).then(|| LabelSelector {
                    match_labels: opts.selector.clone(),
                    match_expressions: vec![],
                }),
            },
            placement: None,
            overrides: vec![],
            rollout: None,
            failover: None,
            source: None,
            manifests: plain.into_iter().map(|(_, m)| m).collect(),
            force_conflicts: false,
        },
    };
    validate(&doc).map_err(|errors| ManifestError::Invalid { name, errors })?;
    Ok(doc)
}

/// The `tether.dev/source` value: `files: a.yaml, dir/b.yaml`, `stdin`, or both. A huge tree
/// is summarised as `... and N more` so the annotation stays within its bound.
pub fn source(inputs: &[Input]) -> String {
    let files: Vec<&str> = inputs
        .iter()
        .filter(|i| i.from == From::File)
        .map(|i| i.label.as_str())
        .collect();
    let stdin = inputs.iter().any(|i| i.from == From::Stdin);
    let kustomized: Vec<&str> = inputs
        .iter()
        .filter(|i| i.from == From::Kustomize)
        .map(|i| i.label.as_str())
        .collect();
    // Room for the longest suffix ("; stdin" and "... and N more").
    let budget = MAX_ANNOTATION_VALUE - 64;
    let mut text = String::new();
    for k in kustomized {
        if text.len() + k.len() < budget {
            text.push_str(&format!("kustomize: {k}"));
        }
    }
    if !files.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str("files: ");
        for (i, f) in files.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            if text.len() + sep.len() + f.len() > budget {
                text.push_str(&format!(", ... and {} more", files.len() - i));
                break;
            }
            text.push_str(sep);
            text.push_str(f);
        }
    }
    if stdin {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str("stdin");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(label: &str, text: &str) -> Input {
        Input {
            label: label.into(),
            text: text.into(),
            from: if label == "stdin" {
                From::Stdin
            } else {
                From::File
            },
        }
    }

    /// kubectl with kustomize built in: Debian's kubernetes-client, which `.ci/run` installs.
    fn have_kubectl() -> bool {
        let found = std::process::Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found || std::env::var("CI").is_err(),
            "CI must provide kubectl (kubernetes-client)"
        );
        if !found {
            eprintln!("kubectl not installed: skipping the kustomize test");
        }
        found
    }

    #[test]
    fn kustomize_renders_a_directory_into_one_wrapped_work() {
        if !have_kubectl() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("kustomization.yaml"),
            "resources: [cm.yaml]\nnamePrefix: eu-\ncommonLabels: {team: edge}\n",
        )
        .unwrap();
        std::fs::write(
            d.join("cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: \"no\"}\n",
        )
        .unwrap();
        let input = kustomize(d).unwrap();
        assert_eq!(input.from, From::Kustomize);
        let works = build_works(&[input], &opts("app", &["a"])).unwrap();
        let m = &works[0].spec.manifests[0];
        assert_eq!(m["metadata"]["name"], "eu-settings");
        assert_eq!(m["metadata"]["labels"]["team"], "edge");
        assert_eq!(m["data"]["mode"], "no", "a YAML 1.1 boolean stays a string");
        let src = &works[0].metadata.annotations[SOURCE_ANNOTATION];
        assert!(src.starts_with("kustomize: "), "{src}");

        // kustomize's own error is passed on.
        std::fs::write(d.join("kustomization.yaml"), "resources: [missing.yaml]\n").unwrap();
        let err = kustomize(d).unwrap_err().to_string();
        assert!(err.contains("missing.yaml"), "{err}");
    }

    #[test]
    fn kustomize_says_what_to_install_and_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = kustomize_with(dir.path(), &[("tether-no-such-tool", "build")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes-client"), "{err}");
        let file = dir.path().join("f.yaml");
        std::fs::write(&file, "").unwrap();
        let err = kustomize(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    fn opts(name: &str, clusters: &[&str]) -> WrapOptions {
        WrapOptions {
            name: Some(name.into()),
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            selector: Labels::new(),
        }
    }

    fn names(w: &WorkDocument) -> Vec<String> {
        w.spec
            .manifests
            .iter()
            .map(|m| m["metadata"]["name"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: NAME\n  namespace: default\ndata:\n  k: v\n";

    fn cm(name: &str) -> String {
        CM.replace("NAME", name)
    }

    const WORK: &str = "apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata:\n  name: web\nspec:\n  targets:\n    clusters: [a]\n  manifests: []\n";

    #[test]
    fn multi_document_yaml_is_wrapped_into_one_work_in_order() {
        let text = format!("---\n{}---\n\n---\n{}", cm("one"), cm("two"));
        let works = build_works(&[input("app.yaml", &text)], &opts("app", &["a", "b"])).unwrap();
        assert_eq!(works.len(), 1);
        let w = &works[0];
        assert_eq!(w.metadata.name, "app");
        assert_eq!(w.spec.targets.clusters, vec!["a", "b"]);
        assert!(w.spec.targets.selector.is_none());
        assert_eq!(names(w), vec!["one", "two"]);
    }

    #[test]
    fn lists_are_expanded() {
        let list = r#"
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}
  - {apiVersion: v1, kind: Secret, metadata: {name: b}}
---
apiVersion: v1
kind: ConfigMapList
items:
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}
"#;
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}}]}"#;
        let works = build_works(
            &[input("l.yaml", list), input("l.json", json)],
            &opts("x", &["a"]),
        )
        .unwrap();
        assert_eq!(names(&works[0]), vec!["a", "b", "c", "d"]);

        let bad = "apiVersion: v1\nkind: List\nitems:\n  - {kind: ConfigMap}\n";
        let err = build_works(&[input("l.yaml", bad)], &opts("x", &["a"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("l.yaml, document 1")
                && msg.contains("items[0]")
                && msg.contains("apiVersion"),
            "{msg}"
        );
    }

    #[test]
    fn directories_are_read_recursively_in_sorted_order_and_only_manifest_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/deep")).unwrap();
        std::fs::write(d.join("b.yaml"), cm("b")).unwrap();
        std::fs::write(d.join("a/deep/z.yml"), cm("z")).unwrap();
        std::fs::write(
            d.join("a/c.json"),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#,
        )
        .unwrap();
        std::fs::write(d.join("README.md"), "not yaml: [").unwrap();
        std::fs::write(d.join("0.txt"), "not yaml: [").unwrap();
        let inputs = read_inputs(&[d.to_path_buf()], &mut std::io::empty()).unwrap();
        let labels: Vec<String> = inputs
            .iter()
            .map(|i| {
                Path::new(&i.label)
                    .strip_prefix(d)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(labels, vec!["a/c.json", "a/deep/z.yml", "b.yaml"]);
        let works = build_works(&inputs, &opts("x", &["a"])).unwrap();
        assert_eq!(names(&works[0]), vec!["c", "z", "b"]);

        let empty = tempfile::tempdir().unwrap();
        let err = read_inputs(&[empty.path().to_path_buf()], &mut std::io::empty()).unwrap_err();
        assert!(matches!(err, ManifestError::EmptyDir { .. }), "{err}");
        let err = read_inputs(&[d.join("missing.yaml")], &mut std::io::empty()).unwrap_err();
        assert!(err.to_string().contains("missing.yaml"), "{err}");
    }

    #[test]
    fn stdin_is_read_at_most_once() {
        let stdin = cm("s").into_bytes();
        let inputs = read_inputs(&["-".into()], &mut stdin.as_slice()).unwrap();
        assert_eq!(inputs, vec![input("stdin", &cm("s"))]);
        let err = read_inputs(&["-".into(), "-".into()], &mut stdin.as_slice()).unwrap_err();
        assert!(matches!(err, ManifestError::StdinTwice), "{err}");
    }

    #[test]
    fn works_and_plain_manifests_do_not_mix() {
        let err = build_works(
            &[input("w.yaml", WORK), input("p.yaml", &cm("p"))],
            &opts("x", &["a"]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ManifestError::Mixed { .. }), "{msg}");
        assert!(
            msg.contains("w.yaml, document 1") && msg.contains("p.yaml, document 1"),
            "{msg}"
        );
    }

    #[test]
    fn work_documents_behave_as_before_and_refuse_wrapping_flags() {
        let works = build_works(&[input("w.yaml", WORK)], &WrapOptions::default()).unwrap();
        assert_eq!(works[0].metadata.name, "web");
        assert!(works[0].metadata.annotations.is_empty());
        let err = build_works(&[input("w.yaml", WORK)], &opts("x", &["a"])).unwrap_err();
        assert!(matches!(err, ManifestError::FlagsWithWorks), "{err}");
        let broken = WORK.replace("clusters: [a]", "clusters: [Bad_Name]");
        let err = build_works(&[input("w.yaml", &broken)], &WrapOptions::default()).unwrap_err();
        assert!(err.to_string().starts_with("w.yaml, document 1"), "{err}");
    }

    #[test]
    fn plain_manifests_need_a_name_and_a_target() {
        let err = build_works(&[input("p.yaml", &cm("p"))], &WrapOptions::default()).unwrap_err();
        assert!(matches!(err, ManifestError::NoName), "{err}");
        assert!(err.to_string().contains("--name"));
        let err = build_works(&[input("p.yaml", &cm("p"))], &opts("x", &[])).unwrap_err();
        assert!(matches!(err, ManifestError::NoTargets { .. }), "{err}");
        assert!(err.to_string().contains("--clusters") && err.to_string().contains("--selector"));

        let by_label = WrapOptions {
            name: Some("x".into()),
            clusters: vec![],
            selector: Labels::from([("env".to_string(), "prod".to_string())]),
        };
        let works = build_works(&[input("p.yaml", &cm("p"))], &by_label).unwrap();
        let sel = works[0].spec.targets.selector.as_ref().unwrap();
        assert_eq!(sel.match_labels, by_label.selector);

        let err = build_works(&[input("p.yaml", &cm("p"))], &opts("Bad_Name", &["a"])).unwrap_err();
        assert!(matches!(err, ManifestError::Invalid { .. }), "{err}");
    }

    #[test]
    fn bad_documents_name_their_file_and_number() {
        let o = opts("x", &["a"]);
        for (text, expect) in [
            (
                format!("{}---\nkind: ConfigMap\n", cm("a")),
                "missing apiVersion",
            ),
            ("apiVersion: v1\nmetadata: {}\n".to_string(), "missing kind"),
            (
                format!("{}---\n- just\n- a list\n", cm("a")),
                "not a mapping",
            ),
            (
                format!("{}---\nkey: [unclosed\n", cm("a")),
                "not valid YAML",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n".to_string(),
                "metadata.name",
            ),
        ] {
            let err = build_works(&[input("bad.yaml", &text)], &o).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("bad.yaml, document") && msg.contains(expect),
                "{msg}"
            );
        }
        let err = build_works(
            &[
                input("one.yaml", &cm("same")),
                input("two.yaml", &cm("same")),
            ],
            &o,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("one.yaml, document 1") && msg.contains("two.yaml, document 1"),
            "{msg}"
        );
        let err = build_works(&[input("e.yaml", "---\n---\n")], &o).unwrap_err();
        assert!(matches!(err, ManifestError::Nothing(_)), "{err}");
    }

    #[test]
    fn the_wrapped_work_records_its_source() {
        let o = opts("x", &["a"]);
        let w = &build_works(
            &[input("a.yaml", &cm("a")), input("dir/b.yaml", &cm("b"))],
            &o,
        )
        .unwrap()[0];
        assert_eq!(
            w.metadata
                .annotations
                .get(SOURCE_ANNOTATION)
                .map(String::as_str),
            Some("files: a.yaml, dir/b.yaml")
        );
        let w = &build_works(&[input("stdin", &cm("a"))], &o).unwrap()[0];
        assert_eq!(w.metadata.annotations[SOURCE_ANNOTATION], "stdin");
        let both = source(&[input("a.yaml", ""), input("stdin", "")]);
        assert_eq!(both, "files: a.yaml; stdin");

        let many: Vec<Input> = (0..2000)
            .map(|i| input(&format!("some/long/dir/file-{i}.yaml"), ""))
            .collect();
        let s = source(&many);
        assert!(
            s.len() <= MAX_ANNOTATION_VALUE && s.contains("more"),
            "{}",
            s.len()
        );
    }
}
