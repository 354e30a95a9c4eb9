//! kt-vhost-device: the host half of kerntransport, a vhost-user backend
//! daemon for virtio device 60 (`proto/SPEC.md`). Guest channels map to host
//! Unix `SOCK_SEQPACKET` sockets named in a policy file; host programs reach
//! guest services through a listening socket.
//!
//! Modules: `args`/`config`/`conffile`/`policy` (CLI, the config file and
//! checked configuration), `vm` (one VM's sockets and threads),
//! `daemon` (serve frontends in a loop), `fdlimit` (the descriptor
//! budget), `backend` (vhost-user glue),
//! `device` (protocol engine, one per queue pair), `budget` (the
//! channel limit and the held-data budget the pairs share), `channel` (per-channel state), `chain`
//! (descriptor chains in and out), `seqpacket` (host sockets) and `sockpath`
//! (claiming socket paths), both re-exports of the shared `kt-seqpacket`
//! crate, `seccomp` (the system-call allow-list), `stats`
//! and `control` (counters and the control socket). The simulated guest driver
//! the tests and the bench use is the separate dev-only crate `kt-sim`
//! (`vhost-device/sim/`).

pub mod args;
pub mod backend;
pub mod budget;
pub mod chain;
pub mod channel;
pub mod conffile;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device;
pub mod engine;
pub mod fdlimit;
pub mod iov;
pub mod policy;
pub mod seccomp;
pub mod seqpacket;
pub mod sockpath;
pub mod stats;
pub mod vm;
