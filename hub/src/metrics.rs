//! Prometheus metrics served on the admin listener at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlpnLabel {
    pub alpn: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabel {
    /// `hub`, `ca` or `admin:<name>`.
    pub cert: String,
}

pub struct Metrics {
    registry: Registry,
    pub live_sessions: Gauge,
    pub handshakes_accepted: Family<AlpnLabel, Counter>,
    pub handshakes_rejected: Family<ReasonLabel, Counter>,
    pub heartbeats: Counter,
    pub heartbeat_datagrams: Counter,
    pub clusters: Family<StateLabel, Gauge>,
    pub join_requests: Family<ReasonLabel, Counter>,
    pub audit_dropped: Counter,
    pub deliveries: Counter,
    pub deliveries_refused: Counter,
    pub delivered_bytes: Counter,
    /// Deliveries whose content went as a patch against what the agent held.
    pub deliveries_patched: Counter,
    pub status_entries: Counter,
    pub status_duplicates: Counter,
    pub status_gaps: Counter,
    /// Input from clusters dropped or refused as not theirs or over a budget (see `scope`).
    pub cluster_input_refused: Family<ReasonLabel, Counter>,
    pub admin_connections: Gauge,
    pub admin_connections_refused: Family<ReasonLabel, Counter>,
    pub admin_unauthorized: Counter,
    pub admin_forbidden: Counter,
    /// Hub replicas on PostgreSQL (see `replicas`).
    pub lease_holder: Gauge,
    pub replicas_live: Gauge,
    pub feed_changes: Counter,
    pub feed_relists: Counter,
    pub certificate_expiry: Family<CertLabel, Gauge>,
    /// 1 while the hub's own store fails (disk full, damaged file); refreshed on each scrape.
    pub store_failing: Gauge,
    pub store_failures: Gauge,
    /// Clusters whose last heartbeat carried `StoreUnavailable=True`.
    pub clusters_store_unavailable: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tether_hub");
        let live_sessions = Gauge::default();
        let handshakes_accepted = Family::<AlpnLabel, Counter>::default();
        let handshakes_rejected = Family::<ReasonLabel, Counter>::default();
        let heartbeats = Counter::default();
        let heartbeat_datagrams = Counter::default();
        let clusters = Family::<StateLabel, Gauge>::default();
        let join_requests = Family::<ReasonLabel, Counter>::default();
        let audit_dropped = Counter::default();
        let store_failing = Gauge::default();
        let store_failures = Gauge::default();
        let clusters_store_unavailable = Gauge::default();
        registry.register(
            "store_failing",
            "1 while the hub database fails (I/O error, damage); /healthz answers 503 then",
            store_failing.clone(),
        );
        registry.register(
            "store_failures",
            "Failed hub database operations since start (I/O errors, damage, failed reopens)",
            store_failures.clone(),
        );
        registry.register(
            "clusters_store_unavailable",
            "Clusters whose agent reports its own store failing (condition StoreUnavailable)",
            clusters_store_unavailable.clone(),
        );
        registry.register(
            "live_sessions",
            "Authenticated agent sessions currently open",
            live_sessions.clone(),
        );
        registry.register(
            "handshakes_accepted",
            "Connections accepted, by ALPN",
            handshakes_accepted.clone(),
        );
        registry.register(
            "handshakes_rejected",
            "Connections rejected, by reason",
            handshakes_rejected.clone(),
        );
        registry.register("heartbeats", "Heartbeats received", heartbeats.clone());
        registry.register(
            "heartbeat_datagrams",
            "Heartbeats received as datagrams (counted in heartbeats too)",
            heartbeat_datagrams.clone(),
        );
        registry.register(
            "clusters",
            "Registered clusters by health state",
            clusters.clone(),
        );
        registry.register(
            "join_requests",
            "Join requests by outcome",
            join_requests.clone(),
        );
        registry.register(
            "audit_events_dropped",
            "Rate-limited audit events (handshake rejections) dropped because the queue was full",
            audit_dropped.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "deliveries",
            "Work updates and removals acknowledged by agents",
            deliveries.clone(),
        );
        let deliveries_refused = Counter::default();
        registry.register(
            "deliveries_refused",
            "Work deliveries an agent refused",
            deliveries_refused.clone(),
        );
        let delivered_bytes = Counter::default();
        registry.register(
            "delivered_bytes",
            "Compressed bundle bytes sent to agents (whole bundles and patches)",
            delivered_bytes.clone(),
        );
        let deliveries_patched = Counter::default();
        registry.register(
            "deliveries_patched",
            "Deliveries sent as a patch against the content the agent held",
            deliveries_patched.clone(),
        );
        let status_entries = Counter::default();
        registry.register(
            "status_entries",
            "Status entries stored",
            status_entries.clone(),
        );
        let status_duplicates = Counter::default();
        registry.register(
            "status_duplicates",
            "Status entries dropped because they were already stored (resends)",
            status_duplicates.clone(),
        );
        let status_gaps = Counter::default();
        registry.register(
            "status_gaps",
            "Status batches that skipped sequence numbers (lost entries; should stay 0)",
            status_gaps.clone(),
        );
        let cluster_input_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "cluster_input_refused",
            "Input from authenticated clusters dropped or refused, by reason (foreign_status: about a work not theirs; foreign_inventory; rate_limited; too_many_entries)",
            cluster_input_refused.clone(),
        );
        let admin_connections = Gauge::default();
        registry.register(
            "admin_connections",
            "Admin API connections currently open (authenticated or not)",
            admin_connections.clone(),
        );
        let admin_connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "admin_connections_refused",
            "Admin API connections closed by the connection limits: evicted (oldest unauthenticated connection, to make room) or admin_limit (too many admin connections)",
            admin_connections_refused.clone(),
        );
        let admin_unauthorized = Counter::default();
        registry.register(
            "admin_unauthorized",
            "Admin API requests refused with 401 (no admin certificate)",
            admin_unauthorized.clone(),
        );
        let admin_forbidden = Counter::default();
        registry.register(
            "admin_forbidden",
            "Admin API requests refused with 403 (the credential's role or scope does not allow it)",
            admin_forbidden.clone(),
        );
        let lease_holder = Gauge::default();
        registry.register(
            "lease_holder",
            "1 while this hub replica holds the database lease and decides (PostgreSQL only)",
            lease_holder.clone(),
        );
        let replicas_live = Gauge::default();
        registry.register(
            "replicas_live",
            "Hub replicas whose liveness row has not expired, as this replica last read it",
            replicas_live.clone(),
        );
        let feed_changes = Counter::default();
        registry.register(
            "change_feed_entries",
            "Change-feed entries this replica read (its own writes included, then skipped)",
            feed_changes.clone(),
        );
        let feed_relists = Counter::default();
        registry.register(
            "change_feed_relists",
            "Times this replica read every cached table again (at start, or after falling behind the feed)",
            feed_relists.clone(),
        );
        let certificate_expiry = Family::<CertLabel, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "When a certificate of the hub expires, in seconds since the Unix epoch (alert on this minus time())",
            certificate_expiry.clone(),
        );
        Self {
            registry,
            admin_connections,
            admin_connections_refused,
            admin_unauthorized,
            admin_forbidden,
            lease_holder,
            replicas_live,
            feed_changes,
            feed_relists,
            certificate_expiry,
            store_failing,
            store_failures,
            clusters_store_unavailable,
            live_sessions,
            handshakes_accepted,
            handshakes_rejected,
            heartbeats,
            heartbeat_datagrams,
            clusters,
            join_requests,
            audit_dropped,
            deliveries,
            deliveries_refused,
            delivered_bytes,
            deliveries_patched,
            status_entries,
            status_duplicates,
            status_gaps,
            cluster_input_refused,
        }
    }

    pub fn refuse_cluster_input(&self, reason: &str, n: u64) {
        self.cluster_input_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    pub fn reject(&self, reason: &str) {
        self.handshakes_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn set_certificate_expiry(&self, certs: &[crate::identity::pki::CertExpiry]) {
        for c in certs {
            self.certificate_expiry
                .get_or_create(&CertLabel {
                    cert: c.label.clone(),
                })
                .set(c.not_after_s);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
