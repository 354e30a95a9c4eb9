//! Unix socket descriptors: creating, connecting and pairing them, and the
//! socket options the wrappers and callers with their own framing (the
//! `kt` tool's channels) set. Every descriptor is close-on-exec.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::OFlags;
use rustix::net::{self, AddressFamily, SocketFlags};

use crate::path::unix_addr;

/// The kind of Unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketType {
    /// `SOCK_SEQPACKET`: whole messages (everything kerntransport speaks).
    SeqPacket,
    /// `SOCK_STREAM`: bytes (length-prefixed framing by the caller).
    Stream,
}

impl SocketType {
    fn raw(self) -> net::SocketType {
        match self {
            SocketType::SeqPacket => net::SocketType::SEQPACKET,
            SocketType::Stream => net::SocketType::STREAM,
        }
    }
}

pub(crate) fn flags(nonblocking: bool) -> SocketFlags {
    if nonblocking {
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK
    } else {
        SocketFlags::CLOEXEC
    }
}

/// A new, unbound, close-on-exec Unix socket.
pub fn new_socket(ty: SocketType, nonblocking: bool) -> io::Result<OwnedFd> {
    Ok(net::socket_with(
        AddressFamily::UNIX,
        ty.raw(),
        flags(nonblocking),
        None,
    )?)
}

/// Connects a new socket to `path`. A non-blocking connect fails with
/// `WouldBlock` instead of waiting when the listener's backlog is full. A
/// path that does not fit is `InvalidInput` ([`crate::PathTooLong`]).
pub fn connect_fd(path: &Path, ty: SocketType, nonblocking: bool) -> io::Result<OwnedFd> {
    let addr = unix_addr(path)?;
    let fd = new_socket(ty, nonblocking)?;
    net::connect(&fd, &addr)?;
    Ok(fd)
}

/// Connects the existing socket `fd` to `path` (for callers that tell a
/// failed `socket()` from a failed `connect()`, or retry after `EINTR`).
pub fn connect(fd: impl AsFd, path: &Path) -> io::Result<()> {
    let addr = unix_addr(path)?;
    Ok(net::connect(fd, &addr)?)
}

/// A connected pair of blocking `SOCK_SEQPACKET` descriptors.
pub fn pair_fds() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(net::socketpair(
        AddressFamily::UNIX,
        net::SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Asks for `bytes` of send buffer (`SO_SNDBUF`; the kernel caps it at
/// `net.core.wmem_max` and doubles it for bookkeeping).
pub fn set_send_buffer(fd: impl AsFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize);
    Ok(net::sockopt::set_socket_send_buffer_size(fd, v)?)
}

/// Asks for `bytes` of receive buffer (`SO_RCVBUF`; capped at
/// `net.core.rmem_max`).
pub fn set_recv_buffer(fd: impl AsFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize);
    Ok(net::sockopt::set_socket_recv_buffer_size(fd, v)?)
}

/// Switches `O_NONBLOCK`.
pub fn set_nonblocking(fd: impl AsFd, on: bool) -> io::Result<()> {
    let fd = fd.as_fd();
    let mut flags = rustix::fs::fcntl_getfl(fd)?;
    flags.set(OFlags::NONBLOCK, on);
    Ok(rustix::fs::fcntl_setfl(fd, flags)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_and_blocking_mode() {
        let (a, _b) = pair_fds().unwrap();
        set_send_buffer(&a, 1 << 20).unwrap();
        set_recv_buffer(&a, 1 << 20).unwrap();
        let got = net::sockopt::socket_send_buffer_size(&a).unwrap();
        assert!(got >= 4096, "{got}");
        // A request past i32::MAX is capped, not an error.
        set_send_buffer(&a, usize::MAX).unwrap();
        set_nonblocking(&a, true).unwrap();
        assert!(rustix::fs::fcntl_getfl(&a)
            .unwrap()
            .contains(OFlags::NONBLOCK));
        set_nonblocking(&a, false).unwrap();
        assert!(!rustix::fs::fcntl_getfl(&a)
            .unwrap()
            .contains(OFlags::NONBLOCK));
    }

    #[test]
    fn connect_errors() {
        let e = connect_fd(
            Path::new("/nonexistent/kt.sock"),
            SocketType::SeqPacket,
            false,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let long = std::path::PathBuf::from("x".repeat(200));
        let e = connect_fd(&long, SocketType::Stream, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let fd = new_socket(SocketType::SeqPacket, false).unwrap();
        let e = connect(&fd, Path::new("/nonexistent/kt.sock")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
