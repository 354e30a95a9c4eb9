//! `kt`: the kerntransport command-line tool, for both ends of the
//! transport. In the guest it drives `/dev/kerntransport` (connect, listen +
//! accept, one `read`/`write` per message); on the host it talks to
//! kt-vhost-device over Unix `SOCK_SEQPACKET` sockets (the SPEC §9
//! handshake, or a listening host service). The verbs are the same on both
//! sides, so tests and users drive both ends with one tool.

pub mod benchpeer;
pub mod channel;
pub mod cli;
pub mod commands;
pub mod crc32;
pub mod error;
pub mod framed;
pub mod guest;
pub mod host;
pub mod input;
pub mod ioctl;
pub mod open;
pub mod out;
pub mod serving;
pub mod signal;
pub mod soak;
pub mod stats;
pub mod sys;
pub mod traffic;
