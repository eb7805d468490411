//! Bringing one agent in line with the hub: the pure plan (what it must receive) and the
//! per-session task that sends it and records what the agent reports holding.

pub mod plan;
pub mod session;

pub use plan::{plan, Action};
pub use session::{pending_changes, record_inventory, run};
