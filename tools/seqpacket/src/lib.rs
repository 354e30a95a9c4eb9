//! kerntransport's one Unix `SOCK_SEQPACKET` module, shared by the backend
//! (kt-vhost-device), the test harness (kt-tests) and the `kt` tool's host
//! side. Built on `rustix`, so no raw `libc` socket calls remain in any of
//! them.
//!
//! - [`socket`]: descriptors: socket, connect, socketpair, socket options.
//! - [`SeqPacket`] (`conn.rs`): one connection; whole-message send and
//!   receive, `MSG_TRUNC` lengths, peeks, zero-length messages told from
//!   end-of-file (`SO_PASSCRED`), descriptor passing: descriptors a peer
//!   passes are always closed on receipt and counted.
//! - [`SeqListener`] (`listener.rs`): bind, listen, accept.
//! - [`wait`] (`wait.rs`): `poll(2)` for readable/writable with a deadline.
//! - [`claim_socket_path`] (`claim.rs`): a stale socket file is replaced,
//!   a live one refused.
//! - [`check_path`] (`path.rs`): the `sockaddr_un` length limit.

mod claim;
mod conn;
mod listener;
mod path;
pub mod socket;
mod wait;

pub use claim::{claim_socket_path, ClaimError};
pub use conn::{recv_fd, send_fd, Recv, SeqPacket, SCM_MAX_FD};
pub use listener::SeqListener;
pub use path::{check_path, PathTooLong, MAX_PATH};
pub use socket::SocketType;
pub use wait::{poll_once, wait, Interest};
