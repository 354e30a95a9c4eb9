//! kerntransport wire protocol (`proto/SPEC.md` is normative).
//!
//! Owns the contract shared by the host backend, the guest driver and the
//! tools: constants, the little-endian wire structs, and encode/decode that
//! return typed errors for every malformed input. It performs no I/O and
//! never panics on any input.

pub mod consts;
