//! A listening Unix socket bound to a path: bind, listen, accept.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use rustix::net;

use crate::claim::claim_socket_path;
use crate::conn::SeqPacket;
use crate::path::unix_addr;
use crate::socket::{self, SocketType};
use crate::wait::{wait, Interest};

/// A listening socket (`SOCK_SEQPACKET` unless bound with
/// [`SeqListener::bind_unclaimed`] as a stream). The socket file stays
/// when it is dropped: a later bind finds it stale and replaces it.
#[derive(Debug)]
pub struct SeqListener {
    fd: OwnedFd,
}

impl SeqListener {
    /// Binds a non-blocking `SOCK_SEQPACKET` listener at `path`, replacing
    /// a stale socket file but refusing (`AddrInUse`) a path a live
    /// process listens on ([`claim_socket_path`]).
    pub fn bind(path: &Path) -> io::Result<SeqListener> {
        unix_addr(path)?;
        claim_socket_path(path).map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
        SeqListener::bind_unclaimed(path, SocketType::SeqPacket, true, 128)
    }

    /// Binds and listens at `path` as it is (the caller claimed the path:
    /// an existing file makes bind fail with `AddrInUse`).
    pub fn bind_unclaimed(
        path: &Path,
        ty: SocketType,
        nonblocking: bool,
        backlog: i32,
    ) -> io::Result<SeqListener> {
        let addr = unix_addr(path)?;
        let fd = socket::new_socket(ty, nonblocking)?;
        net::bind(&fd, &addr)?;
        net::listen(&fd, backlog)?;
        Ok(SeqListener { fd })
    }

    /// Accepts one connection as a descriptor (close-on-exec, no socket
    /// options set). On a non-blocking listener `WouldBlock` when none.
    pub fn accept_fd(&self, nonblocking: bool) -> io::Result<OwnedFd> {
        Ok(net::accept_with(&self.fd, socket::flags(nonblocking))?)
    }

    /// Accepts one connection, non-blocking and with `SO_PASSCRED` set
    /// (`WouldBlock` when none waits on a non-blocking listener).
    pub fn accept(&self) -> io::Result<SeqPacket> {
        let s = SeqPacket::from_fd(self.accept_fd(true)?);
        s.set_passcred(true)?;
        Ok(s)
    }

    /// Blocking accept of a blocking connection (host services in tests
    /// and examples).
    pub fn accept_blocking(&self) -> io::Result<SeqPacket> {
        socket::set_nonblocking(&self.fd, false)?;
        let r = self.accept_fd(false);
        socket::set_nonblocking(&self.fd, true)?;
        let s = SeqPacket::from_fd(r?);
        s.set_passcred(true)?;
        Ok(s)
    }

    /// Waits up to `timeout` (`None`: no limit) for a connection to
    /// accept; false on timeout.
    pub fn readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        wait(&self.fd, Interest::Readable, timeout)
    }
}

impl AsRawFd for SeqListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for SeqListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Recv;
    use std::path::PathBuf;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kt-seq-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn listen_connect_accept() {
        let d = dir("lca");
        let p = d.join("l.sock");
        let l = SeqListener::bind(&p).unwrap();
        assert_eq!(l.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(!l.readable(Some(Duration::from_millis(20))).unwrap());
        let c = SeqPacket::connect(&p, false).unwrap();
        assert!(l.readable(Some(Duration::from_secs(5))).unwrap());
        let s = l.accept_blocking().unwrap();
        c.send(b"x").unwrap();
        c.send(b"").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(s.recv(&mut buf).unwrap(), Recv::Msg(1));
        // Accepted sockets have SO_PASSCRED: an empty message is a message.
        assert_eq!(s.recv(&mut buf).unwrap(), Recv::Msg(0));
        // A live listener is refused, a stale socket file replaced.
        let e = SeqListener::bind(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(l);
        SeqListener::bind(&p).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stream_listener_unclaimed() {
        let d = dir("stream");
        let p = d.join("s.sock");
        let l = SeqListener::bind_unclaimed(&p, SocketType::Stream, false, 4).unwrap();
        let e = SeqListener::bind_unclaimed(&p, SocketType::Stream, false, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let c = socket::connect_fd(&p, SocketType::Stream, false).unwrap();
        let s = l.accept_fd(false).unwrap();
        net::send(&c, b"abc", net::SendFlags::empty()).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            net::recv(&s, &mut buf, net::RecvFlags::empty()).unwrap().0,
            3
        );
        // A seqpacket connect to a stream listener fails.
        assert!(SeqPacket::connect(&p, false).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
