//! Tether hub: registration (double opt-in), authenticated agent sessions, cluster health,
//! work placement and delivery, and the admin API used by `tetherctl`.
//!
//! Layers, bottom up (no module imports one above it): `api`, `config`, `util` (leaves);
//! `decide` (pure decisions) over `works` (the catalog); `fleet`, `identity`, `limits`,
//! `ingest`; `state` (what the shells share); the shells `controller`, `delivery`, `net`,
//! `admin`; `replicas` (several hub processes on one PostgreSQL database) and `app` wire them
//! together.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod api;
pub(crate) mod app;
pub mod backup;
pub mod config;
pub(crate) mod controller;
pub(crate) mod decide;
pub(crate) mod delivery;
pub(crate) mod fleet;
pub(crate) mod identity;
pub(crate) mod ingest;
pub(crate) mod lease;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod replicas;
pub(crate) mod state;
pub mod util;
pub(crate) mod works;

pub use admin::client::{parse_work_documents, AdminClient};
pub use app::{start, RunningHub};
pub use decide::RolloutView;
pub use identity::init::{init, InitOptions};
pub use state::{HubConfig, HubState};
pub use works::manifests::{build_works, kustomize, read_inputs, ManifestError, WrapOptions};

/// Parts the simulator, the benchmarks and the end-to-end tests drive directly, below the
/// running hub.
pub mod parts {
    pub use crate::controller::cost::{measure as controller_cost, ControllerCost};
    pub use crate::identity::pki;
    pub use crate::identity::registry::{Registry, TokenSpec, RENEWALS_PER_DAY};
    pub use crate::ingest::history::{all_history, file as file_history, history_of, FILE_AT};
    pub use crate::ingest::status::{ingest, Ingested};
    pub use crate::limits::admission::MAX_JOINS_PER_SOURCE;
    pub use crate::limits::scope::Scope;
    pub use crate::works::render::{matching_rules, render};
    pub use crate::works::windows::{is_open as window_is_open, validate as window_validate};
}
