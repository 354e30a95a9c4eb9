//! kt-sim: a simulated guest for kt-vhost-device's tests and its bench: memfd-backed guest memory,
//! split virtqueues written by hand, real kick/call eventfds, a vhost-user
//! frontend (`vhost::vhost_user::Frontend`) and a small guest driver that
//! speaks the kerntransport protocol. Plus host-side helpers (temporary
//! directories, daemon child processes, echo/sink/source services).
//!
//! A dev-only crate (`publish = false`): the daemon never links it;
//! kt-vhost-device uses it as a dev-dependency for its integration tests.

pub mod driver;
pub mod frontend;
pub mod host;
pub mod memory;
pub mod multiqueue;
pub mod ring;

pub use driver::{Driver, DriverOptions, Shape};
pub use host::{DaemonProc, TempDir};
pub use multiqueue::{connect_pairs, reattach_pairs};
