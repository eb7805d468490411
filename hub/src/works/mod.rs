//! The work catalog: validated, versioned Work documents, their per-cluster rendering,
//! maintenance windows, and objects two works would both manage.

mod catalog;
pub(crate) mod overlap;
pub mod render;
pub mod windows;

pub use catalog::*;
