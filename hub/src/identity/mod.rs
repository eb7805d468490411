//! Who a peer is: the cluster registry (joins, approval, certificates, revocation), the hub's
//! PKI and `init`.

pub mod init;
pub mod pki;
pub mod registry;
