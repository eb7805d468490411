//! `tetherctl`: the administrator's command line for a Tether hub.

#![forbid(unsafe_code)]

// Static musl builds (cross/): mimalloc, as musl's malloc collapses under contention.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admins;
mod clusters;
mod diff;
mod out;
mod rollout;

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, Parser, Subcommand};
use clusters::{parse_selector, Selector, SortBy};
use out::{ago, out, outln, print, Output};
use std::path::PathBuf;
use std::time::Duration;
use tether_hub::api::{ApplyOutcome, AuditFilter, CreateTokenRequest};
use tether_hub::config::CtlConfig;
use tether_hub::util::{now_ms, parse_duration, rfc3339};
use tether_hub::AdminClient;
use tether_protocol::names::parse_label;

#[derive(Parser)]
#[command(
    name = "tetherctl",
    version,
    about = "Administer a Tether hub: bootstrap tokens, join approvals, cluster health, works."
)]
struct Cli {
    /// tetherctl.yaml written by `tether-hub init` (admin API address, CA and admin credential).
    #[arg(long, env = "TETHER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Admin API address (host:port) to use instead of the one in the config, e.g. a
    /// forwarded port, or several separated by commas (hub replicas on one PostgreSQL
    /// database: any answers; the next is tried when one does not). The hub's certificate is
    /// still checked against
    /// the CA and server name in the config.
    #[arg(long, env = "TETHER_SERVER", global = true)]
    server: Option<String>,
    /// Output format (`wide`: tables with more columns).
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bootstrap tokens that let agents request to join.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Registered clusters and join requests.
    #[command(subcommand)]
    Clusters(ClustersCmd),
    /// Admin credentials: roles (viewer, operator, admin) and scopes (a cluster set by label,
    /// namespaces).
    #[command(subcommand)]
    Admins(admins::AdminsCmd),
    /// Security audit events, newest last. Filters combine; any event, however old, is
    /// reachable: when older events may match, the `--before` value that pages further back
    /// is printed on stderr.
    Audit {
        /// How many events to show (the newest matching ones below --before).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this kind, e.g. token_created, join_refused, admin_unauthorized, cert_renewed.
        #[arg(long)]
        kind: Option<String>,
        /// Only events about this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only this actor: admin:NAME, hub, anonymous, agent:NAME, token:ID.
        #[arg(long)]
        actor: Option<String>,
        /// Only events at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or an age (90m, 2d).
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// Only events at or before this time: RFC 3339 or an age.
        #[arg(long, value_parser = parse_time)]
        until: Option<u64>,
        /// Only events with a sequence number below this one (page back: pass the value the
        /// previous run printed).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Create or update Works. Idempotent. The input is either Work documents (kind: Work),
    /// applied as they are, or plain Kubernetes manifests (what `kubectl apply -f` takes,
    /// `kind: List` and other *List kinds expanded), wrapped into ONE Work named --name and
    /// targeted with --clusters and/or --selector. Example:
    /// `helm template my-chart | tetherctl apply -f - --name my-app -l env=prod`, or
    /// `tetherctl apply -k overlays/prod --name my-app -l env=prod` for a kustomization.
    Apply {
        #[command(flatten)]
        input: ManifestInput,
        /// Print the resulting Work document(s) as YAML and stop: the hub is not contacted
        /// and no config is needed.
        #[arg(long)]
        dry_run: bool,
        /// Apply even if another work manages one of these objects on a cluster both would
        /// hold (refused otherwise: the two would overwrite each other on every pass).
        #[arg(long)]
        force: bool,
    },
    /// Show what `apply` with the same input would change in each work's manifests, as
    /// `diff -u` between the hub's copy (live/) and the input (merged/), one file per object.
    /// Exits 1 when something differs, like kubectl diff. TETHER_EXTERNAL_DIFF picks the tool.
    Diff {
        #[command(flatten)]
        input: ManifestInput,
        /// Compare what this cluster receives (the work's overrides for its labels and facts
        /// applied) instead of the work's own manifests.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// List resources.
    #[command(subcommand)]
    Get(GetCmd),
    /// Show one resource in detail.
    #[command(subcommand)]
    Describe(DescribeCmd),
    /// Delete resources.
    #[command(subcommand)]
    Delete(DeleteCmd),
    /// Rollouts: status, pause, resume, history, undo.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Works whose manifests come from a git repository.
    #[command(subcommand)]
    Works(WorksCmd),
    /// Print tetherctl's version, and the hub's when a config is given.
    Version,
    /// Print a shell completion script, e.g. `tetherctl completion bash >
    /// /etc/bash_completion.d/tetherctl` or `source <(tetherctl completion zsh)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `work/NAME updated (generation 4)`, with the commit a git-sourced work was read from.
fn applied_line(r: &tether_hub::api::ApplyResult) -> String {
    let verb = match r.outcome {
        ApplyOutcome::Created => "created",
        ApplyOutcome::Updated => "updated",
        ApplyOutcome::Unchanged => "unchanged",
    };
    let commit = r
        .commit
        .as_deref()
        .map(|c| format!(" at commit {}", c.chars().take(12).collect::<String>()))
        .unwrap_or_default();
    format!(
        "work/{} {verb} (generation {}){commit}",
        r.name, r.generation
    )
}

/// What `apply` and `diff` read: Work documents, or plain manifests wrapped into one Work.
#[derive(Args)]
struct ManifestInput {
    /// A file, a directory (its *.yaml, *.yml and *.json files at any depth, in sorted
    /// path order) or `-` for stdin (at most once). Repeatable; documents are taken in
    /// the order given.
    #[arg(short = 'f', long = "filename", required_unless_present = "kustomize")]
    files: Vec<PathBuf>,
    /// A kustomization directory, rendered with `kubectl kustomize DIR` (or `kustomize
    /// build DIR` without kubectl); the result is applied like -f input.
    #[arg(short = 'k', long, conflicts_with = "files")]
    kustomize: Option<PathBuf>,
    /// Plain manifests only: the name of the Work they are wrapped into. Re-applying with
    /// the same name updates that Work (objects no longer in the input are pruned).
    #[arg(long)]
    name: Option<String>,
    /// Plain manifests only: clusters to deliver to, by name (comma-separated or
    /// repeated). Combines with --selector: a cluster matching either gets the Work.
    #[arg(long, value_delimiter = ',')]
    clusters: Vec<String>,
    /// Plain manifests only: deliver to clusters whose labels match all of these
    /// (matchLabels), e.g. `-l env=prod,region=eu` (comma-separated or repeated).
    #[arg(short = 'l', long, value_delimiter = ',', value_parser = parse_label)]
    selector: Vec<(String, String)>,
}

impl ManifestInput {
    fn documents(&self) -> anyhow::Result<Vec<tether_protocol::work::WorkDocument>> {
        let inputs = match &self.kustomize {
            Some(dir) => vec![tether_hub::kustomize(dir)?],
            None => tether_hub::read_inputs(&self.files, &mut std::io::stdin().lock())?,
        };
        let opts = tether_hub::WrapOptions {
            name: self.name.clone(),
            clusters: self.clusters.clone(),
            selector: self.selector.iter().cloned().collect(),
        };
        Ok(tether_hub::build_works(&inputs, &opts)?)
    }
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Progress of a work's rollout, with counts per state.
    Status {
        work: String,
        /// Refresh every second until the rollout completes or pauses: on a terminal the view
        /// redraws in place (counts, ETA, the clusters still moving); otherwise one line is
        /// printed per change.
        #[arg(long)]
        watch: bool,
    },
    /// Stop admitting clusters: the pause holds across later applies until `resume`, for a
    /// progressive rollout and an all-at-once work alike (clusters keep what they hold).
    Pause { work: String },
    /// Admit clusters again.
    Resume { work: String },
    /// The generations the hub keeps for `undo` (the newest 10), with where each came from.
    History { work: String },
    /// Restore an earlier generation (default: the previous one) on every selected cluster at once.
    Undo {
        work: String,
        #[arg(long)]
        to_generation: Option<u64>,
    },
}

#[derive(Subcommand)]
enum WorksCmd {
    /// Fetch a git-sourced work's repository now (instead of at its next interval) and apply
    /// the commit its revision names; prints the commit and whether it made a new generation.
    Sync { name: String },
    /// Let one held removal or prune of work NAME through the deletion circuit breaker of
    /// CLUSTER (shown as DeletionBreaker in `describe work`). The agent must be connected, and
    /// its owner may accept confirmations on the cluster only (`--local-confirmations-only`).
    ConfirmRemoval {
        name: String,
        #[arg(long)]
        cluster: String,
    },
}

#[derive(Subcommand)]
enum GetCmd {
    /// Works with their delivery and apply progress.
    Works,
    /// Where a work is placed, and why each cluster was or was not chosen.
    Placement { work: String },
}

#[derive(Subcommand)]
enum DescribeCmd {
    /// A work with one row per cluster: delivered and applied generation, phase, last error.
    Work {
        name: String,
        /// With --rendered: print what this cluster receives (overrides applied).
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long, requires = "cluster")]
        rendered: bool,
    },
}

#[derive(Subcommand)]
enum DeleteCmd {
    /// Delete a work: its objects are removed from every cluster (as each is reached), unless
    /// --orphan, which leaves them in place and only stops managing them.
    Work {
        name: String,
        #[arg(long)]
        orphan: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token. It is printed once; the hub stores only its hash.
    Create {
        /// How long the token can be used (at most 30d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many clusters may join with it (at most 100000).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Approve join requests made with this token without a human step.
        #[arg(long)]
        auto_approve: bool,
        /// Label given to every cluster joining with this token (repeatable, k=v). Token
        /// labels override the agent's and may use the reserved tether.dev/ prefix.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Label key agents joining with this token may request (repeatable). When given,
        /// a join asking for any other key is refused; without it, any key outside
        /// tether.dev/ is accepted.
        #[arg(long = "allow-label")]
        allow_labels: Vec<String>,
    },
    /// List tokens (ids only; secrets are never shown again).
    List,
    /// Revoke a token by its id (from `token list`): it admits no more joins. Clusters that
    /// already joined with it are not affected.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ClustersCmd {
    /// List registered clusters with their health (`-o wide` adds OS, CPUs, memory,
    /// Kubernetes version and join time).
    List {
        /// Only clusters matching all of these, e.g. `-l region=eu,tier!=test,gpu,!canary`.
        /// Facts count as their placement labels (`tether.dev/arch=arm64`).
        #[arg(short = 'l', long, value_parser = parse_selector, default_value = "")]
        selector: Selector,
        /// Order of the rows.
        #[arg(long, value_enum, default_value_t = SortBy::Name)]
        sort_by: SortBy,
        /// After the list, print a row for every cluster that appears, changes state, labels
        /// or facts, or goes away, until interrupted.
        #[arg(short = 'w', long)]
        watch: bool,
        /// How often --watch asks the hub.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        watch_interval: Duration,
    },
    /// Change a cluster's labels: `key=value` sets, `key-` removes (audited as
    /// labels_changed). Works whose placement the change affects are re-decided at once.
    /// Labels given to an agent with --label count only at its join.
    Label {
        name: String,
        /// key=value or key-, one or more.
        #[arg(required = true)]
        changes: Vec<String>,
        /// Allow changing the value of a label that is already set.
        #[arg(long)]
        overwrite: bool,
    },
    /// Show one cluster.
    Get { name: String },
    /// List join requests waiting for a decision.
    Pending,
    /// Approve a pending join request: the hub signs the agent's CSR.
    Approve { name: String },
    /// Deny a pending join request, or cut off a registered cluster (revokes its certificates
    /// and closes its live session).
    Deny {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove a cluster: revoke its certificates, close its session, free its name.
    Detach { name: String },
    /// Pin facts so placement trusts them over what the agent reports. Agents report their
    /// facts themselves; a compromised one could claim another arch or a huge capacity to
    /// draw works meant for other clusters. Arch and os are pinned at approval (to what the
    /// approver saw); pin cpus to let `divide: Capacity` give a big cluster more than 4x the
    /// median share, and re-pin after a legitimate change (shown by `clusters get`).
    PinFacts {
        name: String,
        #[arg(long)]
        arch: Option<String>,
        #[arg(long)]
        os: Option<String>,
        #[arg(long)]
        cpus: Option<u32>,
        #[arg(long)]
        kubernetes_version: Option<String>,
        /// Pin every fact to what the agent reports now.
        #[arg(long)]
        reported: bool,
        /// Follow the agent's reports again for this fact (repeatable): arch, os, cpus,
        /// kubernetes_version.
        #[arg(long = "unpin")]
        unpin: Vec<String>,
    },
}

/// `--since`/`--until`: RFC 3339, or an age such as `90m` or `2d` (that long ago).
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return u64::try_from(t.timestamp_millis()).map_err(|_| format!("{s:?} is before 1970"));
    }
    let age = parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor an age (90m, 2d)")
    })?;
    Ok(now_ms().saturating_sub(age.as_millis() as u64))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; no backtrace noise for an operator.
            eprintln!("tetherctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Read and check everything `apply` was given; no hub involved.
fn completion(shell: clap_complete::Shell) {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tetherctl", &mut buf);
    out!("{}", String::from_utf8_lossy(&buf));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // A dry run must work without a hub or a config (e.g. in CI, to review what a chart
    // renders into), so it is handled before the config is required.
    if let Cmd::Apply {
        input,
        dry_run: true,
        ..
    } = &cli.cmd
    {
        let docs = input.documents()?;
        for doc in &docs {
            out!("---\n{}", serde_yaml_ng::to_string(doc)?);
        }
        return Ok(());
    }
    if let Cmd::Admins(cmd) = &cli.cmd {
        if let Some(done) = admins::offline(cmd) {
            return done;
        }
    }
    if let Cmd::Completion { shell } = &cli.cmd {
        completion(*shell);
        return Ok(());
    }
    if let (Cmd::Version, None) = (&cli.cmd, &cli.config) {
        outln!("tetherctl {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let Some(path) = cli.config.clone() else {
        bail!("no tetherctl config: pass --config DATA_DIR/tetherctl.yaml or set TETHER_CONFIG (it is written by `tether-hub init`)");
    };
    let mut cfg = CtlConfig::load(&path)?;
    if let Some(server) = &cli.server {
        cfg.admin_address = server.clone();
    }
    let client = AdminClient::new(&cfg).with_context(|| format!("using {}", path.display()))?;
    let out = cli.output;
    match cli.cmd {
        Cmd::Admins(cmd) => admins::run(&client, &cfg, cmd, out).await?,
        Cmd::Token(TokenCmd::Create {
            ttl,
            uses,
            auto_approve,
            labels,
            allow_labels,
        }) => {
            let created = client
                .create_token(&CreateTokenRequest {
                    ttl_secs: ttl.as_secs().max(1),
                    uses,
                    auto_approve,
                    labels: labels.into_iter().collect(),
                    allowed_labels: allow_labels,
                })
                .await?;
            print(out, &created, || {
                outln!("{}", created.token);
                eprintln!(
                    "token {} valid until {} for {uses} join(s){}. It is shown only once.",
                    created.id,
                    rfc3339(created.expires_at_ms),
                    if auto_approve { ", auto-approved" } else { "" }
                );
            })?;
        }
        Cmd::Token(TokenCmd::List) => {
            let rows = client.tokens().await?;
            print(out, &rows, || {
                outln!(
                    "{:<14} {:<22} {:<6} {:<6} {:<12} {:<9} ALLOWED LABELS",
                    "ID",
                    "EXPIRES",
                    "USED",
                    "USES",
                    "AUTO-APPROVE",
                    "STATE"
                );
                let now = now_ms();
                for t in &rows {
                    let state = if t.revoked_at_ms.is_some() {
                        "revoked"
                    } else if now >= t.expires_at_ms {
                        "expired"
                    } else if t.used >= t.max_uses {
                        "used up"
                    } else {
                        "usable"
                    };
                    outln!(
                        "{:<14} {:<22} {:<6} {:<6} {:<12} {:<9} {}",
                        t.id,
                        rfc3339(t.expires_at_ms),
                        t.used,
                        t.max_uses,
                        t.auto_approve,
                        state,
                        if t.allowed_labels.is_empty() {
                            "(any)".to_string()
                        } else {
                            t.allowed_labels.join(",")
                        }
                    );
                }
            })?;
        }
        Cmd::Token(TokenCmd::Revoke { id }) => {
            let t = client.revoke_token(&id).await?;
            print(out, &t, || {
                outln!(
                    "token {} revoked ({} of {} uses spent); clusters that joined with it are unaffected",
                    t.id, t.used, t.max_uses
                )
            })?;
        }
        Cmd::Clusters(ClustersCmd::List {
            selector,
            sort_by,
            watch,
            watch_interval,
        }) => {
            if watch {
                clusters::watch(
                    &client,
                    &selector,
                    out,
                    watch_interval.max(Duration::from_millis(200)),
                )
                .await?;
            }
            let mut rows: Vec<_> = client
                .clusters()
                .await?
                .into_iter()
                .filter(|c| selector.matches(c))
                .collect();
            clusters::sort(&mut rows, sort_by);
            print(out, &rows, || clusters::table(&rows, out))?;
        }
        Cmd::Clusters(ClustersCmd::Label {
            name,
            changes,
            overwrite,
        }) => {
            let req = clusters::parse_label_changes(&changes)?;
            if !overwrite {
                clusters::check_overwrite(&client.cluster(&name).await?.labels, &req, overwrite)?;
            }
            let c = client.set_labels(&name, &req).await?;
            print(out, &c, || {
                outln!(
                    "cluster {name} labeled: {}",
                    clusters::labels_str(&c.labels)
                )
            })?;
        }
        Cmd::Clusters(ClustersCmd::Get { name }) => {
            let c = client.cluster(&name).await?;
            print(out, &c, || {
                clusters::table(std::slice::from_ref(&c), out);
                outln!();
                outln!(
                    "facts: os={} cpus={} memory={}MiB hostname={} kubernetes={}",
                    c.facts.os,
                    c.facts.cpus,
                    c.facts.memory_bytes >> 20,
                    c.facts.hostname,
                    c.facts.kubernetes_version.as_deref().unwrap_or("-")
                );
                outln!("pinned: {}", clusters::pins_str(&c));
                outln!("certificate serial: {}", c.cert_serial);
                for cond in &c.conditions {
                    outln!(
                        "condition {}={} ({}): {}",
                        cond.kind,
                        cond.status,
                        cond.reason,
                        cond.message
                    );
                }
            })?;
        }
        Cmd::Clusters(ClustersCmd::Pending) => {
            let rows: Vec<_> = client
                .join_requests()
                .await?
                .into_iter()
                .filter(|r| r.state == tether_hub::api::JoinState::Pending)
                .collect();
            print(out, &rows, || {
                if rows.is_empty() {
                    outln!("No pending join requests.");
                } else {
                    clusters::pending_table(&rows);
                }
            })?;
        }
        Cmd::Clusters(ClustersCmd::Approve { name }) => {
            let r = client.approve(&name).await?;
            print(out, &r, || {
                outln!(
                    "cluster {name} approved; its agent receives its certificate on its next poll"
                )
            })?;
        }
        Cmd::Clusters(ClustersCmd::Deny { name, reason }) => {
            let r = client.deny(&name, &reason).await?;
            print(out, &r, || {
                outln!(
                    "cluster {name} denied{}",
                    if r.session_closed {
                        "; live session closed"
                    } else {
                        ""
                    }
                )
            })?;
        }
        Cmd::Clusters(ClustersCmd::PinFacts {
            name,
            arch,
            os,
            cpus,
            kubernetes_version,
            reported,
            unpin,
        }) => {
            let req = tether_hub::api::PinFactsRequest {
                arch,
                os,
                cpus,
                kubernetes_version,
                reported,
                unpin,
            };
            if req == tether_hub::api::PinFactsRequest::default() {
                bail!("nothing to pin: give --arch, --os, --cpus, --kubernetes-version, --reported or --unpin");
            }
            let c = client.pin_facts(&name, &req).await?;
            print(out, &c, || {
                outln!("cluster {name}: pinned {}", clusters::pins_str(&c))
            })?;
        }
        Cmd::Clusters(ClustersCmd::Detach { name }) => {
            let r = client.detach(&name).await?;
            print(out, &r, || {
                outln!(
                    "cluster {name} detached{}",
                    if r.session_closed {
                        "; live session closed"
                    } else {
                        ""
                    }
                )
            })?;
        }
        Cmd::Apply {
            input,
            dry_run: _,
            force,
        } => {
            let docs = input.documents()?;
            let mut results = Vec::new();
            for doc in &docs {
                results.push(client.apply_work_with(doc, force).await?);
            }
            for r in &results {
                for w in &r.warnings {
                    eprintln!("warning: work/{}: {w}", r.name);
                }
            }
            print(out, &results, || {
                for r in &results {
                    outln!("{}", applied_line(r));
                }
            })?;
        }
        Cmd::Works(WorksCmd::Sync { name }) => {
            let r = client.sync_work(&name).await?;
            print(out, &r, || outln!("{}", applied_line(&r)))?;
        }
        Cmd::Works(WorksCmd::ConfirmRemoval { name, cluster }) => {
            let r = client.confirm_removal(&name, &cluster).await?;
            print(out, &r, || {
                if r.was_held {
                    outln!("the held deletion of {name} on {cluster} goes ahead on the agent's next pass");
                } else {
                    outln!("{cluster} was not holding a deletion of {name}; the confirmation lets the next one through");
                }
            })?;
        }
        Cmd::Diff { input, cluster } => {
            let docs = input.documents()?;
            if diff::diff(&client, &docs, cluster.as_deref()).await? {
                std::process::exit(1);
            }
        }
        Cmd::Get(GetCmd::Works) => {
            let rows = client.works().await?;
            print(out, &rows, || {
                outln!(
                    "{:<24} {:>4} {:>8} {:>9} {:>7} {:>9} {:>6}  UPDATED",
                    "NAME",
                    "GEN",
                    "TARGETED",
                    "DELIVERED",
                    "APPLIED",
                    "AVAILABLE",
                    "FAILED"
                );
                for w in &rows {
                    outln!(
                        "{:<24} {:>4} {:>8} {:>9} {:>7} {:>9} {:>6}  {}{}",
                        w.name,
                        w.generation,
                        w.targeted,
                        w.delivered,
                        w.applied,
                        w.available,
                        w.failed,
                        ago(Some(w.updated_at_ms)),
                        if w.deleted { " (deleting)" } else { "" }
                    );
                }
            })?;
        }
        Cmd::Describe(DescribeCmd::Work {
            name,
            cluster: Some(cluster),
            rendered: true,
        }) => {
            let manifests = client.rendered(&name, &cluster).await?;
            match out {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&manifests)?),
                _ => {
                    for m in &manifests {
                        outln!("---");
                        out!("{}", serde_yaml_ng::to_string(m)?);
                    }
                }
            }
        }
        Cmd::Get(GetCmd::Placement { work }) => {
            let rows = client.placement(&work).await?;
            print(out, &rows, || {
                outln!("{:<24} {:<9} REASON", "CLUSTER", "SELECTED");
                for c in &rows {
                    outln!(
                        "{:<24} {:<9} {}",
                        c.cluster,
                        if c.selected { "yes" } else { "no" },
                        c.reason
                    );
                }
            })?;
        }
        Cmd::Rollout(RolloutCmd::Status { work, watch }) => {
            rollout::status(&client, out, &work, watch).await?;
        }
        Cmd::Rollout(RolloutCmd::Pause { work }) => {
            client.rollout_action(&work, "pause", None).await?;
            outln!("rollout of work/{work} paused");
        }
        Cmd::Rollout(RolloutCmd::Resume { work }) => {
            client.rollout_action(&work, "resume", None).await?;
            outln!("rollout of work/{work} resumed");
        }
        Cmd::Rollout(RolloutCmd::History { work }) => {
            let rows = client.history(&work).await?;
            print(out, &rows, || {
                outln!("{:<11} {:>9}  SOURCE", "GENERATION", "MANIFESTS");
                for r in &rows {
                    let mut source = r.source.clone().unwrap_or_else(|| "-".into());
                    if let Some(g) = r.restores {
                        source = format!("undo: restores generation {g}");
                    }
                    let generation =
                        format!("{}{}", r.generation, if r.current { " *" } else { "" });
                    outln!("{generation:<11} {:>9}  {source}", r.manifests);
                }
            })?;
        }
        Cmd::Rollout(RolloutCmd::Undo {
            work,
            to_generation,
        }) => {
            let r = client.rollout_action(&work, "undo", to_generation).await?;
            outln!(
                "work/{work} rolled back: generation {} restores the earlier spec on every selected cluster",
                r["generation"]
            );
        }
        Cmd::Describe(DescribeCmd::Work { name, .. }) => {
            let d = client.work(&name).await?;
            print(out, &d, || {
                let s = &d.summary;
                outln!(
                    "work {} generation {}{}: {} targeted, {} delivered, {} applied, {} available, {} failed",
                    s.name,
                    s.generation,
                    if s.deleted { " (deleted; cleaning up)" } else { "" },
                    s.targeted,
                    s.delivered,
                    s.applied,
                    s.available,
                    s.failed
                );
                if let Some(src) = &d.document.spec.source {
                    let g = &src.git;
                    let commit = g.commit.as_deref().unwrap_or("-");
                    outln!(
                        "source: git {} revision {} path {} at commit {commit}",
                        g.repository,
                        g.revision,
                        if g.path.is_empty() { "." } else { &g.path }
                    );
                    if let Some(c) = &d.source_check {
                        match &c.error {
                            Some(e) => {
                                outln!("last check {}: failed: {e}", ago(Some(c.checked_at_ms)))
                            }
                            None => {
                                let seen = c.commit.as_deref().unwrap_or("-");
                                let note = if Some(seen) == g.commit.as_deref() {
                                    String::new()
                                } else {
                                    format!(" (commit {seen}: nothing changed under the path)")
                                };
                                outln!("last check {}: ok{note}", ago(Some(c.checked_at_ms)))
                            }
                        }
                    }
                }
                outln!();
                outln!(
                    "{:<24} {:<8} {:>9} {:>7} {:<10} {:<10} CONDITIONS / LAST ERROR",
                    "CLUSTER",
                    "TARGETED",
                    "DELIVERED",
                    "APPLIED",
                    "PHASE",
                    "OBSERVED"
                );
                let g = |g: Option<u64>| g.map_or("-".to_string(), |g| g.to_string());
                for c in &d.clusters {
                    let conds: Vec<String> = c
                        .conditions
                        .iter()
                        .map(|k| format!("{}={}", k.kind, k.status))
                        .collect();
                    let tail = if c.message.is_empty() {
                        conds.join(",")
                    } else {
                        format!("{} {}", conds.join(","), c.message)
                    };
                    outln!(
                        "{:<24} {:<8} {:>9} {:>7} {:<10} {:<10} {}",
                        c.cluster,
                        if c.targeted { "yes" } else { "removing" },
                        g(c.delivered_generation),
                        g(c.applied_generation),
                        c.phase.map_or("-", |p| p.as_str()),
                        ago(c.observed_at_ms),
                        tail
                    );
                }
            })?;
        }
        Cmd::Delete(DeleteCmd::Work { name, orphan }) => {
            let r = client.delete_work(&name, orphan).await?;
            print(out, &r, || {
                outln!(
                    "work/{name} deleted; clusters {} as they are reached",
                    if orphan {
                        "stop managing its objects (left in place)"
                    } else {
                        "remove its objects"
                    }
                )
            })?;
        }
        Cmd::Version => {
            let v = client.version().await?;
            let both = serde_json::json!({"tetherctl": env!("CARGO_PKG_VERSION"), "hub": v});
            print(out, &both, || {
                outln!("tetherctl {}", env!("CARGO_PKG_VERSION"));
                outln!(
                    "hub {} (wire protocol {}) at {}",
                    v.version,
                    v.protocol_version,
                    cfg.admin_address
                );
            })?;
        }
        Cmd::Completion { shell } => completion(shell),
        Cmd::Audit {
            limit,
            kind,
            cluster,
            actor,
            since,
            until,
            before,
        } => {
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            let filter = AuditFilter {
                kind,
                cluster,
                actor,
                since_ms: since,
                until_ms: until,
            };
            let (rows, older) = client.audit_search(&filter, before, limit).await?;
            if let Some(seq) = older {
                // On stderr, so that -o json stays parseable.
                eprintln!("older events may exist: repeat with --before {seq}");
            }
            print(out, &rows, || {
                for e in &rows {
                    outln!(
                        "{:>6} {} {:<20} {:<16} {:<20} {}",
                        e.seq,
                        rfc3339(e.at_ms),
                        e.kind,
                        e.cluster.as_deref().unwrap_or("-"),
                        e.actor,
                        e.detail
                    );
                }
            })?;
        }
    }
    Ok(())
}
