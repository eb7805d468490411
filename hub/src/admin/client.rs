//! Client for the admin API (used by `tetherctl`, tests and the demo).

use crate::api::*;
use crate::config::CtlConfig;
use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tether_transport::tls;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Per address: a hub machine that is down should not hold up trying the next one.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone)]
pub struct AdminClient {
    /// Every hub's admin address, tried in turn: a standby listens on nothing, so the first
    /// that takes the connection is the serving hub (docs/ha.md).
    addresses: Vec<String>,
    /// The one that answered last, tried first.
    last_good: Arc<std::sync::atomic::AtomicUsize>,
    /// For messages: every address.
    address: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
}

impl AdminClient {
    pub fn new(cfg: &CtlConfig) -> anyhow::Result<Self> {
        let cert = Arc::new(
            tls::SwappableClientCert::new(&cfg.cert_pem, &cfg.key_pem)
                .context("admin credential in the config file")?,
        );
        let tls = tls::session_client_config(&cfg.ca_pem, cert, b"http/1.1")
            .context("CA in the config file")?;
        let server_name = ServerName::try_from(cfg.server_name.clone())
            .map_err(|_| anyhow!("invalid server_name {:?} in config", cfg.server_name))?;
        let addresses: Vec<String> = cfg
            .admin_address
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addresses.is_empty() {
            bail!("no admin address in the config (admin_address) or --server");
        }
        Ok(Self {
            addresses,
            last_good: Arc::default(),
            address: cfg.admin_address.clone(),
            server_name,
            tls: Arc::new(tls),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Bytes> {
        tokio::time::timeout(TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                anyhow!(
                    "admin API at {} did not answer within {TIMEOUT:?}",
                    self.address
                )
            })?
    }

    /// A connection to the first address that takes one, starting with the last that did.
    async fn connect(&self) -> anyhow::Result<(tokio::net::TcpStream, String)> {
        let n = self.addresses.len();
        let first = self.last_good.load(std::sync::atomic::Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let address = &self.addresses[i];
            let tried =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
                    .await;
            match tried {
                Ok(Ok(tcp)) => {
                    self.last_good
                        .store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok((tcp, address.clone()));
                }
                Ok(Err(e)) => failures.push(format!("{address}: {e}")),
                Err(_) => failures.push(format!("{address}: no answer within {CONNECT_TIMEOUT:?}")),
            }
        }
        bail!(
            "connecting to the admin API ({}) (is `tether-hub serve` running? a standby hub does not listen)",
            failures.join("; ")
        )
    }

    /// Whether `e` is the admin API's answer that the resource does not exist.
    pub fn is_not_found(e: &anyhow::Error) -> bool {
        e.downcast_ref::<ApiStatus>()
            .is_some_and(|s| s.status == StatusCode::NOT_FOUND.as_u16())
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Bytes> {
        let (tcp, address) = self.connect().await?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let stream = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS with the admin API at {}", self.address))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let payload = match &body {
            Some(v) => serde_json::to_vec(v)?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", address.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the admin API response: {e}"))?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow::Error::new(ApiStatus {
                status: status.as_u16(),
                message: msg,
            }));
        }
        Ok(bytes)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let bytes = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).context("decoding the admin API response")
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        let bytes = self.call(Method::POST, path, Some(body)).await?;
        serde_json::from_slice(&bytes).context("decoding the admin API response")
    }

    pub async fn version(&self) -> anyhow::Result<crate::api::VersionView> {
        self.get("/v1/version").await
    }

    pub async fn clusters(&self) -> anyhow::Result<Vec<ClusterView>> {
        self.get("/v1/clusters").await
    }

    pub async fn cluster(&self, name: &str) -> anyhow::Result<ClusterView> {
        self.get(&format!("/v1/clusters/{name}")).await
    }

    pub async fn join_requests(&self) -> anyhow::Result<Vec<JoinRequestView>> {
        self.get("/v1/join-requests").await
    }

    pub async fn approve(&self, name: &str) -> anyhow::Result<ActionResult> {
        self.post(
            &format!("/v1/clusters/{name}/approve"),
            serde_json::json!({}),
        )
        .await
    }

    pub async fn deny(&self, name: &str, reason: &str) -> anyhow::Result<ActionResult> {
        self.post(
            &format!("/v1/clusters/{name}/deny"),
            serde_json::json!({ "reason": reason }),
        )
        .await
    }

    pub async fn pin_facts(
        &self,
        name: &str,
        req: &crate::api::PinFactsRequest,
    ) -> anyhow::Result<ClusterView> {
        self.post(
            &format!("/v1/clusters/{name}/facts"),
            serde_json::to_value(req)?,
        )
        .await
    }

    pub async fn set_labels(
        &self,
        name: &str,
        req: &crate::api::LabelsRequest,
    ) -> anyhow::Result<ClusterView> {
        self.post(
            &format!("/v1/clusters/{name}/labels"),
            serde_json::to_value(req)?,
        )
        .await
    }

    pub async fn backup(&self, to: &str) -> anyhow::Result<BackupInfo> {
        self.post("/v1/backup", serde_json::json!({ "to": to }))
            .await
    }

    pub async fn detach(&self, name: &str) -> anyhow::Result<ActionResult> {
        self.post(
            &format!("/v1/clusters/{name}/detach"),
            serde_json::json!({}),
        )
        .await
    }

    pub async fn add_admin(&self, req: &AddAdminRequest) -> anyhow::Result<AdminIssued> {
        self.post("/v1/admins", serde_json::to_value(req)?).await
    }

    pub async fn renew_admin(
        &self,
        name: &str,
        req: &RenewAdminRequest,
    ) -> anyhow::Result<AdminIssued> {
        self.post(
            &format!("/v1/admins/{name}/renew"),
            serde_json::to_value(req)?,
        )
        .await
    }

    pub async fn admins(&self) -> anyhow::Result<Vec<AdminView>> {
        self.get("/v1/admins").await
    }

    pub async fn revoke_admin(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        self.post(&format!("/v1/admins/{name}/revoke"), serde_json::json!({}))
            .await
    }

    pub async fn confirm_removal(
        &self,
        work: &str,
        cluster: &str,
    ) -> anyhow::Result<ConfirmRemovalResult> {
        self.post(
            &format!("/v1/works/{work}/confirm-removal"),
            serde_json::json!({ "cluster": cluster }),
        )
        .await
    }

    pub async fn whoami(&self) -> anyhow::Result<WhoAmI> {
        self.get("/v1/whoami").await
    }

    pub async fn create_token(&self, req: &CreateTokenRequest) -> anyhow::Result<CreatedToken> {
        self.post("/v1/tokens", serde_json::to_value(req)?).await
    }

    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenView>> {
        self.get("/v1/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> anyhow::Result<TokenView> {
        self.post(&format!("/v1/tokens/{id}/revoke"), serde_json::json!({}))
            .await
    }

    /// The newest `limit` audit events, oldest first.
    pub async fn audit(&self, limit: usize) -> anyhow::Result<Vec<AuditView>> {
        self.get(&format!("/v1/audit?limit={limit}")).await
    }

    /// One page of matching audit events below `before` (see `AuditPage`).
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<AuditPage> {
        let mut q = vec![format!("limit={limit}")];
        let mut text = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                q.push(format!("{k}={}", percent_encode(v)));
            }
        };
        text("kind", &filter.kind);
        text("cluster", &filter.cluster);
        text("actor", &filter.actor);
        for (k, v) in [
            ("since", filter.since_ms),
            ("until", filter.until_ms),
            ("before", before),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={v}"));
            }
        }
        self.get(&format!("/v1/audit/page?{}", q.join("&"))).await
    }

    /// Up to `limit` matching events below `before`, newest ones, following the hub's cursors
    /// over as many pages as it takes. Returns them oldest first, with the cursor to continue
    /// (`None`: nothing older matches).
    pub async fn audit_search(
        &self,
        filter: &AuditFilter,
        mut before: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<(Vec<AuditView>, Option<u64>)> {
        let mut out: Vec<AuditView> = Vec::new();
        loop {
            let page = self.audit_page(filter, before, limit - out.len()).await?;
            // Pages go backwards: prepend the older page.
            let mut events = page.events;
            events.append(&mut out);
            out = events;
            before = page.next_before;
            if out.len() >= limit || before.is_none() {
                return Ok((out, before));
            }
        }
    }

    pub async fn apply_work(
        &self,
        doc: &tether_protocol::work::WorkDocument,
    ) -> anyhow::Result<ApplyResult> {
        self.apply_work_with(doc, false).await
    }

    /// `force`: apply even when another work manages one of its objects on a cluster both
    /// would hold (the hub answers 409 otherwise); the conflict comes back as a warning.
    pub async fn apply_work_with(
        &self,
        doc: &tether_protocol::work::WorkDocument,
        force: bool,
    ) -> anyhow::Result<ApplyResult> {
        let path = if force {
            "/v1/works?force=true"
        } else {
            "/v1/works"
        };
        let bytes = self
            .call(Method::PUT, path, Some(serde_json::to_value(doc)?))
            .await?;
        serde_json::from_slice(&bytes).context("decoding the admin API response")
    }

    /// Look at a git-sourced work's repository now and apply what its revision names.
    pub async fn sync_work(&self, name: &str) -> anyhow::Result<ApplyResult> {
        self.post(&format!("/v1/works/{name}/sync"), serde_json::json!({}))
            .await
    }

    pub async fn works(&self) -> anyhow::Result<Vec<WorkSummary>> {
        self.get("/v1/works").await
    }

    pub async fn work(&self, name: &str) -> anyhow::Result<WorkDetail> {
        self.get(&format!("/v1/works/{name}")).await
    }

    pub async fn delete_work(&self, name: &str, orphan: bool) -> anyhow::Result<DeleteResult> {
        let bytes = self
            .call(
                Method::DELETE,
                &format!("/v1/works/{name}?orphan={orphan}"),
                None,
            )
            .await?;
        serde_json::from_slice(&bytes).context("decoding the admin API response")
    }

    pub async fn placement(&self, work: &str) -> anyhow::Result<Vec<Choice>> {
        self.get(&format!("/v1/works/{work}/placement")).await
    }

    pub async fn rollout(&self, work: &str) -> anyhow::Result<RolloutView> {
        self.get(&format!("/v1/works/{work}/rollout")).await
    }

    /// The generations of a work the hub keeps, oldest first.
    pub async fn history(&self, work: &str) -> anyhow::Result<Vec<crate::api::RevisionView>> {
        self.get(&format!("/v1/works/{work}/history")).await
    }

    pub async fn rollout_action(
        &self,
        work: &str,
        action: &str,
        to_generation: Option<u64>,
    ) -> anyhow::Result<serde_json::Value> {
        let path = match to_generation {
            Some(g) => format!("/v1/works/{work}/{action}?to_generation={g}"),
            None => format!("/v1/works/{work}/{action}"),
        };
        self.post(&path, serde_json::json!({})).await
    }

    /// What applying `doc` would deliver (fetched from its git source if it has one), to
    /// `cluster` if given (its overrides applied). Nothing is stored.
    pub async fn render_input(
        &self,
        doc: &tether_protocol::work::WorkDocument,
        cluster: Option<&str>,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let path = match cluster {
            Some(c) => format!("/v1/works/render?cluster={c}"),
            None => "/v1/works/render".to_string(),
        };
        self.post(&path, serde_json::to_value(doc)?).await
    }

    pub async fn rendered(
        &self,
        work: &str,
        cluster: &str,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        self.get(&format!("/v1/works/{work}/rendered/{cluster}"))
            .await
    }

    pub async fn status_log(&self, cluster: &str) -> anyhow::Result<Vec<StatusLogView>> {
        self.get(&format!("/v1/clusters/{cluster}/status-log?limit=100000"))
            .await
    }

    /// Raw GET for endpoints that are not JSON (`/metrics`).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let bytes = self.call(Method::GET, path, None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Percent-encode a query value (everything but unreserved characters).
fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Parse a (multi-document) YAML file of Works. Every problem names its document.
pub fn parse_work_documents(
    text: &str,
) -> anyhow::Result<Vec<tether_protocol::work::WorkDocument>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(de)
            .with_context(|| format!("document {}: not valid YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind != tether_protocol::work::WORK_KIND {
            bail!(
                "document {}: kind {kind:?} is not a Work; put Kubernetes objects under spec.manifests of a `kind: Work` document",
                i + 1
            );
        }
        let doc: tether_protocol::work::WorkDocument = serde_yaml_ng::from_value(value)
            .with_context(|| format!("document {}: not a valid Work", i + 1))?;
        if let Err(errors) = tether_protocol::work::validate(&doc) {
            bail!(
                "document {} (work {:?}): {}",
                i + 1,
                doc.metadata.name,
                errors.join("; ")
            );
        }
        docs.push(doc);
    }
    if docs.is_empty() {
        bail!("no Work documents found");
    }
    Ok(docs)
}

/// A non-success answer of the admin API, kept typed so callers can act on the status code.
#[derive(Debug)]
pub struct ApiStatus {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The caller's own mistakes read as the hub's message; the rest name the status.
        match self.status {
            400 | 404 | 409 | 413 | 422 => write!(f, "{}", self.message),
            s => match StatusCode::from_u16(s) {
                Ok(code) => write!(f, "admin API answered {code}: {}", self.message),
                Err(_) => write!(f, "admin API answered {s}: {}", self.message),
            },
        }
    }
}

impl std::error::Error for ApiStatus {}
