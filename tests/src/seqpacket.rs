//! Host-side Unix `SOCK_SEQPACKET` sockets, the way host programs talk to
//! kt-vhost-device (SPEC §9): a [`SeqpacketListener`] plays a host service
//! the guest connects to, a [`SeqpacketConn`] is one connection, one message
//! per `send`/`recv`. Every receive and accept takes a timeout, so a test
//! never hangs on a silent peer. A thin layer over the shared
//! `kt-seqpacket` crate that turns its `io::Error`s into [`SocketError`]s
//! naming the operation; descriptors a peer passes are closed on receipt.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kt_seqpacket::{check_path, socket, Recv, SeqListener, SeqPacket, SocketType};

/// Errors from socket operations.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// The call.
        op: &'static str,
        /// The socket path involved (or "" for a connected socket).
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The path does not fit in `sockaddr_un`.
    #[error("socket path too long ({0} bytes): {1}")]
    PathTooLong(usize, String),
    /// Nothing arrived in time.
    #[error("{op}: nothing within {timeout:?}")]
    Timeout {
        /// What waited.
        op: &'static str,
        /// How long.
        timeout: Duration,
    },
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    Closed,
    /// A message was larger than the receive buffer.
    #[error("message of {len} bytes exceeds the {max}-byte receive buffer")]
    Truncated {
        /// Its real length.
        len: usize,
        /// Buffer size.
        max: usize,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, SocketError>;

/// Largest message `recv` accepts (the protocol's limit is 1 MiB).
pub const RECV_MAX: usize = 2 << 20;

/// Send buffer asked for on every connection, so a message of the
/// protocol's limit (1 MiB) fits: a Unix `SOCK_SEQPACKET` message must fit
/// the sender's buffer whole, and the default (about 208 KiB) does not.
/// The kernel caps the request at `net.core.wmem_max` (then such sends fail
/// with `EMSGSIZE`); see [`max_send_buffer`].
pub const SEND_BUFFER: usize = (1 << 20) + 64 * 1024;

const WMEM_MAX: &str = "/proc/sys/net/core/wmem_max";

/// `net.core.wmem_max`: the largest send buffer an unprivileged
/// `SO_SNDBUF` gets (the kernel doubles it for bookkeeping), or `None` if
/// it cannot be read.
pub fn max_send_buffer() -> Option<usize> {
    std::fs::read_to_string(WMEM_MAX).ok()?.trim().parse().ok()
}

/// Makes sure `net.core.wmem_max` lets a [`SEND_BUFFER`]-sized send buffer
/// through, raising it (tests run as root) when the machine's default is
/// smaller. Tests of 1 MiB messages call this first and fail with its
/// message when it cannot be done, rather than skipping.
pub fn ensure_send_buffer_limit() -> std::result::Result<(), String> {
    match max_send_buffer() {
        Some(m) if m >= SEND_BUFFER => return Ok(()),
        None => return Err(format!("{WMEM_MAX} cannot be read")),
        Some(_) => {}
    }
    let want = (4 * SEND_BUFFER).to_string();
    std::fs::write(WMEM_MAX, &want).map_err(|e| {
        format!(
            "net.core.wmem_max is {:?}, below the {SEND_BUFFER} bytes a 1 MiB message needs, \
             and raising it failed ({e}); run the tests as root or \
             `sysctl -w net.core.wmem_max={want}`",
            max_send_buffer()
        )
    })?;
    match max_send_buffer() {
        Some(m) if m >= SEND_BUFFER => Ok(()),
        other => Err(format!(
            "net.core.wmem_max is still {other:?} after writing {want}"
        )),
    }
}

/// Asks for [`SEND_BUFFER`] bytes of send buffer (best effort: the kernel
/// caps it, and the failure shows as `EMSGSIZE` on a large send).
fn grow_send_buffer(conn: &SeqPacket) {
    // Best effort by design (see above).
    let _ = conn.set_send_buffer(SEND_BUFFER);
}

fn sys(op: &'static str, path: &Path, source: io::Error) -> SocketError {
    SocketError::Sys {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// A connection's error for `op` (no path).
fn conn_err(op: &'static str, source: io::Error) -> SocketError {
    sys(op, Path::new(""), source)
}

/// Refuses a path that does not fit `sockaddr_un` (an empty one is left
/// to the system call, as before).
fn check_len(path: &Path) -> Result<()> {
    match check_path(path) {
        Err(e) if e.len > 0 => Err(SocketError::PathTooLong(e.len, path.display().to_string())),
        _ => Ok(()),
    }
}

/// Waits until `fd` is readable (or hung up). Returns false on timeout.
fn poll_in(fd: BorrowedFd<'_>, timeout: Duration, op: &'static str) -> Result<bool> {
    kt_seqpacket::wait(fd, kt_seqpacket::Interest::Readable, Some(timeout))
        .map_err(|e| conn_err(op, e))
}

/// A listening `SOCK_SEQPACKET` socket (a host service). The socket file is
/// removed on drop.
#[derive(Debug)]
pub struct SeqpacketListener {
    listener: SeqListener,
    path: PathBuf,
}

impl SeqpacketListener {
    /// Binds and listens on `path` (replacing a stale socket file).
    pub fn bind(path: &Path) -> Result<SeqpacketListener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(sys("remove stale socket", path, source)),
        }
        check_len(path)?;
        let listener = SeqListener::bind_unclaimed(path, SocketType::SeqPacket, false, 64)
            .map_err(|e| sys("bind", path, e))?;
        Ok(SeqpacketListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection, waiting up to `timeout`.
    pub fn accept(&self, timeout: Duration) -> Result<SeqpacketConn> {
        if !poll_in(self.listener.as_fd(), timeout, "accept")? {
            return Err(SocketError::Timeout {
                op: "accept",
                timeout,
            });
        }
        let fd = self
            .listener
            .accept_fd(false)
            .map_err(|e| sys("accept", &self.path, e))?;
        let sock = SeqPacket::from_fd(fd);
        grow_send_buffer(&sock);
        Ok(SeqpacketConn { sock })
    }
}

impl Drop for SeqpacketListener {
    fn drop(&mut self) {
        // Best effort: the temp dir goes away anyway.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AsRawFd for SeqpacketListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

/// One `SOCK_SEQPACKET` connection; each `send`/`recv` is one message.
#[derive(Debug)]
pub struct SeqpacketConn {
    sock: SeqPacket,
}

impl SeqpacketConn {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<SeqpacketConn> {
        check_len(path)?;
        let fd = socket::connect_fd(path, SocketType::SeqPacket, false)
            .map_err(|e| sys("connect", path, e))?;
        let sock = SeqPacket::from_fd(fd);
        grow_send_buffer(&sock);
        Ok(SeqpacketConn { sock })
    }

    /// Sends `msg` as one message (blocks while the peer's queue is full).
    pub fn send(&self, msg: &[u8]) -> Result<()> {
        loop {
            match self.sock.send(msg) {
                Ok(_) => return Ok(()),
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        return Err(SocketError::Closed)
                    }
                    _ => return Err(conn_err("send", e)),
                },
            }
        }
    }

    /// Sends `msg` as one message without blocking: `Ok(false)` if the
    /// peer's queue is full (`EAGAIN`), so backpressure tests can count it.
    pub fn try_send(&self, msg: &[u8]) -> Result<bool> {
        loop {
            match self.sock.try_send(msg) {
                Ok(_) => return Ok(true),
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(false),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        return Err(SocketError::Closed)
                    }
                    _ => return Err(conn_err("send", e)),
                },
            }
        }
    }

    /// True if a message can be sent without blocking within `timeout`
    /// (`POLLOUT`).
    pub fn writable(&self, timeout: Duration) -> Result<bool> {
        self.sock
            .writable(Some(timeout))
            .map_err(|e| conn_err("poll", e))
    }

    /// Receives one message, waiting up to `timeout`. A closed connection
    /// is [`SocketError::Closed`] (so is a zero-length message, which
    /// `SOCK_SEQPACKET` cannot tell apart from end of stream).
    pub fn recv(&self, timeout: Duration) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; RECV_MAX];
        let len = self.recv_into(&mut buf, timeout)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// One receive after waiting up to `timeout` for a message:
    /// `Ok(None)` at end of stream or on a reset connection.
    fn recv_once(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        if !poll_in(self.sock.as_fd(), timeout, "recv")? {
            return Err(SocketError::Timeout {
                op: "recv",
                timeout,
            });
        }
        loop {
            let len = match self.sock.recv(buf) {
                Ok(Recv::Msg(len)) => len,
                Ok(Recv::Eof) => return Ok(None),
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::ConnectionReset => return Ok(None),
                    _ => return Err(conn_err("recv", e)),
                },
            };
            if len > buf.len() {
                return Err(SocketError::Truncated {
                    len,
                    max: buf.len(),
                });
            }
            return Ok(Some(len));
        }
    }

    /// Receives one message into `buf` (no allocation: for long streams),
    /// waiting up to `timeout`; returns its length. End of stream (and a
    /// zero-length message) is [`SocketError::Closed`]; a message larger
    /// than `buf` is [`SocketError::Truncated`].
    pub fn recv_into(&self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        match self.recv_once(buf, timeout)? {
            None | Some(0) => Err(SocketError::Closed),
            Some(len) => Ok(len),
        }
    }

    /// Turns on `SO_PASSCRED`: every message then arrives with an
    /// `SCM_CREDENTIALS` control message and end of stream without one, so
    /// [`Self::recv_message`] can tell a zero-length message from the end.
    pub fn set_passcred(&self) -> Result<()> {
        self.sock
            .set_passcred(true)
            .map_err(|e| conn_err("setsockopt SO_PASSCRED", e))
    }

    /// Receives one message into `buf`, waiting up to `timeout`:
    /// `Some(len)`, or `None` at end of stream. Zero-length messages are
    /// `Some(0)` once [`Self::set_passcred`] was called (without it they
    /// read as the end).
    pub fn recv_message(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        self.recv_once(buf, timeout)
    }

    /// True if a message (or hang-up) is ready within `timeout`.
    pub fn readable(&self, timeout: Duration) -> Result<bool> {
        poll_in(self.sock.as_fd(), timeout, "poll")
    }

    /// Makes `send` fail with `EAGAIN` instead of blocking (for
    /// backpressure tests).
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.sock
            .set_nonblocking(on)
            .map_err(|e| conn_err("fcntl", e))
    }

    /// Shuts down both directions (the peer sees the connection close).
    pub fn shutdown(&self) -> Result<()> {
        self.sock.shutdown().map_err(|e| conn_err("shutdown", e))
    }
}

impl AsRawFd for SeqpacketConn {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for SeqpacketConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tempdir::TempDir;
    use std::thread;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn messages_keep_boundaries_both_ways() {
        let dir = TempDir::new("seqpacket").expect("tempdir");
        let listener = SeqpacketListener::bind(&dir.join("svc.sock")).expect("bind");
        let client = SeqpacketConn::connect(listener.path()).expect("connect");
        let server = listener.accept(T).expect("accept");
        client.send(b"one").expect("send");
        client.send(&[7u8; 70_000]).expect("send big");
        assert_eq!(server.recv(T).expect("recv"), b"one");
        assert_eq!(server.recv(T).expect("recv big").len(), 70_000);
        server.send(b"back").expect("reply");
        assert_eq!(client.recv(T).expect("recv reply"), b"back");
        drop(client);
        assert!(matches!(server.recv(T), Err(SocketError::Closed)));
    }

    #[test]
    fn zero_length_messages_are_told_from_the_end() {
        let dir = TempDir::new("seqpacket-0").expect("tempdir");
        let listener = SeqpacketListener::bind(&dir.join("svc.sock")).expect("bind");
        let client = SeqpacketConn::connect(listener.path()).expect("connect");
        let server = listener.accept(T).expect("accept");
        server.set_passcred().expect("SO_PASSCRED");
        for m in [&b""[..], b"x", b""] {
            client.send(m).expect("send");
        }
        drop(client);
        let mut buf = [0u8; 16];
        let got: Vec<Option<usize>> = (0..4)
            .map(|_| server.recv_message(&mut buf, T).expect("recv"))
            .collect();
        assert_eq!(got, [Some(0), Some(1), Some(0), None]);
    }

    #[test]
    fn a_message_of_the_protocol_limit_fits() {
        if let Err(e) = ensure_send_buffer_limit() {
            panic!("{e}");
        }
        let dir = TempDir::new("seqpacket-1m").expect("tempdir");
        let listener = SeqpacketListener::bind(&dir.join("svc.sock")).expect("bind");
        let client = SeqpacketConn::connect(listener.path()).expect("connect");
        let server = listener.accept(T).expect("accept");
        let msg = vec![3u8; 1 << 20];
        let sender = thread::spawn(move || client.send(&msg).map(|()| client));
        assert_eq!(server.recv(T).expect("recv 1 MiB").len(), 1 << 20);
        sender.join().expect("sender").expect("send 1 MiB");
    }

    #[test]
    fn timeouts_and_nonblocking_backpressure() {
        let dir = TempDir::new("seqpacket-t").expect("tempdir");
        let listener = SeqpacketListener::bind(&dir.join("s.sock")).expect("bind");
        let err = listener
            .accept(Duration::from_millis(50))
            .expect_err("nobody connects");
        assert!(matches!(err, SocketError::Timeout { .. }), "{err}");
        let client = SeqpacketConn::connect(listener.path()).expect("connect");
        let _server = listener.accept(T).expect("accept");
        assert!(matches!(
            client.recv(Duration::from_millis(50)),
            Err(SocketError::Timeout { .. })
        ));
        client.set_nonblocking(true).expect("nonblocking");
        let chunk = [0u8; 4096];
        let mut sent = 0;
        let err = loop {
            match client.send(&chunk) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "send never blocked");
        };
        match err {
            SocketError::Sys { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::WouldBlock)
            }
            other => panic!("expected EAGAIN, got {other}"),
        }
        assert!(!client.writable(Duration::from_millis(20)).expect("poll"));
        assert!(!client.try_send(&chunk).expect("try_send on a full queue"));
    }

    #[test]
    fn a_message_larger_than_the_buffer_is_reported() {
        let dir = TempDir::new("seqpacket-trunc").expect("tempdir");
        let listener = SeqpacketListener::bind(&dir.join("s.sock")).expect("bind");
        let client = SeqpacketConn::connect(listener.path()).expect("connect");
        let server = listener.accept(T).expect("accept");
        client.send(&[1u8; 100]).expect("send");
        let mut buf = [0u8; 10];
        match server.recv_into(&mut buf, T) {
            Err(SocketError::Truncated { len: 100, max: 10 }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn connect_to_missing_socket_fails() {
        let dir = TempDir::new("seqpacket-m").expect("tempdir");
        assert!(SeqpacketConn::connect(&dir.join("nobody.sock")).is_err());
        let long = dir.join(&"x".repeat(200));
        assert!(matches!(
            SeqpacketListener::bind(&long),
            Err(SocketError::PathTooLong(..))
        ));
    }
}
