//! On-disk layout of a hub data directory and the `tetherctl.yaml` credential file.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Files of a hub data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// Hub serving certificate followed by the CA (the chain the hub presents).
    pub fn hub_cert(&self) -> PathBuf {
        self.root.join("hub.pem")
    }
    pub fn hub_key(&self) -> PathBuf {
        self.root.join("hub.key")
    }
    pub fn admin_cert(&self) -> PathBuf {
        self.root.join("admin.pem")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin.key")
    }
    pub fn ctl_config(&self) -> PathBuf {
        self.root.join("tetherctl.yaml")
    }
    /// Bare clones of the git repositories works fetch their manifests from.
    pub fn git_cache(&self) -> PathBuf {
        self.root.join("git")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("hub.redb")
    }
    /// Secret behind QUIC stateless resets and connection-ID checks; it must survive restarts.
    pub fn reset_secret(&self) -> PathBuf {
        self.root.join("stateless-reset.key")
    }
}

/// Where the hub's tables live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// `hub.redb` in the data directory: one hub process, no other service to run.
    #[default]
    Embedded,
    /// A PostgreSQL database (`postgres://user[:password]@host[:port]/db`, or `key=value` form).
    /// TLS and its CA are URL parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`), read
    /// by the store (`tether_store`'s pg_tls), so one string says everything about the link.
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://...` (or `postgresql://`, or a `key=value` string) is PostgreSQL; the word
    /// `embedded` is the data directory's redb file.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "embedded" {
            Ok(StoreLocation::Embedded)
        } else if s.starts_with("postgres://")
            || s.starts_with("postgresql://")
            || s.contains("dbname=")
            || s.contains("host=")
        {
            Ok(StoreLocation::Postgres(s.to_string()))
        } else {
            Err(format!(
                "{:?} is neither `embedded` nor a PostgreSQL URL (postgres://user@host/db)",
                tether_store::redact(s)
            ))
        }
    }

    /// Open the store of a hub that `init` made: never creates one (`create` is init's).
    pub fn open(
        &self,
        dir: &DataDir,
        create: bool,
    ) -> Result<tether_store::Store, tether_store::StoreError> {
        match (self, create) {
            (StoreLocation::Embedded, true) => tether_store::Store::open(dir.database()),
            (StoreLocation::Embedded, false) => tether_store::Store::open_existing(dir.database()),
            (StoreLocation::Postgres(url), create) => {
                tether_store::Store::open_postgres(url, create)
            }
        }
    }

    /// For messages: the database file, or the URL without its password.
    pub fn describe(&self, dir: &DataDir) -> String {
        match self {
            StoreLocation::Embedded => dir.database().display().to_string(),
            StoreLocation::Postgres(url) => tether_store::redact(url),
        }
    }
}

/// Everything `tetherctl` needs to reach and authenticate to the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtlConfig {
    /// `host:port` of the admin API.
    pub admin_address: String,
    /// Name to verify in the hub's certificate.
    pub server_name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Config files are small; anything bigger is a mistake (or an attack) and is refused.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a valid tetherctl config: {detail}")]
    Parse { path: PathBuf, detail: String },
}

impl CtlConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}
