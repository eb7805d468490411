//! Tether hub: registration (double opt-in), authenticated agent sessions, cluster health, and
//! the admin API used by `tetherctl`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod api;
pub mod backup;
pub(crate) mod budget;
pub mod committer;
pub mod config;
pub mod controller;
pub mod ctl;
pub(crate) mod decide;
pub mod delivery;
pub(crate) mod facts;
pub mod health;
pub mod hub;
pub mod init;
pub mod metrics;
pub mod pki;
pub mod placement;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod scope;
pub mod server;
pub mod sessions;
pub mod singleton;
pub mod status;
pub mod util;
pub mod windows;
pub mod work_views;
pub mod works;

pub use hub::{start, HubConfig, RunningHub};
