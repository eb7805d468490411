//! `tetherctl admins`: admin credentials with roles and scopes. The key of a new admin is made
//! on that admin's machine (`request`), only its CSR travels; an admin has the hub sign it
//! (`add`), and the new admin puts certificate and key together (`install`).

use crate::out::{outln, print, Output};
use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use tether_hub::api::{AddAdminRequest, AdminIssued, AdminRole, AdminScope, RenewAdminRequest};
use tether_hub::config::CtlConfig;
use tether_hub::util::{rfc3339, write_private};
use tether_hub::AdminClient;
use tether_protocol::names::parse_label;

#[derive(Subcommand)]
pub(crate) enum AdminsCmd {
    /// Make a key and a certificate signing request for a new admin NAME, on this machine:
    /// DIR/NAME.key (kept here, mode 0600) and DIR/NAME.csr (give it to an admin). No hub needed.
    Request {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Have the hub sign NAME's CSR with a role and scope (needs the admin role). Writes what
    /// the new admin needs except its key (hub address, CA, certificate) to --out.
    Add {
        name: String,
        /// viewer (read only), operator (works, rollouts, labels, join approvals within the
        /// scope) or admin (everything, including admins, tokens, detach and backups).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The cluster set the admin may act on: clusters with this label (repeatable, k=v;
        /// all must match). Works it applies reach only these clusters.
        #[arg(long = "scope-label", value_parser = parse_label)]
        scope_labels: Vec<(String, String)>,
        /// A Kubernetes namespace its works may target (repeatable). When given, objects in
        /// other namespaces and cluster-scoped objects are refused.
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// The CSR from `tetherctl admins request`.
        #[arg(long)]
        csr: PathBuf,
        /// Days the certificate is valid (at most 397).
        #[arg(long, default_value_t = 90)]
        valid_days: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Put the file from `admins add` and this machine's key together into a tetherctl config.
    /// No hub needed.
    Install {
        /// The file `admins add --out` wrote.
        issued: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// The tetherctl config to write (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// List admin credentials (needs the admin role).
    List,
    /// Revoke every certificate of NAME; its open connections are closed at once.
    Revoke { name: String },
    /// A new key and certificate for the credential in use (same role and scope), written as
    /// a new tetherctl config to --out. The old certificate stays valid until it expires.
    Renew {
        #[arg(long, default_value_t = 90)]
        valid_days: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Show the credential the hub sees: name, role and scope.
    Whoami,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl From<RoleArg> for AdminRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => AdminRole::Viewer,
            RoleArg::Operator => AdminRole::Operator,
            RoleArg::Admin => AdminRole::Admin,
        }
    }
}

/// What `add` hands over: a tetherctl config without the key.
#[derive(serde::Serialize, serde::Deserialize)]
struct Issued {
    admin_address: String,
    server_name: String,
    ca_pem: String,
    cert_pem: String,
    name: String,
    role: AdminRole,
    scope: AdminScope,
    not_after: String,
}

/// The commands that need no hub; `None` when `cmd` needs one.
pub(crate) fn offline(cmd: &AdminsCmd) -> Option<anyhow::Result<()>> {
    match cmd {
        AdminsCmd::Request { name, dir } => Some(request(name, dir)),
        AdminsCmd::Install { issued, key, out } => Some(install(issued, key, out)),
        _ => None,
    }
}

fn new_key_and_csr(name: &str) -> anyhow::Result<(String, String)> {
    tether_protocol::names::validate_cluster_name(name).context("admin name")?;
    let key = rcgen::KeyPair::generate().context("making a key")?;
    let csr = rcgen::CertificateParams::new(vec![name.to_string()])
        .context("CSR parameters")?
        .serialize_request(&key)
        .context("making the CSR")?
        .pem()
        .context("encoding the CSR")?;
    Ok((key.serialize_pem(), csr))
}

fn request(name: &str, dir: &Path) -> anyhow::Result<()> {
    let (key, csr) = new_key_and_csr(name)?;
    let key_path = dir.join(format!("{name}.key"));
    let csr_path = dir.join(format!("{name}.csr"));
    write_private(&key_path, key.as_bytes())
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::write(&csr_path, csr).with_context(|| format!("writing {}", csr_path.display()))?;
    eprintln!(
        "key {} (keep it here) and CSR {} (give it to an admin: tetherctl admins add {name} --role ... --csr {})",
        key_path.display(),
        csr_path.display(),
        csr_path.display()
    );
    Ok(())
}

fn install(issued: &Path, key: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(issued).with_context(|| format!("reading {}", issued.display()))?;
    let i: Issued = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not a file from `admins add`", issued.display()))?;
    let key_pem =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let cfg = CtlConfig {
        admin_address: i.admin_address,
        server_name: i.server_name,
        ca_pem: i.ca_pem,
        cert_pem: i.cert_pem,
        key_pem,
    };
    // Refuses a key that is not the certificate's.
    AdminClient::new(&cfg).context("the key does not go with the certificate")?;
    write_private(out, cfg.to_yaml().as_bytes())
        .with_context(|| format!("writing {} (it must not exist)", out.display()))?;
    eprintln!(
        "{} is a tetherctl config for {} ({}, {})",
        out.display(),
        i.name,
        i.role.as_str(),
        i.scope
    );
    Ok(())
}

pub(crate) async fn run(
    client: &AdminClient,
    cfg: &CtlConfig,
    cmd: AdminsCmd,
    output: Output,
) -> anyhow::Result<()> {
    match cmd {
        AdminsCmd::Request { .. } | AdminsCmd::Install { .. } => {
            bail!("handled without a hub")
        }
        AdminsCmd::Add {
            name,
            role,
            scope_labels,
            namespaces,
            csr,
            valid_days,
            out,
        } => {
            let csr_pem = std::fs::read_to_string(&csr)
                .with_context(|| format!("reading {}", csr.display()))?;
            let issued = client
                .add_admin(&AddAdminRequest {
                    name,
                    role: role.into(),
                    scope: AdminScope {
                        clusters: scope_labels.into_iter().collect(),
                        namespaces,
                    },
                    csr_pem,
                    valid_days: Some(valid_days),
                })
                .await?;
            write_issued(cfg, &issued, &out)?;
            eprintln!(
                "{} may use the hub as {} ({}) until {}; send it {} (no secret in it) for `tetherctl admins install`",
                issued.name,
                issued.role.as_str(),
                issued.scope,
                rfc3339(issued.not_after_ms),
                out.display()
            );
        }
        AdminsCmd::List => {
            let rows = client.admins().await?;
            print(output, &rows, || {
                outln!(
                    "{:<20} {:<9} {:<22} {:<18} SCOPE",
                    "NAME",
                    "ROLE",
                    "EXPIRES",
                    "FINGERPRINT"
                );
                for a in &rows {
                    outln!(
                        "{:<20} {:<9} {:<22} {:<18} {}",
                        a.name,
                        a.role.as_str(),
                        a.not_after_ms.map_or("-".into(), rfc3339),
                        &a.fingerprint[..a.fingerprint.len().min(16)],
                        a.scope
                    );
                }
            })?;
        }
        AdminsCmd::Revoke { name } => {
            let r: serde_json::Value = client.revoke_admin(&name).await?;
            print(output, &r, || {
                outln!(
                    "admin {name} revoked ({} certificate(s))",
                    r["revoked_certificates"]
                );
            })?;
        }
        AdminsCmd::Renew { valid_days, out } => {
            let me = client.whoami().await?;
            let (key_pem, csr_pem) = new_key_and_csr(&me.name)?;
            let issued = client
                .renew_admin(
                    &me.name,
                    &RenewAdminRequest {
                        csr_pem,
                        valid_days: Some(valid_days),
                    },
                )
                .await?;
            let next = CtlConfig {
                cert_pem: issued.cert_pem,
                key_pem,
                ..cfg.clone()
            };
            write_private(&out, next.to_yaml().as_bytes())
                .with_context(|| format!("writing {} (it must not exist)", out.display()))?;
            eprintln!(
                "{} holds a new credential for {} until {}",
                out.display(),
                me.name,
                rfc3339(issued.not_after_ms)
            );
        }
        AdminsCmd::Whoami => {
            let me = client.whoami().await?;
            print(output, &me, || {
                outln!("{} ({}, {})", me.name, me.role.as_str(), me.scope);
            })?;
        }
    }
    Ok(())
}

fn write_issued(cfg: &CtlConfig, i: &AdminIssued, out: &Path) -> anyhow::Result<()> {
    let issued = Issued {
        admin_address: cfg.admin_address.clone(),
        server_name: cfg.server_name.clone(),
        ca_pem: i.ca_pem.clone(),
        cert_pem: i.cert_pem.clone(),
        name: i.name.clone(),
        role: i.role,
        scope: i.scope.clone(),
        not_after: rfc3339(i.not_after_ms),
    };
    std::fs::write(out, serde_yaml_ng::to_string(&issued)?)
        .with_context(|| format!("writing {}", out.display()))
}
