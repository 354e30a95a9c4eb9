//! Claiming a Unix socket path before binding it (a stale socket file is
//! removed, a live one refused): the shared `kt-seqpacket` crate's
//! [`claim_socket_path`], used by the host-service listener, `control.rs`
//! and the vhost-user listener in `daemon.rs`.

pub use kt_seqpacket::{claim_socket_path, ClaimError};
