//! Unix `SOCK_SEQPACKET` sockets: connect, listen, accept, send and receive
//! whole messages, and tell a zero-length message from end-of-file.
//!
//! Owns every libc call on host sockets; knows nothing about channels. A
//! zero-length message and EOF both make `recv()` return 0 on a seqpacket
//! socket; with `SO_PASSCRED` set every real message carries an
//! `SCM_CREDENTIALS` control message and EOF carries none, which is how
//! [`Recv::Eof`] is told apart. Descriptors a peer passes (`SCM_RIGHTS`)
//! are closed as they arrive, including on peeks (which install copies).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::sockpath::claim_socket_path;

/// What a receive saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// A message whose full length is the value (it may have been truncated
    /// to the buffer when receiving, never when peeking with a 0 buffer).
    Msg(usize),
    /// The peer closed the connection and no message is left.
    Eof,
}

/// A connected `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
    /// Descriptors the peer passed that were closed on receipt.
    passed_fds_closed: AtomicU64,
}

/// Most descriptors one message can carry (Linux `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;
/// Control buffer in 8-byte words: one `SCM_CREDENTIALS` message (32
/// bytes) plus one `SCM_RIGHTS` message with `SCM_MAX_FD` descriptors (16 +
/// 4 × 253 bytes, padded), with room to spare, so a well-formed message is
/// never truncated (`MSG_CTRUNC`).
const CMSG_BUF_WORDS: usize = (64 + 16 + 4 * SCM_MAX_FD + 64) / 8;

/// Closes every descriptor in the `SCM_RIGHTS` control messages of `msg`
/// (the device never uses descriptors from host peers; left open they
/// would leak one table slot each) and returns how many.
fn close_passed_fds(msg: &libc::msghdr) -> u64 {
    let mut closed = 0;
    // SAFETY: `msg` was filled by recvmsg; its control pointer and length
    // describe the caller's live buffer, which CMSG_FIRSTHDR stays within.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a pointer to a
        // complete cmsghdr inside the control buffer (they check its
        // length against msg_controllen).
        let hdr = unsafe { std::ptr::read_unaligned(c) };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN is arithmetic on a constant.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            // SAFETY: `c` points at a complete cmsghdr; its data follows.
            let data = unsafe { libc::CMSG_DATA(c) };
            // Never read past the buffer, whatever cmsg_len says.
            #[allow(clippy::unnecessary_cast)] // msg_controllen is not usize on every libc
            let end = msg.msg_control as usize + msg.msg_controllen as usize;
            let room = end.saturating_sub(data as usize);
            let len = (hdr.cmsg_len as usize).saturating_sub(head).min(room);
            let count = len / size_of::<libc::c_int>();
            for i in 0..count {
                // SAFETY: `count` ints after `data` lie inside the control
                // buffer (clamped to its end above); unaligned reads.
                let fd = unsafe {
                    std::ptr::read_unaligned(data.wrapping_add(i * size_of::<libc::c_int>()).cast())
                };
                if fd >= 0 {
                    // SAFETY: the kernel just installed `fd` in our table
                    // for this message; nothing else knows it.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    closed += 1;
                }
            }
        }
        // SAFETY: `msg` and `c` as above.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    closed
}

/// A listening `SOCK_SEQPACKET` socket bound to a path.
#[derive(Debug)]
pub struct SeqListener {
    fd: OwnedFd,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

fn new_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path must be 1 to {} bytes", addr.sun_path.len() - 1),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn set_int_opt(fd: BorrowedFd<'_>, level: i32, name: i32, val: i32) -> io::Result<()> {
    // SAFETY: `val` lives across the call and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&val as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn set_nonblocking_fd(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL on a valid fd.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL on a valid fd with flags derived from F_GETFL.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

impl SeqPacket {
    fn from_fd(fd: OwnedFd) -> SeqPacket {
        SeqPacket {
            fd,
            passed_fds_closed: AtomicU64::new(0),
        }
    }

    /// Connects to the listening socket at `path`. A non-blocking connect
    /// fails with `WouldBlock` instead of waiting when the listener's
    /// backlog is full.
    pub fn connect(path: &Path, nonblocking: bool) -> io::Result<SeqPacket> {
        let fd = new_socket(nonblocking)?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        let s = SeqPacket::from_fd(fd);
        s.set_passcred()?;
        Ok(s)
    }

    /// A connected pair (tests and in-process peers).
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: socketpair succeeded, fds[0] is ours alone.
        let fd0 = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        // SAFETY: socketpair succeeded, fds[1] is ours alone.
        let fd1 = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        let a = SeqPacket::from_fd(fd0);
        let b = SeqPacket::from_fd(fd1);
        a.set_passcred()?;
        b.set_passcred()?;
        Ok((a, b))
    }

    fn set_passcred(&self) -> io::Result<()> {
        set_int_opt(self.fd.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
    }

    /// Switches blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking_fd(self.fd.as_fd(), on)
    }

    /// Sets the send buffer size (best effort; the kernel caps it).
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        let v = i32::try_from(bytes).unwrap_or(i32::MAX);
        set_int_opt(self.fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, v)
    }

    /// Sets a receive timeout for blocking receives (`None` = wait forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let tv = match t {
            Some(d) => libc::timeval {
                tv_sec: d.as_secs() as libc::time_t,
                tv_usec: d.subsec_micros() as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: `tv` lives across the call and its size is passed.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// Sends `buf` as one message (never raises SIGPIPE).
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        cvt_size(unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        })
    }

    /// Sends `buf` as one message with `fds` attached (`SCM_RIGHTS`; at
    /// most [`SCM_MAX_FD`]). The device never does this; host programs and
    /// tests may.
    pub fn send_with_fds(&self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if fds.len() > SCM_MAX_FD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {SCM_MAX_FD} descriptors per message"),
            ));
        }
        let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let bytes = std::mem::size_of_val(raw.as_slice());
        let mut cbuf = [0u64; CMSG_BUF_WORDS];
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is arithmetic; the result (at most 1032
            // bytes for SCM_MAX_FD descriptors) fits in `cbuf`.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes as u32) } as _;
            // SAFETY: the control buffer is aligned and large enough for one
            // cmsghdr, so CMSG_FIRSTHDR returns a valid pointer into it.
            let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
            // SAFETY: cmsghdr is plain old data; all-zero is a valid value.
            let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
            hdr.cmsg_level = libc::SOL_SOCKET;
            hdr.cmsg_type = libc::SCM_RIGHTS;
            // SAFETY: CMSG_LEN is arithmetic.
            hdr.cmsg_len = unsafe { libc::CMSG_LEN(bytes as u32) } as _;
            // SAFETY: `c` points at room for a cmsghdr inside `cbuf`.
            unsafe { c.write_unaligned(hdr) };
            // SAFETY: `c` points at a cmsghdr inside `cbuf`; its data follows.
            let data = unsafe { libc::CMSG_DATA(c) };
            // SAFETY: CMSG_SPACE(bytes) fits in `cbuf`, so `bytes` after
            // `data` are inside it; `raw` holds exactly `bytes`.
            unsafe {
                std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), data, bytes);
            }
        }
        // SAFETY: `msg` points at `iov` (valid for `buf.len()` bytes, only
        // read) and at `cbuf`, both alive across the call.
        cvt_size(unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
    }

    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<Recv> {
        let mut cbuf = [0u64; CMSG_BUF_WORDS];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; CMSG_BUF_WORDS]>() as _;
        // SAFETY: `msg` points at `iov` (valid for `buf.len()` bytes) and at
        // `cbuf`, both alive across the call.
        let n = cvt_size(unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut msg,
                flags | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC,
            )
        })?;
        let closed = close_passed_fds(&msg);
        if closed > 0 {
            self.passed_fds_closed.fetch_add(closed, Relaxed);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            // Only possible past SCM_MAX_FD descriptors (the buffer holds
            // that many): the kernel did not install the ones that did not
            // fit and dropped its references to them.
            log::debug!("host socket: control data truncated (excess descriptors discarded)");
        }
        if n == 0 && msg.msg_controllen == 0 {
            return Ok(Recv::Eof);
        }
        Ok(Recv::Msg(n))
    }

    /// How many descriptors passed by the peer (`SCM_RIGHTS`) this socket
    /// has closed since the last call; resets the count.
    pub fn take_passed_fds_closed(&self) -> u64 {
        self.passed_fds_closed.swap(0, Relaxed)
    }

    /// Receives one message into `buf`; `Recv::Msg` carries its full
    /// length, which exceeds `buf.len()` if it was truncated.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        self.recv_flags(buf, 0)
    }

    /// Length of the next message without consuming it.
    pub fn peek_len(&self) -> io::Result<Recv> {
        self.recv_flags(&mut [], libc::MSG_PEEK)
    }

    /// Shuts down both directions (the peer sees EOF).
    pub fn shutdown(&self) -> io::Result<()> {
        // SAFETY: plain syscall on a valid fd.
        cvt(unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) }).map(drop)
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl SeqListener {
    /// Binds and listens at `path`, replacing a stale socket file but
    /// refusing (`AddrInUse`) a path a live process listens on
    /// ([`claim_socket_path`]).
    pub fn bind(path: &Path) -> io::Result<SeqListener> {
        let fd = new_socket(true)?;
        let (addr, len) = sockaddr(path)?;
        claim_socket_path(path).map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        // SAFETY: plain syscall on a valid, bound fd.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(SeqListener { fd })
    }

    /// Accepts one connection (non-blocking; `WouldBlock` when none).
    pub fn accept(&self) -> io::Result<SeqPacket> {
        // SAFETY: null address pointers are allowed by accept4.
        let fd = cvt(unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        })?;
        // SAFETY: accept4 returned a new fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = SeqPacket::from_fd(fd);
        s.set_passcred()?;
        Ok(s)
    }

    /// Blocking accept (host services in tests and examples).
    pub fn accept_blocking(&self) -> io::Result<SeqPacket> {
        set_nonblocking_fd(self.fd.as_fd(), false)?;
        let r = self.accept();
        set_nonblocking_fd(self.fd.as_fd(), true)?;
        let s = r?;
        s.set_nonblocking(false)?;
        Ok(s)
    }
}

impl AsRawFd for SeqListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_and_zero_length_vs_eof() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(b"hello").unwrap();
        a.send(b"").unwrap();
        a.send(&[7u8; 3000]).unwrap();
        assert_eq!(b.peek_len().unwrap(), Recv::Msg(5));
        let mut buf = [0u8; 4096];
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(b.peek_len().unwrap(), Recv::Msg(0));
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(0));
        assert_eq!(b.peek_len().unwrap(), Recv::Msg(3000));
        assert_eq!(b.recv(&mut buf[..10]).unwrap(), Recv::Msg(3000));
        drop(a);
        assert_eq!(b.peek_len().unwrap(), Recv::Eof);
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Eof);
    }

    /// A pipe; (read end non-blocking, write end).
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [0 as RawFd; 2];
        // SAFETY: `p` has room for two fds.
        let r = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(r, 0);
        // SAFETY: pipe2 succeeded; p[0] is ours alone.
        let r = unsafe { OwnedFd::from_raw_fd(p[0]) };
        // SAFETY: pipe2 succeeded; p[1] is ours alone.
        let w = unsafe { OwnedFd::from_raw_fd(p[1]) };
        (r, w)
    }

    /// Whether every write end of the pipe is closed (read gives EOF, not
    /// EAGAIN).
    fn writers_gone(r: &OwnedFd) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: reading into a 1-byte buffer.
        unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 0 }
    }

    #[test]
    fn passed_descriptors_are_closed_on_receive_and_peek() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (r, w) = pipe();
        let fds = [w.as_fd(); 4];
        a.send_with_fds(b"CONNECT echo", &fds).unwrap();
        a.send_with_fds(b"", &fds[..1]).unwrap();
        drop(w);
        // Our own write end is gone; the in-flight copies keep it open.
        assert!(!writers_gone(&r));
        // A peek installs copies too: they are closed as well.
        assert_eq!(b.peek_len().unwrap(), Recv::Msg(12));
        assert_eq!(b.take_passed_fds_closed(), 4);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(12));
        assert_eq!(b.take_passed_fds_closed(), 4);
        assert!(!writers_gone(&r), "the second message still holds one");
        // Descriptors on an empty message: still a message, not EOF.
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(0));
        assert_eq!(b.take_passed_fds_closed(), 1);
        assert_eq!(b.take_passed_fds_closed(), 0);
        assert!(writers_gone(&r), "a received descriptor was left open");
        drop(a);
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Eof);
    }

    #[test]
    fn most_descriptors_one_message_carries_fit_the_buffer() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (r, w) = pipe();
        let fds = vec![w.as_fd(); SCM_MAX_FD];
        a.send_with_fds(b"x", &fds).unwrap();
        drop(w);
        let mut buf = [0u8; 4];
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(1));
        assert_eq!(b.take_passed_fds_closed(), SCM_MAX_FD as u64);
        assert!(writers_gone(&r));
    }

    #[test]
    fn nonblocking_receive_would_block() {
        let (a, b) = SeqPacket::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let e = b.peek_len().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
    }

    #[test]
    fn listen_connect_accept() {
        let dir = std::env::temp_dir().join(format!("kt-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("l.sock");
        let l = SeqListener::bind(&p).unwrap();
        let c = SeqPacket::connect(&p, false).unwrap();
        let s = l.accept_blocking().unwrap();
        c.send(b"x").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(s.recv(&mut buf).unwrap(), Recv::Msg(1));
        // Rebinding over a stale socket file works.
        drop(l);
        SeqListener::bind(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
