//! `tetherctl` as an operator runs it: the real binary against a real hub and agents on
//! loopback. Labels after join, selectors and watch, the server override, version,
//! completions, warnings on apply, and a closed stdout.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use tether_sim::fleet::{all_in_state, wait_for, LocalAgent, LocalHub};

fn listed(json: &str) -> Vec<String> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).expect(json);
    rows.iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn setup(d: &Path) -> (LocalHub, Ctl, Vec<LocalAgent>) {
    let hub = hub(d).await;
    let ctl = Ctl::for_hub(d, &hub);
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let agents = vec![agent(&hub, d, "a", &token), agent(&hub, d, "b", &token)];
    let admin = hub.admin().unwrap();
    wait_for(
        &admin,
        WAIT,
        "a, b Ready",
        all_in_state(&names(&["a", "b"]), "Ready"),
    )
    .await
    .unwrap();
    (hub, ctl, agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_change_after_join_and_move_placement() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub, ctl, agents) = setup(d).await;
    let admin = hub.admin().unwrap();

    // A work for region=eu: nobody has the label yet.
    let mut sel = tether_protocol::work::LabelSelector::default();
    sel.match_labels.insert("region".into(), "eu".into());
    let targets = tether_protocol::work::Targets {
        clusters: vec![],
        selector: Some(sel),
    };
    admin
        .apply_work(&config_work("eu-app", targets, &["x"], "v1"))
        .await
        .unwrap();

    let out = ctl
        .ok(&["clusters", "label", "a", "region=eu", "tier=edge"])
        .await;
    assert!(out.contains("region=eu"), "{out}");
    let detail = wait_applied(&admin, "eu-app", 1, 1).await;
    assert_eq!(detail.clusters[0].cluster, "a");

    // Changing a set value needs --overwrite, as with kubectl label.
    let refused = ctl.run(&["clusters", "label", "a", "region=us"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--overwrite"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    ctl.ok(&[
        "clusters",
        "label",
        "a",
        "region=us",
        "--overwrite",
        "tier-",
    ])
    .await;
    let start = std::time::Instant::now();
    loop {
        let d = admin.work("eu-app").await.unwrap();
        if d.clusters.iter().all(|c| !c.targeted) {
            break;
        }
        assert!(start.elapsed() < WAIT, "a still targeted: {d:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let a = admin.cluster("a").await.unwrap();
    assert_eq!(a.labels.get("region").map(String::as_str), Some("us"));
    assert!(!a.labels.contains_key("tier"));

    // Bad input is refused with a message, by the CLI and by the hub.
    let bad = ctl.run(&["clusters", "label", "a", "bad key=x"]).await;
    assert!(!bad.status.success());
    let missing = ctl.run(&["clusters", "label", "nope", "x=y"]).await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // Audited as itself, naming what changed.
    let audit = ctl
        .ok(&["audit", "--kind", "labels_changed", "-o", "json"])
        .await;
    let events: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let details: Vec<&str> = events
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(events.len(), 2, "{details:?}");
    assert!(details[0].contains("+region=eu"), "{details:?}");
    assert!(
        details[1].contains("region=us (was \"eu\")") && details[1].contains("-tier"),
        "{details:?}"
    );

    // Selectors over labels and facts.
    let eq = ctl
        .ok(&["clusters", "list", "-l", "region=us", "-o", "json"])
        .await;
    assert_eq!(listed(&eq), vec!["a"]);
    let lacks = ctl
        .ok(&["clusters", "list", "-l", "!region", "-o", "json"])
        .await;
    assert_eq!(listed(&lacks), vec!["b"]);
    let arch = std::env::consts::ARCH;
    let by_fact = ctl
        .ok(&[
            "clusters",
            "list",
            "-l",
            &format!("tether.dev/arch={arch}"),
            "-o",
            "json",
        ])
        .await;
    assert_eq!(listed(&by_fact), vec!["a", "b"], "arch {arch}");
    let wide = ctl.ok(&["clusters", "list", "-o", "wide"]).await;
    assert!(
        wide.lines()
            .next()
            .unwrap_or_default()
            .contains("KUBERNETES"),
        "{wide}"
    );

    for a in agents {
        a.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_override_version_completion_warnings_and_a_closed_pipe() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub, ctl, agents) = setup(d).await;
    let real = hub.ctl_config().unwrap().admin_address;

    // A config pointing nowhere, rescued by --server and by TETHER_SERVER.
    let mut wrong = hub.ctl_config().unwrap();
    wrong.admin_address = "127.0.0.1:9".into();
    let wrong_path = d.join("wrong.yaml");
    std::fs::write(&wrong_path, wrong.to_yaml()).unwrap();
    let lost = Ctl {
        bin: ctl.bin.clone(),
        config: wrong_path,
    };
    assert!(!lost.run(&["clusters", "list"]).await.status.success());
    let via_flag = lost
        .ok(&["--server", &real, "clusters", "list", "-o", "json"])
        .await;
    assert_eq!(listed(&via_flag), vec!["a", "b"]);
    let mut c = lost.command(&["clusters", "list", "-o", "json"]);
    c.env("TETHER_SERVER", &real);
    let via_env = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(via_env.status.success());
    assert_eq!(
        listed(&String::from_utf8_lossy(&via_env.stdout)),
        vec!["a", "b"]
    );

    // Versions of both ends; without a config, only the client's.
    let v = ctl.ok(&["version"]).await;
    let ours = env!("CARGO_PKG_VERSION");
    assert!(
        v.contains(&format!("tetherctl {ours}")) && v.contains("hub "),
        "{v}"
    );
    let bare = tokio::task::spawn_blocking({
        let bin = ctl.bin.clone();
        move || {
            Command::new(bin)
                .arg("version")
                .env_remove("TETHER_CONFIG")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stdout).starts_with("tetherctl "));

    // Completions name the subcommands.
    for shell in ["bash", "zsh", "fish"] {
        let script = ctl.ok(&["completion", shell]).await;
        assert!(
            script.contains("clusters") && script.contains("rollout"),
            "{shell}: {script:.200}"
        );
    }

    // Applying a work that names an unregistered cluster succeeds, with a warning.
    let work = d.join("typo.yaml");
    std::fs::write(
        &work,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {k: v}\n",
    )
    .unwrap();
    let applied = ctl
        .run(&[
            "apply",
            "-f",
            work.to_str().unwrap(),
            "--name",
            "typo",
            "--clusters",
            "a,bb",
        ])
        .await;
    assert!(applied.status.success());
    let err = String::from_utf8_lossy(&applied.stderr);
    assert!(
        err.contains("\"bb\" is not registered") && !err.contains("\"a\""),
        "{err}"
    );

    // Two works over one object on one cluster are refused unless forced; on disjoint
    // clusters they are fine.
    let admin = hub.admin().unwrap();
    admin
        .apply_work(&config_work("first", only(&["a"]), &["shared"], "v1"))
        .await
        .unwrap();
    wait_applied(&admin, "first", 1, 1).await;
    let same = d.join("same.yaml");
    std::fs::write(
        &same,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first-shared, namespace: default}\ndata: {value: v2}\n",
    )
    .unwrap();
    let second = |clusters: &'static str, force: bool| {
        let mut args = vec![
            "apply".to_string(),
            "-f".into(),
            same.to_string_lossy().into_owned(),
            "--name".into(),
            "second".into(),
            "--clusters".into(),
            clusters.into(),
        ];
        if force {
            args.push("--force".into());
        }
        args
    };
    let refused = ctl
        .run(
            &second("a", false)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("both manage ConfigMap first-shared on cluster(s) a")
            && err.contains("--force"),
        "{err}"
    );
    assert!(
        admin.work("second").await.is_err(),
        "a refused apply stored the work"
    );
    ctl.ok(&second("b", false)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
        .await;
    let forced = ctl
        .run(
            &second("a,b", true)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    let err = String::from_utf8_lossy(&forced.stderr);
    assert!(forced.status.success(), "{err}");
    assert!(
        err.contains("warning: work/second") && err.contains("both manage"),
        "{err}"
    );

    // A reader that went away: quiet success, not a panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut c = ctl.command(&["clusters", "list"]);
    c.stdout(Stdio::from(writer)).stderr(Stdio::piped());
    let closed = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&closed.stderr);
    assert!(
        closed.status.success() && !err.contains("panicked"),
        "{err}"
    );

    for a in agents {
        a.stop().await.unwrap();
    }
}

/// `rollout status --watch` on a terminal (a pty from util-linux `script`) redraws its frame in
/// place with a row per cluster still moving; through a pipe it prints one line per change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_watch_redraws_on_a_terminal_and_prints_changes_to_a_pipe() {
    init_logs();
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "util-linux `script` is needed"
        );
        eprintln!("SKIPPED: no `script` to give tetherctl a terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub, ctl, agents) = setup(d).await;
    let admin = hub.admin().unwrap();
    let work = |v: &str| {
        work_from(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work",
            "metadata": {"name": "slow"},
            "spec": {
                "placement": {"selector": {}},
                "rollout": {"strategy": "Progressive", "maxConcurrency": 1, "minSuccessSeconds": 2},
                "manifests": [{"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "slow", "namespace": "default"}, "data": {"v": v}}],
            }
        }))
    };
    admin.apply_work(&work("v1")).await.unwrap();
    let watch = format!(
        "{} --config {} rollout status slow --watch",
        ctl.bin.display(),
        ctl.config.display()
    );
    let tty = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &watch, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{screen}");
    assert!(
        screen.contains("\x1b[") && screen.contains("F\x1b[J"),
        "no redraw: {screen:?}"
    );
    assert!(
        screen.contains("updating") || screen.contains("waiting"),
        "{screen:?}"
    );
    assert!(
        screen.contains("2/2 done") && screen.contains("Complete"),
        "{screen:?}"
    );

    admin.apply_work(&work("v2")).await.unwrap();
    let piped = ctl.ok(&["rollout", "status", "slow", "--watch"]).await;
    assert!(!piped.contains('\x1b'), "{piped:?}");
    let lines: Vec<&str> = piped.lines().collect();
    assert!(
        lines.windows(2).all(|w| w[0] != w[1]),
        "repeated lines: {piped}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains("Complete")),
        "{piped}"
    );

    for a in agents {
        a.stop().await.unwrap();
    }
}

/// `tetherctl diff` shows what an apply would change, object by object, and exits 1 when
/// something would (0 when nothing), like kubectl diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_what_an_apply_would_change() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub, ctl, agents) = setup(d).await;
    let file = d.join("cm.yaml");
    let cm = |v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  mode: {v}\n")
    };
    std::fs::write(&file, cm("fast")).unwrap();
    let f = file.to_str().unwrap();
    let args = ["-f", f, "--name", "settings", "--clusters", "a"];
    let run = |sub: &'static str| {
        let mut a = vec![sub];
        a.extend(args);
        a
    };
    let new = ctl.run(&run("diff")).await;
    let shown = String::from_utf8_lossy(&new.stdout).into_owned();
    assert_eq!(new.status.code(), Some(1), "a new work differs: {shown}");
    assert!(shown.contains("+  mode: fast"), "{shown}");

    ctl.ok(&run("apply")).await;
    let same = ctl.run(&run("diff")).await;
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );

    std::fs::write(&file, cm("safe")).unwrap();
    let changed = ctl.run(&run("diff")).await;
    let shown = String::from_utf8_lossy(&changed.stdout).into_owned();
    assert_eq!(changed.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("-  mode: fast") && shown.contains("+  mode: safe"),
        "{shown}"
    );
    assert!(
        shown.contains("v1.ConfigMap.default.settings.yaml"),
        "{shown}"
    );
    let admin = hub.admin().unwrap();
    assert_eq!(
        admin.work("settings").await.unwrap().summary.generation,
        1,
        "diff changed nothing"
    );

    // Per cluster: the overrides that cluster's labels select, on both sides.
    let work = |env_a: &str| {
        format!(
            "apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata: {{name: tuned}}\nspec:\n  targets: {{clusters: [a, b]}}\n  overrides:\n  - clusterSelector: {{matchLabels: {{site: a}}}}\n    labels: {{tier: {env_a}}}\n  manifests:\n  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: tuned, namespace: default}}, data: {{k: v}}}}\n"
        )
    };
    let wfile = d.join("tuned.yaml");
    std::fs::write(&wfile, work("gold")).unwrap();
    let wf = wfile.to_str().unwrap();
    ctl.ok(&["apply", "-f", wf]).await;
    std::fs::write(&wfile, work("silver")).unwrap();
    let on_a = ctl.run(&["diff", "-f", wf, "--cluster", "a"]).await;
    let shown = String::from_utf8_lossy(&on_a.stdout).into_owned();
    assert_eq!(on_a.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("-    tier: gold") && shown.contains("+    tier: silver"),
        "{shown}"
    );
    // b's copy has no override, and the base manifests did not change.
    for other in [vec!["--cluster", "b"], vec![]] {
        let mut args = vec!["diff", "-f", wf];
        args.extend(other.iter().copied());
        let out = ctl.run(&args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let unknown = ctl.run(&["diff", "-f", wf, "--cluster", "nope"]).await;
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("cluster \"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    for a in agents {
        a.stop().await.unwrap();
    }
}
