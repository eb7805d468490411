//! `tether-hub init`: create the CA, the hub's serving certificate, the first admin credential,
//! the database and a ready-to-use `tetherctl.yaml`.

use crate::config::{CtlConfig, DataDir};
use crate::identity::pki;
use crate::util::write_private;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use tether_store::hub::{AdminRecord, ADMINS};

use tether_transport::certs;

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub data_dir: DataDir,
    pub hub_name: String,
    pub sans: Vec<String>,
    /// Where the admin API will listen; written into tetherctl.yaml.
    pub admin_listen: SocketAddr,
    /// Where the hub's tables go (the data directory holds the keys either way).
    pub store: crate::config::StoreLocation,
}

#[derive(Debug, Clone)]
pub struct InitReport {
    pub ca_sha256: String,
    pub ctl_config: std::path::PathBuf,
}

fn validate_host(name: &str) -> anyhow::Result<()> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        bail!("{name:?} is not a valid DNS name or IP address");
    }
    Ok(())
}

pub fn init(opts: &InitOptions, now_ms: u64) -> anyhow::Result<InitReport> {
    validate_host(&opts.hub_name).context("--hub-name")?;
    for san in &opts.sans {
        validate_host(san).context("--san")?;
    }
    let dir = &opts.data_dir;
    for existing in [dir.ca_cert(), dir.ca_key(), dir.database()] {
        if existing.exists() {
            bail!(
                "{} is already initialised ({} exists); refusing to overwrite the hub's identity. \
                 Use another --data-dir, or remove this one if you really mean to start over \
                 (every joined agent will then have to join again)",
                dir.root.display(),
                existing.display()
            );
        }
    }
    std::fs::create_dir_all(&dir.root)
        .with_context(|| format!("creating {}", dir.root.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.root.display()))?;
    }

    let m = pki::generate(&opts.hub_name, &opts.sans, now_ms)?;
    let write = |path: std::path::PathBuf, data: &str| {
        write_private(&path, data.as_bytes()).with_context(|| format!("writing {}", path.display()))
    };
    write(dir.ca_cert(), &m.ca_pem)?;
    write(dir.ca_key(), &m.ca_key_pem)?;
    write(dir.hub_cert(), &format!("{}{}", m.hub_cert_pem, m.ca_pem))?;
    write(dir.hub_key(), &m.hub_key_pem)?;
    write(dir.admin_cert(), &m.admin_cert_pem)?;
    write(dir.admin_key(), &m.admin_key_pem)?;

    let admin_fp = certs::inspect_pem(&m.admin_cert_pem)?.sha256;
    let store = opts
        .store
        .open(dir, true)
        .with_context(|| format!("creating the hub database {}", opts.store.describe(dir)))?;
    store.write(|tx| {
        // A database another hub uses: its agents and admins are not this CA's.
        if tx.count(&ADMINS)? > 0 {
            return Err(anyhow::anyhow!(
                "{} already holds a hub; refusing to mix a second hub's identity into it",
                opts.store.describe(dir)
            ));
        }
        tx.put(
            &ADMINS,
            &admin_fp,
            &AdminRecord {
                name: "tether-admin".into(),
                created_at_ms: now_ms,
                role: tether_store::hub::AdminRole::Admin,
                scope: Default::default(),
                // The hub checks this certificate's file at start (`check_certificates`).
                not_after_ms: None,
            },
        )?;
        Ok::<_, anyhow::Error>(())
    })?;

    let admin_host = if opts.admin_listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        opts.admin_listen.ip().to_string()
    };
    let ctl = CtlConfig {
        admin_address: SocketAddr::new(
            admin_host.parse().context("admin address")?,
            opts.admin_listen.port(),
        )
        .to_string(),
        server_name: if opts.admin_listen.ip().is_loopback()
            || opts.admin_listen.ip().is_unspecified()
        {
            "localhost".to_string()
        } else {
            opts.hub_name.clone()
        },
        ca_pem: m.ca_pem.clone(),
        cert_pem: m.admin_cert_pem,
        key_pem: m.admin_key_pem,
    };
    write(dir.ctl_config(), &ctl.to_yaml())?;

    let ca_der = certs::certs_from_pem(&m.ca_pem, "CA")?;
    Ok(InitReport {
        ca_sha256: certs::fingerprint(&ca_der[0]),
        ctl_config: dir.ctl_config(),
    })
}
