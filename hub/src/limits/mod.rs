//! What untrusted peers may make the hub do: connection admission, per-cluster status budgets,
//! and the scope a cluster may speak about (its own works only). Pure rules and counters.

pub mod admission;
pub mod budget;
pub mod scope;
