//! A simulated guest for tests and the bench: memfd-backed guest memory,
//! split virtqueues written by hand, real kick/call eventfds, a vhost-user
//! frontend (`vhost::vhost_user::Frontend`) and a small guest driver that
//! speaks the kerntransport protocol. Plus host-side helpers (temporary
//! directories, daemon child processes, echo/sink/source services).
//!
//! Nothing here is used by the daemon itself.

pub mod driver;
pub mod frontend;
pub mod host;
pub mod memory;
pub mod ring;

pub use driver::{Driver, DriverOptions, Shape};
pub use host::{DaemonProc, TempDir};
