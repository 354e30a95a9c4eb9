//! kerntransport wire protocol (`proto/SPEC.md` is normative).
//!
//! Owns the contract shared by the host backend, the guest driver and the
//! tools: constants, the little-endian wire structs, and encode/decode that
//! return typed errors for every malformed input. It performs no I/O and
//! never panics on any input.

pub mod config;
pub mod consts;
pub mod credit;
pub mod handshake;
pub mod header;
pub mod listing;
pub mod name;
pub mod wire;

pub use config::DeviceConfig;
pub use credit::{CreditError, RecvCredit, SendCredit};
pub use header::{DecodeError, ErrorCode, Header, Limits, MsgType, Path};
pub use name::NameError;
