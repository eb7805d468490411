//! The work catalog: validated, versioned Work documents, their per-cluster rendering,
//! maintenance windows, objects two works would both manage, and where manifests come from
//! (files and stdin for `tetherctl apply`, git repositories the hub fetches).

mod catalog;
pub(crate) mod git;
pub mod manifests;
pub(crate) mod overlap;
pub mod render;
pub mod windows;

pub use catalog::*;
