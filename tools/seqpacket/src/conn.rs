//! One connected `SOCK_SEQPACKET` socket: whole-message send and receive.
//!
//! A zero-length message and EOF both make a plain `recv()` return 0; with
//! `SO_PASSCRED` set (every constructor here sets it) each real message
//! carries an `SCM_CREDENTIALS` control message and EOF carries none,
//! which is how [`Recv::Eof`] is told apart. Receives use `MSG_TRUNC`, so
//! [`Recv::Msg`] is a message's full length even when the buffer was
//! shorter. Descriptors a peer passes (`SCM_RIGHTS`) are closed as they
//! arrive, including on peeks (which install copies), and counted.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rustix::io::{IoSlice, IoSliceMut};
use rustix::net::sockopt::Timeout;
use rustix::net::{
    self, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, Shutdown,
};

use crate::socket::{self, SocketType};
use crate::wait::{wait, Interest};

/// What a receive saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// A message whose full length is the value (it may have been truncated
    /// to the buffer when receiving, never when peeking with a 0 buffer).
    Msg(usize),
    /// The peer closed the connection and no message is left.
    Eof,
}

/// Most descriptors one message can carry (Linux `SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// Control buffer for a receive: one `SCM_CREDENTIALS` message plus one
/// `SCM_RIGHTS` message with [`SCM_MAX_FD`] descriptors, and room for
/// alignment, so a well-formed message is never truncated (`MSG_CTRUNC`).
const RECV_CONTROL: usize = rustix::cmsg_space!(ScmCredentials(1), ScmRights(SCM_MAX_FD)) + 64;
/// Control buffer for a send of up to [`SCM_MAX_FD`] descriptors.
const SEND_CONTROL: usize = rustix::cmsg_space!(ScmRights(SCM_MAX_FD)) + 64;

/// Sends `buf` as one message on the connected socket `fd` (never raises
/// SIGPIPE): for callers that keep a bare descriptor (the `kt` tool's
/// channels, which also carry byte streams).
pub fn send_fd(fd: impl AsFd, buf: &[u8]) -> io::Result<usize> {
    Ok(net::send(fd, buf, SendFlags::NOSIGNAL)?)
}

/// Receives (or with `peek`, peeks at) one message from the socket `fd`
/// into `buf`, closing every descriptor the peer passed with it; returns
/// what it saw ([`Recv::Msg`] carries the full length, `MSG_TRUNC`) and
/// how many descriptors it closed. Without `SO_PASSCRED` on `fd` a
/// zero-length message without descriptors reads as [`Recv::Eof`].
pub fn recv_fd(fd: impl AsFd, buf: &mut [u8], peek: bool) -> io::Result<(Recv, u64)> {
    let flags = if peek {
        RecvFlags::PEEK
    } else {
        RecvFlags::empty()
    };
    let mut space = [MaybeUninit::<u8>::uninit(); RECV_CONTROL];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = net::recvmsg(
        fd,
        &mut iov,
        &mut control,
        flags | RecvFlags::TRUNC | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut any_control = false;
    let mut closed = 0u64;
    for m in control.drain() {
        any_control = true;
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            // Nothing here uses descriptors from peers; left open they
            // would leak one table slot each.
            for fd in fds {
                drop(fd);
                closed += 1;
            }
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Only possible past SCM_MAX_FD descriptors (the buffer holds
        // that many): the kernel did not install the ones that did not
        // fit and dropped its references to them.
        log::debug!("host socket: control data truncated (excess descriptors discarded)");
        any_control = true;
    }
    if msg.bytes == 0 && !any_control {
        return Ok((Recv::Eof, closed));
    }
    Ok((Recv::Msg(msg.bytes), closed))
}

/// A connected `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
    /// Descriptors the peer passed that were closed on receipt.
    passed_fds_closed: AtomicU64,
}

impl SeqPacket {
    /// Wraps a connected `SOCK_SEQPACKET` descriptor as it is (no
    /// `SO_PASSCRED`: see [`Self::set_passcred`]).
    pub fn from_fd(fd: OwnedFd) -> SeqPacket {
        SeqPacket {
            fd,
            passed_fds_closed: AtomicU64::new(0),
        }
    }

    /// The descriptor, for callers with their own framing.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Connects to the listening socket at `path`, with `SO_PASSCRED`
    /// set. A non-blocking connect fails with `WouldBlock` instead of
    /// waiting when the listener's backlog is full.
    pub fn connect(path: &Path, nonblocking: bool) -> io::Result<SeqPacket> {
        let fd = socket::connect_fd(path, SocketType::SeqPacket, nonblocking)?;
        let s = SeqPacket::from_fd(fd);
        s.set_passcred(true)?;
        Ok(s)
    }

    /// A connected, blocking pair with `SO_PASSCRED` set (tests and
    /// in-process peers).
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let (a, b) = socket::pair_fds()?;
        let (a, b) = (SeqPacket::from_fd(a), SeqPacket::from_fd(b));
        a.set_passcred(true)?;
        b.set_passcred(true)?;
        Ok((a, b))
    }

    /// Switches `SO_PASSCRED`, which tells zero-length messages from EOF.
    pub fn set_passcred(&self, on: bool) -> io::Result<()> {
        Ok(net::sockopt::set_socket_passcred(&self.fd, on)?)
    }

    /// Switches blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        socket::set_nonblocking(&self.fd, on)
    }

    /// Sets the send buffer size (best effort; the kernel caps it).
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        socket::set_send_buffer(&self.fd, bytes)
    }

    /// Sets the receive buffer size (best effort; the kernel caps it).
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        socket::set_recv_buffer(&self.fd, bytes)
    }

    /// Sets a receive timeout for blocking receives (`None` = wait forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        Ok(net::sockopt::set_socket_timeout(
            &self.fd,
            Timeout::Recv,
            t,
        )?)
    }

    /// Sends `buf` as one message (never raises SIGPIPE).
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        send_fd(&self.fd, buf)
    }

    /// Sends `buf` as one message without blocking, whatever the socket's
    /// mode: `WouldBlock` when the peer's queue is full.
    pub fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        Ok(net::send(
            &self.fd,
            buf,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )?)
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
        let mut space = [MaybeUninit::<u8>::uninit(); SEND_CONTROL];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other(
                "descriptors do not fit the control buffer",
            ));
        }
        let iov = [IoSlice::new(buf)];
        Ok(net::sendmsg(
            &self.fd,
            &iov,
            &mut control,
            SendFlags::NOSIGNAL,
        )?)
    }

    fn recv_flags(&self, buf: &mut [u8], peek: bool) -> io::Result<Recv> {
        let (r, closed) = recv_fd(&self.fd, buf, peek)?;
        if closed > 0 {
            self.passed_fds_closed.fetch_add(closed, Relaxed);
        }
        Ok(r)
    }

    /// How many descriptors passed by the peer (`SCM_RIGHTS`) this socket
    /// has closed since the last call; resets the count.
    pub fn take_passed_fds_closed(&self) -> u64 {
        self.passed_fds_closed.swap(0, Relaxed)
    }

    /// Receives one message into `buf`; `Recv::Msg` carries its full
    /// length, which exceeds `buf.len()` if it was truncated.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        self.recv_flags(buf, false)
    }

    /// Length of the next message without consuming it.
    pub fn peek_len(&self) -> io::Result<Recv> {
        self.recv_flags(&mut [], true)
    }

    /// Waits up to `timeout` (`None`: no limit) for a message or hang-up;
    /// false on timeout.
    pub fn readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        wait(&self.fd, Interest::Readable, timeout)
    }

    /// Waits up to `timeout` (`None`: no limit) for room to send; false on
    /// timeout.
    pub fn writable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        wait(&self.fd, Interest::Writable, timeout)
    }

    /// Shuts down both directions (the peer sees EOF).
    pub fn shutdown(&self) -> io::Result<()> {
        Ok(net::shutdown(&self.fd, Shutdown::Both)?)
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
        // Truncation: the full length is reported, the buffer holds the start.
        assert_eq!(b.recv(&mut buf[..10]).unwrap(), Recv::Msg(3000));
        assert_eq!(&buf[..10], &[7u8; 10]);
        drop(a);
        assert_eq!(b.peek_len().unwrap(), Recv::Eof);
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Eof);
    }

    #[test]
    fn without_passcred_zero_length_reads_as_eof() {
        let (a, b) = socket::pair_fds().unwrap();
        let (a, b) = (SeqPacket::from_fd(a), SeqPacket::from_fd(b));
        a.send(b"").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Eof);
        b.set_passcred(true).unwrap();
        a.send(b"").unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(0));
    }

    /// A pipe; (read end non-blocking, write end).
    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).unwrap();
        (std::fs::File::from(r), w)
    }

    /// Whether every write end of the pipe is closed (read gives EOF, not
    /// EAGAIN).
    fn writers_gone(mut r: &std::fs::File) -> bool {
        let mut b = [0u8; 1];
        matches!(r.read(&mut b), Ok(0))
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
    fn descriptors_are_closed_without_passcred_too() {
        let (a, b) = socket::pair_fds().unwrap();
        let (a, b) = (SeqPacket::from_fd(a), SeqPacket::from_fd(b));
        let (r, w) = pipe();
        a.send_with_fds(b"", &[w.as_fd()]).unwrap();
        drop(w);
        let mut buf = [0u8; 4];
        // Descriptors make it a message even without credentials.
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(0));
        assert_eq!(b.take_passed_fds_closed(), 1);
        assert!(writers_gone(&r));
    }

    #[test]
    fn bare_descriptor_receive_closes_and_counts() {
        let (a, b) = socket::pair_fds().unwrap();
        let a = SeqPacket::from_fd(a);
        let (r, w) = pipe();
        a.send_with_fds(b"abcdef", &[w.as_fd(), w.as_fd()]).unwrap();
        drop(w);
        assert_eq!(recv_fd(&b, &mut [], true).unwrap(), (Recv::Msg(6), 2));
        let mut buf = [0u8; 3];
        assert_eq!(recv_fd(&b, &mut buf, false).unwrap(), (Recv::Msg(6), 2));
        assert_eq!(&buf, b"abc");
        assert!(writers_gone(&r));
        send_fd(&b, b"back").unwrap();
        assert_eq!(a.recv(&mut [0u8; 8]).unwrap(), Recv::Msg(4));
        drop(a);
        assert_eq!(recv_fd(&b, &mut buf, false).unwrap(), (Recv::Eof, 0));
    }

    #[test]
    fn most_descriptors_one_message_carries_fit_the_buffer() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (r, w) = pipe();
        let fds = vec![w.as_fd(); SCM_MAX_FD];
        a.send_with_fds(b"x", &fds).unwrap();
        let too_many = vec![w.as_fd(); SCM_MAX_FD + 1];
        let e = a.send_with_fds(b"x", &too_many).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        drop(w);
        let mut buf = [0u8; 4];
        assert_eq!(b.recv(&mut buf).unwrap(), Recv::Msg(1));
        assert_eq!(b.take_passed_fds_closed(), SCM_MAX_FD as u64);
        assert!(writers_gone(&r));
    }

    #[test]
    fn nonblocking_receive_and_send_would_block() {
        let (a, b) = SeqPacket::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let e = b.peek_len().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        a.set_send_buffer(4096).unwrap();
        let chunk = [0u8; 1024];
        let mut sent = 0;
        let e = loop {
            match a.try_send(&chunk) {
                Ok(_) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "send never blocked");
        };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(!a.writable(Some(Duration::from_millis(20))).unwrap());
    }

    #[test]
    fn read_timeout_and_shutdown() {
        let (a, b) = SeqPacket::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let e = b.recv(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        b.set_read_timeout(None).unwrap();
        assert!(!b.readable(Some(Duration::from_millis(10))).unwrap());
        a.shutdown().unwrap();
        assert_eq!(b.recv(&mut [0u8; 4]).unwrap(), Recv::Eof);
        let e = a.send(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
