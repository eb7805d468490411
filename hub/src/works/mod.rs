//! The work catalog: validated, versioned Work documents, their per-cluster rendering,
//! maintenance windows, objects two works would both manage, the namespaces an operator's scope
//! allows, and where manifests come from
//! (files and stdin for `tetherctl apply`, git repositories the hub fetches); recent contents
//! and the patches that take an agent from one to the next.

mod catalog;
pub(crate) mod git;
pub mod manifests;
pub(crate) mod overlap;
pub(crate) mod patches;
pub mod render;
pub(crate) mod tenancy;
pub mod windows;

pub use catalog::*;
