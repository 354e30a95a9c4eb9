//! Host-side Unix `SOCK_SEQPACKET` sockets, the way host programs talk to
//! kt-vhost-device (SPEC §9): a [`SeqpacketListener`] plays a host service
//! the guest connects to, a [`SeqpacketConn`] is one connection, one message
//! per `send`/`recv`. Every receive and accept takes a timeout, so a test
//! never hangs on a silent peer. Owns socket system calls only.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
fn grow_send_buffer(fd: &OwnedFd) {
    let v = libc::c_int::try_from(SEND_BUFFER).unwrap_or(libc::c_int::MAX);
    // SAFETY: `v` is a valid c_int for the duration of the call and the
    // length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // Best effort by design (see above).
    let _ = rc;
}

fn sys(op: &'static str, path: &Path) -> SocketError {
    SocketError::Sys {
        op,
        path: path.display().to_string(),
        source: io::Error::last_os_error(),
    }
}

fn sockaddr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(SocketError::PathTooLong(
            bytes.len(),
            path.display().to_string(),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let len = libc::socklen_t::try_from(len)
        .map_err(|_| SocketError::PathTooLong(bytes.len(), path.display().to_string()))?;
    Ok((addr, len))
}

fn new_socket(path: &Path) -> Result<OwnedFd> {
    // SAFETY: socket(2) has no memory arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket", path));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` is readable (or hung up). Returns false on timeout.
fn poll_in(fd: BorrowedFd<'_>, timeout: Duration, op: &'static str) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd array of length 1 for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(SocketError::Sys {
                op,
                path: String::new(),
                source: err,
            });
        }
    }
}

/// A listening `SOCK_SEQPACKET` socket (a host service). The socket file is
/// removed on drop.
#[derive(Debug)]
pub struct SeqpacketListener {
    fd: OwnedFd,
    path: PathBuf,
}

impl SeqpacketListener {
    /// Binds and listens on `path` (replacing a stale socket file).
    pub fn bind(path: &Path) -> Result<SeqpacketListener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SocketError::Sys {
                    op: "remove stale socket",
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        let fd = new_socket(path)?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(sys("bind", path));
        }
        // SAFETY: listen(2) has no memory arguments.
        if unsafe { libc::listen(fd.as_raw_fd(), 64) } != 0 {
            return Err(sys("listen", path));
        }
        Ok(SeqpacketListener {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection, waiting up to `timeout`.
    pub fn accept(&self, timeout: Duration) -> Result<SeqpacketConn> {
        if !poll_in(self.fd.as_fd(), timeout, "accept")? {
            return Err(SocketError::Timeout {
                op: "accept",
                timeout,
            });
        }
        // SAFETY: null address pointers are allowed: we do not want the
        // peer address.
        let fd = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(sys("accept", &self.path));
        }
        // SAFETY: `fd` was just returned by accept4(2) and is ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        grow_send_buffer(&fd);
        Ok(SeqpacketConn { fd })
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
        self.fd.as_raw_fd()
    }
}

/// One `SOCK_SEQPACKET` connection; each `send`/`recv` is one message.
#[derive(Debug)]
pub struct SeqpacketConn {
    fd: OwnedFd,
}

impl SeqpacketConn {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<SeqpacketConn> {
        let fd = new_socket(path)?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(sys("connect", path));
        }
        grow_send_buffer(&fd);
        Ok(SeqpacketConn { fd })
    }

    /// Sends `msg` as one message (blocks while the peer's queue is full).
    pub fn send(&self, msg: &[u8]) -> Result<()> {
        loop {
            // SAFETY: `msg` is valid for reads of `msg.len()` bytes.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EPIPE) | Some(libc::ECONNRESET) => return Err(SocketError::Closed),
                _ => {
                    return Err(SocketError::Sys {
                        op: "send",
                        path: String::new(),
                        source: err,
                    })
                }
            }
        }
    }

    /// Sends `msg` as one message without blocking: `Ok(false)` if the
    /// peer's queue is full (`EAGAIN`), so backpressure tests can count it.
    pub fn try_send(&self, msg: &[u8]) -> Result<bool> {
        loop {
            // SAFETY: `msg` is valid for reads of `msg.len()` bytes.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(false),
                Some(libc::EPIPE) | Some(libc::ECONNRESET) => return Err(SocketError::Closed),
                _ => {
                    return Err(SocketError::Sys {
                        op: "send",
                        path: String::new(),
                        source: err,
                    })
                }
            }
        }
    }

    /// True if a message can be sent without blocking within `timeout`
    /// (`POLLOUT`).
    pub fn writable(&self, timeout: Duration) -> Result<bool> {
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        loop {
            // SAFETY: `pfd` is a valid pollfd array of length 1 for the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 {
                return Ok(n > 0);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(SocketError::Sys {
                    op: "poll",
                    path: String::new(),
                    source: err,
                });
            }
        }
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

    /// Receives one message into `buf` (no allocation: for long streams),
    /// waiting up to `timeout`; returns its length. End of stream (and a
    /// zero-length message) is [`SocketError::Closed`]; a message larger
    /// than `buf` is [`SocketError::Truncated`].
    pub fn recv_into(&self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        if !poll_in(self.fd.as_fd(), timeout, "recv")? {
            return Err(SocketError::Timeout {
                op: "recv",
                timeout,
            });
        }
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECONNRESET) => return Err(SocketError::Closed),
                    _ => {
                        return Err(SocketError::Sys {
                            op: "recv",
                            path: String::new(),
                            source: err,
                        })
                    }
                }
            }
            // n >= 0 here, so the cast is lossless.
            let len = n.unsigned_abs();
            if len == 0 {
                return Err(SocketError::Closed);
            }
            if len > buf.len() {
                return Err(SocketError::Truncated {
                    len,
                    max: buf.len(),
                });
            }
            return Ok(len);
        }
    }

    /// Turns on `SO_PASSCRED`: every message then arrives with an
    /// `SCM_CREDENTIALS` control message and end of stream without one, so
    /// [`Self::recv_message`] can tell a zero-length message from the end.
    pub fn set_passcred(&self) -> Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: `on` is a valid c_int for the duration of the call and the
        // length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(sys("setsockopt SO_PASSCRED", Path::new("")));
        }
        Ok(())
    }

    /// Receives one message into `buf`, waiting up to `timeout`:
    /// `Some(len)`, or `None` at end of stream. Zero-length messages are
    /// `Some(0)` once [`Self::set_passcred`] was called (without it they
    /// read as the end).
    pub fn recv_message(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        if !poll_in(self.fd.as_fd(), timeout, "recv")? {
            return Err(SocketError::Timeout {
                op: "recv",
                timeout,
            });
        }
        // Room for one SCM_CREDENTIALS control message, 8-byte aligned.
        let mut control = [0u64; 8];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain old data; all-zero is a valid value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: `msg` points at `iov` (valid for `buf.len()` bytes)
            // and at `control`, both alive across the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECONNRESET) => return Ok(None),
                    _ => {
                        return Err(SocketError::Sys {
                            op: "recvmsg",
                            path: String::new(),
                            source: err,
                        })
                    }
                }
            }
            // n >= 0 here, so the cast is lossless.
            let len = n.unsigned_abs();
            if len == 0 && msg.msg_controllen == 0 {
                return Ok(None);
            }
            if len > buf.len() {
                return Err(SocketError::Truncated {
                    len,
                    max: buf.len(),
                });
            }
            return Ok(Some(len));
        }
    }

    /// True if a message (or hang-up) is ready within `timeout`.
    pub fn readable(&self, timeout: Duration) -> Result<bool> {
        poll_in(self.fd.as_fd(), timeout, "poll")
    }

    /// Makes `send` fail with `EAGAIN` instead of blocking (for
    /// backpressure tests).
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        // SAFETY: F_GETFL has no memory arguments.
        let flags = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(sys("fcntl", Path::new("")));
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: F_SETFL takes an int flag set.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
            return Err(sys("fcntl", Path::new("")));
        }
        Ok(())
    }

    /// Shuts down both directions (the peer sees the connection close).
    pub fn shutdown(&self) -> Result<()> {
        // SAFETY: shutdown(2) has no memory arguments.
        if unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
            return Err(sys("shutdown", Path::new("")));
        }
        Ok(())
    }
}

impl AsRawFd for SeqpacketConn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for SeqpacketConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
