//! Works whose manifests come from a git repository: a real bare repository served by
//! `git daemon` on loopback, a real hub and agent, and the real `tetherctl`. Apply pins the
//! commit, `works sync` and the interval pick up new commits, and every way a source can be
//! wrong is a clear error that leaves the work as it was.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tether_hub::api::ApplyOutcome;
use tether_hub::AdminClient;
use tether_protocol::work::{GitSource, WorkDocument, WorkSource};
use tether_sim::fleet::{all_in_state, wait_for};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `repo.git` under `root` and a clone of it to commit from.
struct Repo {
    root: PathBuf,
    work: PathBuf,
}

impl Repo {
    fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root).unwrap();
        git(root, &["init", "-q", "--bare", "-b", "main", "repo.git"]);
        git(root, &["clone", "-q", "repo.git", "work"]);
        Repo {
            root: root.to_path_buf(),
            work: root.join("work"),
        }
    }

    /// Write `files` (path, text), commit and push to main; the new commit id.
    fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, text) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// `git daemon` serving `root` on a free loopback port.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(root: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // git-daemon itself, not `git daemon`: the `git` wrapper would run it as a child that
        // outlives a kill of the wrapper.
        let exec_path = git(root, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting git daemon");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < WAIT, "git daemon did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Daemon { child, port }
    }

    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo.git", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_map(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  value: \"{value}\"\n"
    )
}

/// A work of the manifests under `path` at `revision`, looked at every hour (tests sync it).
fn sourced(name: &str, repository: &str, revision: &str, path: &str) -> WorkDocument {
    let mut doc = config_work(name, only(&["a"]), &[], "");
    doc.spec.manifests.clear();
    doc.spec.source = Some(WorkSource {
        git: GitSource {
            repository: repository.into(),
            revision: revision.into(),
            path: path.into(),
            interval_seconds: Some(3600),
            commit: None,
        },
    });
    doc
}

async fn refused(admin: &AdminClient, doc: &WorkDocument, expect: &str) {
    let e = admin.apply_work(doc).await.expect_err(expect).to_string();
    assert!(e.contains(expect), "expected {expect:?} in: {e}");
}

fn delivered(d: &Path, work: &str) -> String {
    std::fs::read_to_string(manifests_dir(d, "a").join(format!("tether-{work}.yaml")))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_source_is_pinned_synced_and_checked_on_an_interval() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = Repo::new(&d.join("git"));
    let first = repo.commit(
        &[
            ("deploy/app.yaml", &config_map("app", "no")),
            (
                "deploy/more/list.yml",
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: listed, namespace: default}\n  data: {n: \"1_000\"}\n",
            ),
            ("deploy/README.md", "not a manifest"),
            ("polled/p.yaml", &config_map("polled", "first")),
            ("other/ignored.yaml", &config_map("elsewhere", "x")),
        ],
        "first",
    );
    git(&repo.work, &["tag", "v1"]);
    git(&repo.work, &["push", "-q", "origin", "v1"]);
    let daemon = Daemon::start(&repo.root);

    let hub = hub(d).await;
    let token = hub.token(1, true, Default::default()).await.unwrap();
    let _a = agent(&hub, d, "a", &token);
    let admin = hub.admin().unwrap();
    wait_for(
        &admin,
        WAIT,
        "a Ready",
        all_in_state(&names(&["a"]), "Ready"),
    )
    .await
    .unwrap();

    let ctl = Ctl::for_hub(d, &hub);
    // Apply pins the commit the branch names; only the files under the path are manifests.
    let doc = sourced("site", &daemon.url(), "main", "deploy");
    let r = admin.apply_work(&doc).await.unwrap();
    assert_eq!(r.outcome, ApplyOutcome::Created);
    assert_eq!(r.commit.as_deref(), Some(first.as_str()));
    let detail = wait_applied(&admin, "site", 1, 1).await;
    let git_src = &detail.document.spec.source.as_ref().unwrap().git;
    assert_eq!(git_src.commit.as_deref(), Some(first.as_str()));
    assert_eq!(detail.document.spec.manifests.len(), 2);
    let written = delivered(d, "site");
    assert!(
        written.contains("listed") && !written.contains("elsewhere"),
        "{written}"
    );
    // Same document, same commit: nothing to do.
    assert_eq!(
        admin.apply_work(&doc).await.unwrap().outcome,
        ApplyOutcome::Unchanged
    );
    // The same source looked at every 10 s, the shortest interval.
    let mut polled = sourced("polled", &daemon.url(), "main", "polled");
    polled.spec.source.as_mut().unwrap().git.interval_seconds = Some(10);
    admin.apply_work(&polled).await.unwrap();

    // A new commit, picked up at once by `tetherctl works sync`.
    let second = repo.commit(
        &[("deploy/app.yaml", &config_map("app", "second"))],
        "second",
    );
    let out = ctl.ok(&["works", "sync", "site"]).await;
    let short: String = second.chars().take(12).collect();
    assert!(
        out.contains("updated (generation 2)") && out.contains(&short),
        "{out}"
    );
    wait_applied(&admin, "site", 2, 1).await;
    assert!(delivered(d, "site").contains("second"));

    // A commit nobody syncs arrives by the interval (10 s).
    let third = repo.commit(
        &[
            ("deploy/app.yaml", &config_map("app", "third")),
            ("polled/p.yaml", &config_map("polled", "third")),
        ],
        "third",
    );
    let start = std::time::Instant::now();
    loop {
        let d = admin.work("polled").await.unwrap();
        let commit = d.document.spec.source.unwrap().git.commit;
        if commit.as_deref() == Some(third.as_str()) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "interval sync did not happen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The second commit changed nothing under polled/: this is its second generation.
    wait_applied(&admin, "polled", 2, 1).await;
    assert!(delivered(d, "polled").contains("third"));
    let described = ctl.ok(&["describe", "work", "polled"]).await;
    assert!(
        described.contains(&format!("at commit {third}")) && described.contains(": ok"),
        "{described}"
    );
    // The work synced by hand has not moved.
    assert_eq!(admin.work("site").await.unwrap().summary.generation, 2);
    let out = ctl.ok(&["works", "sync", "site"]).await;
    assert!(out.contains("updated (generation 3)"), "{out}");
    wait_applied(&admin, "site", 3, 1).await;

    // A tag and an abbreviated commit id are revisions too (for a cluster not registered, so
    // that they do not contend with "site" for its objects).
    let elsewhere = |mut doc: WorkDocument| {
        doc.spec.targets = only(&["elsewhere"]);
        doc
    };
    let tagged = admin
        .apply_work(&elsewhere(sourced("tagged", &daemon.url(), "v1", "deploy")))
        .await
        .unwrap();
    assert_eq!(tagged.commit.as_deref(), Some(first.as_str()));
    let by_id = admin
        .apply_work(&elsewhere(sourced(
            "by-id",
            &daemon.url(),
            &second[..10],
            "deploy",
        )))
        .await
        .unwrap();
    assert_eq!(by_id.commit.as_deref(), Some(second.as_str()));
    // Left out, the revision is the remote's default branch.
    let default = admin
        .apply_work(&elsewhere(sourced(
            "default",
            &daemon.url(),
            "HEAD",
            "deploy",
        )))
        .await
        .unwrap();
    assert_eq!(default.commit.as_deref(), Some(third.as_str()));

    // Every way a source can be wrong is refused with a message that says which.
    let url = daemon.url();
    for (doc, expect) in [
        (
            sourced("x", &url, "nope", "deploy"),
            "is not a branch, a tag",
        ),
        (sourced("x", &url, "main", "missing"), "is not a directory"),
        (
            sourced("x", &url, "main", "deploy/README.md"),
            "is not a directory",
        ),
        (sourced("x", "file:///etc", "main", ""), "local paths"),
        (sourced("x", "/srv/repo.git", "main", ""), "local paths"),
        (
            sourced("x", "git://127.0.0.1:1/none.git", "main", ""),
            "fetch failed",
        ),
    ] {
        refused(&admin, &doc, expect).await;
    }
    let mut both = sourced("x", &daemon.url(), "main", "deploy");
    both.spec.manifests = config_work("x", only(&["a"]), &["k"], "v").spec.manifests;
    refused(&admin, &both, "both given").await;
    let mut claimed = sourced("x", &daemon.url(), "main", "deploy");
    claimed.spec.source.as_mut().unwrap().git.commit = Some(first.clone());
    refused(&admin, &claimed, "set by the hub").await;
    repo.commit(&[("bad/w.yaml", "apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata: {name: w}\nspec: {manifests: []}\n")], "a work");
    refused(
        &admin,
        &sourced("x", &daemon.url(), "main", "bad"),
        "plain Kubernetes manifests only",
    )
    .await;

    // The repository goes away: the work keeps its generation and says why it is stale.
    drop(daemon);
    let out = ctl.fails(&["works", "sync", "site"]).await;
    assert!(out.contains("fetch failed"), "{out}");
    let described = ctl.ok(&["describe", "work", "site"]).await;
    assert!(
        described.contains("failed: ") && described.contains("generation 3"),
        "{described}"
    );
    assert!(delivered(d, "site").contains("third"));
}
