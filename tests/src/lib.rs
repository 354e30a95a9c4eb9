//! kerntransport test harness.
//!
//! Owns the plumbing every integration and end-to-end test needs, so tests
//! read as scenarios: child processes that die with the test
//! ([`children`]), log files a test can wait on ([`log`]), scratch
//! directories ([`tempdir`]), the patched QEMU running the guest image
//! ([`qemu`]), the `kt-vhost-device` backend ([`backend`]), host-side
//! `SOCK_SEQPACKET` services and clients ([`seqpacket`], [`client`]),
//! verifiable test streams on the host side ([`traffic`]), the host build
//! of the `kt` tool ([`tool`]), where the built artifacts are ([`env`]),
//! and how a test that cannot run here says so ([`skip`]). It holds no
//! test scenarios.
//!
//! Every handle that owns a process kills and reaps it when dropped, and
//! dumps its logs to stderr when dropped during a panic, so a failing test
//! shows the guest serial log and the backend log.

pub mod backend;
pub mod children;
pub mod client;
pub mod env;
pub mod log;
pub mod qemu;
pub mod seqpacket;
pub mod skip;
pub mod tempdir;
pub mod tool;
pub mod traffic;

pub use backend::{Backend, BackendBuilder};
pub use children::{ChildProcess, Children};
pub use client::{
    connect_to_guest, connect_to_guest_when_ready, list_guest_services, GuestChannel,
};
pub use log::{LogFile, Match};
pub use qemu::{Accel, Guest, KtResult, Qemu};
pub use seqpacket::{SeqpacketConn, SeqpacketListener};
pub use tempdir::TempDir;
pub use tool::{KtProcess, KtTool};
pub use traffic::{send_stream, verify_stream, verify_until_eof, Stream};
