//! One open kerntransport channel as the tool sees it: either a guest
//! `/dev/kerntransport` file or a host `SOCK_SEQPACKET` connection. Owns the
//! per-message send/receive rules both share — one message per call (or,
//! on a guest file, a batch per `KT_IOC_SENDV` / `KT_IOC_RECVV`), `EAGAIN`
//! handling for `--nonblock`, end-of-channel detection, timeouts — and maps
//! errno values to the tool's errors.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::{framed, ioctl, sys};

/// Which side of the transport the channel lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `/dev/kerntransport` file in the guest: `read`/`write`.
    Guest,
    /// A Unix `SOCK_SEQPACKET` socket on the host: `recv`/`send`.
    Host,
    /// A byte stream (vsock, virtio-serial, Unix `SOCK_STREAM`) carrying
    /// length-prefixed messages ([`crate::framed`]); `socket` selects
    /// `send` over `write`.
    Stream {
        /// The fd is a socket.
        socket: bool,
        /// Largest single `send`/`write` (0: no limit).
        chunk: usize,
    },
}

/// What one receive produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// A message of this many bytes is in the buffer.
    Msg(usize),
    /// The peer closed the channel; everything it sent has been read.
    Eof,
}

/// `EAGAIN` counts of a non-blocking channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbStats {
    /// Sends that returned `EAGAIN` (and were retried after `poll`).
    pub send_eagain: u64,
    /// Receives that returned `EAGAIN`.
    pub recv_eagain: u64,
}

/// What a 0-byte read turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterZero {
    Msg,
    Eof,
    Unknown,
}

/// An open channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    kind: Kind,
    label: String,
    max_msg_size: usize,
    recv_capacity: usize,
    timeout: Option<Duration>,
    /// A message read ahead by [`Channel::look_ahead`].
    stash: Mutex<Option<Vec<u8>>>,
}

impl Channel {
    /// Wraps a connected fd. `max_msg_size` is the largest message this side
    /// may send; `recv_capacity` the largest it can receive.
    pub fn new(
        fd: OwnedFd,
        kind: Kind,
        label: String,
        max_msg_size: usize,
        recv_capacity: usize,
    ) -> Self {
        Self {
            fd,
            kind,
            label,
            max_msg_size,
            recv_capacity,
            timeout: None,
            stash: Mutex::new(None),
        }
    }

    /// Human name for messages ("echo (channel 3)").
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Renames the channel (once its id is known).
    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    /// Which side of the transport this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Largest message that may be sent.
    pub fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// A receive buffer large enough for any message.
    pub fn recv_buffer(&self) -> Vec<u8> {
        vec![0; self.recv_capacity.max(1)]
    }

    /// Switches `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        sys::set_nonblocking(self.fd.as_fd(), on)
            .map_err(|e| Error::io(format!("{}: set O_NONBLOCK", self.label), e))
    }

    /// Makes receives fail with [`Error::Timeout`] after `timeout` of silence.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// A second handle on the same channel (for a writer thread).
    pub fn try_clone(&self) -> Result<Channel> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io(format!("{}: dup", self.label), e))?;
        Ok(Channel {
            fd,
            kind: self.kind,
            label: self.label.clone(),
            max_msg_size: self.max_msg_size,
            recv_capacity: self.recv_capacity,
            timeout: self.timeout,
            stash: Mutex::new(None),
        })
    }

    fn raw_send(&self, msg: &[u8]) -> io::Result<usize> {
        match self.kind {
            Kind::Guest => sys::write(self.fd.as_fd(), msg),
            Kind::Host => kt_seqpacket::send_fd(&self.fd, msg),
            Kind::Stream { socket, chunk } => {
                framed::write_frame(self.fd.as_fd(), msg, socket, chunk)
            }
        }
    }

    fn raw_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.kind {
            Kind::Guest => sys::read(self.fd.as_fd(), buf),
            // Descriptors a peer passes are closed on receipt; EOF reads
            // as 0 like a zero-length message (see `after_zero`).
            Kind::Host => match kt_seqpacket::recv_fd(&self.fd, buf, false)? {
                (kt_seqpacket::Recv::Msg(n), _) => Ok(n),
                (kt_seqpacket::Recv::Eof, _) => Ok(0),
            },
            // A clean end of stream is EPIPE, so 0 is always a message.
            Kind::Stream { .. } => framed::read_frame(self.fd.as_fd(), buf),
        }
    }

    /// With a timeout set: waits until a message (or the end) can be read,
    /// else fails with [`Error::Timeout`]. Without one: returns at once.
    fn wait_readable(&self) -> Result<()> {
        if let Some(t) = self.timeout {
            if !self.wait(libc::POLLIN, Some(t))? {
                return Err(Error::Timeout {
                    label: self.label.clone(),
                    secs: t.as_secs_f64(),
                });
            }
        }
        Ok(())
    }

    /// Waits until `events` are ready; `Ok(false)` on timeout.
    fn wait(&self, events: libc::c_short, timeout: Option<Duration>) -> Result<bool> {
        let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
        let revents = sys::retry(|| sys::poll(self.fd.as_fd(), events, ms))
            .map_err(|e| self.map_err(e, 0, "poll"))?;
        Ok(revents != 0)
    }

    /// Decides what a 0-byte read was: end-of-channel and a zero-length
    /// message both read as 0. While the peer is connected it was a message.
    /// Once it hung up: a socket counts what is still queued (`FIONREAD`);
    /// `/dev/kerntransport` cannot, so [`Channel::look_ahead`] decides.
    fn after_zero(&self) -> Result<AfterZero> {
        if matches!(self.kind, Kind::Stream { .. }) {
            return Ok(AfterZero::Msg);
        }
        let revents = sys::retry(|| sys::poll(self.fd.as_fd(), libc::POLLIN | libc::POLLRDHUP, 0))
            .map_err(|e| self.map_err(e, 0, "poll"))?;
        if revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) == 0 {
            return Ok(AfterZero::Msg);
        }
        if self.kind == Kind::Guest {
            return Ok(AfterZero::Unknown);
        }
        let mut queued: libc::c_int = 0;
        match sys::ioctl_ptr(self.fd.as_fd(), libc::FIONREAD as u32, &mut queued) {
            Ok(_) if queued > 0 => Ok(AfterZero::Msg),
            Ok(_) => Ok(AfterZero::Eof),
            Err(_) => Ok(AfterZero::Unknown),
        }
    }

    /// After a 0-byte read from a peer that has gone: reads the next
    /// message (reads after a close return at once) and keeps it for the
    /// next `recv`. Another 0 means end-of-channel (so a zero-length message
    /// that is the very last one of a departed peer reads as the end); an
    /// error means the 0 was a message, since the driver reports a failed
    /// channel's end as that error, and the error comes again next time.
    fn look_ahead(&self, cap: usize) -> Result<Recv> {
        let mut next = vec![0u8; cap];
        match sys::retry(|| self.raw_recv(&mut next)) {
            Ok(0) => Ok(Recv::Eof),
            Ok(n) if n > cap => Err(Error::Truncated {
                label: self.label.clone(),
                len: n,
                limit: cap,
            }),
            Ok(n) => {
                next.truncate(n);
                *self.stash.lock().unwrap_or_else(|e| e.into_inner()) = Some(next);
                Ok(Recv::Msg(0))
            }
            Err(_) => Ok(Recv::Msg(0)),
        }
    }

    fn map_err(&self, e: io::Error, len: usize, what: &str) -> Error {
        match e.raw_os_error() {
            Some(libc::EMSGSIZE) => Error::MsgSize {
                len,
                limit: self.max_msg_size,
            },
            Some(libc::ECONNRESET) => Error::Reset {
                label: self.label.clone(),
            },
            Some(libc::EPIPE) | Some(libc::ENOTCONN) => Error::PeerClosed {
                label: self.label.clone(),
            },
            Some(libc::EINTR) => Error::Interrupted,
            _ => Error::io(format!("{}: {what}", self.label), e),
        }
    }

    /// Sends one message; in non-blocking mode waits with `poll` on `EAGAIN`
    /// and counts it.
    pub fn send(&self, msg: &[u8], nb: &mut NbStats) -> Result<()> {
        if self.kind == Kind::Host && msg.len() > self.max_msg_size {
            // The device would drop the whole connection (SPEC §9).
            return Err(Error::MsgSize {
                len: msg.len(),
                limit: self.max_msg_size,
            });
        }
        loop {
            match sys::retry(|| self.raw_send(msg)) {
                Ok(n) if n == msg.len() => return Ok(()),
                Ok(n) => {
                    return Err(Error::io(
                        format!("{}: send", self.label),
                        io::Error::other(format!(
                            "short write: {n} of {} bytes (message split)",
                            msg.len()
                        )),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    nb.send_eagain += 1;
                    self.wait(libc::POLLOUT, None)?;
                }
                Err(e) => return Err(self.map_err(e, msg.len(), "send")),
            }
        }
    }

    /// Receives one message into `buf` (use [`Channel::recv_buffer`]).
    pub fn recv(&self, buf: &mut [u8], nb: &mut NbStats) -> Result<Recv> {
        let stashed = self.stash.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(m) = stashed {
            let Some(dst) = buf.get_mut(..m.len()) else {
                return Err(Error::Truncated {
                    label: self.label.clone(),
                    len: m.len(),
                    limit: buf.len(),
                });
            };
            dst.copy_from_slice(&m);
            return Ok(Recv::Msg(m.len()));
        }
        loop {
            self.wait_readable()?;
            match sys::retry(|| self.raw_recv(buf)) {
                Ok(0) => {
                    return match self.after_zero()? {
                        AfterZero::Msg => Ok(Recv::Msg(0)),
                        AfterZero::Eof => Ok(Recv::Eof),
                        AfterZero::Unknown => self.look_ahead(buf.len()),
                    }
                }
                Ok(n) if n > buf.len() => {
                    return Err(Error::Truncated {
                        label: self.label.clone(),
                        len: n,
                        limit: buf.len(),
                    })
                }
                Ok(n) => return Ok(Recv::Msg(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    nb.recv_eagain += 1;
                    self.wait(libc::POLLIN, None)?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(Recv::Eof),
                // The peer closed with KT_ERR_MSGSIZE: /dev/kerntransport
                // says ECONNABORTED (older drivers said EMSGSIZE, which our
                // buffer of max_msg_size bytes cannot mean otherwise).
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EMSGSIZE)) => {
                    return Err(Error::ClosedTooBig {
                        label: self.label.clone(),
                    })
                }
                Err(e) => return Err(self.map_err(e, 0, "receive")),
            }
        }
    }

    /// A batch ioctl's errno as the tool's error (`ENOTTY`: an older
    /// driver without it).
    fn batch_err(&self, e: io::Error, len: usize, what: &str) -> Error {
        if e.raw_os_error() == Some(libc::ENOTTY) {
            return Error::io(
                format!("{}: {what}", self.label),
                io::Error::other("the driver has no batch ioctls (KT_IOC_SENDV/RECVV)"),
            );
        }
        self.map_err(e, len, what)
    }

    /// Sends every message of `msgs` in order: on a guest file up to
    /// [`ioctl::KT_IOC_VEC_MAX`] per `KT_IOC_SENDV`, elsewhere one
    /// [`Channel::send`] each. A partial batch (credit ran out after the
    /// first) is continued at once; `EAGAIN` waits in `poll` as `send` does.
    pub fn send_batch(&self, msgs: &[&[u8]], nb: &mut NbStats) -> Result<()> {
        if self.kind != Kind::Guest {
            return msgs.iter().try_for_each(|m| self.send(m, nb));
        }
        let mut rest = msgs;
        while !rest.is_empty() {
            match sys::retry(|| ioctl::sendv(self.fd.as_fd(), rest)) {
                Ok(n) => rest = &rest[n.min(rest.len())..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    nb.send_eagain += 1;
                    self.wait(libc::POLLOUT, None)?;
                }
                Err(e) => return Err(self.batch_err(e, rest[0].len(), "send batch")),
            }
        }
        Ok(())
    }

    /// Receives up to `bufs.len()` messages (at most
    /// [`ioctl::KT_IOC_VEC_MAX`]), one per buffer, waiting only for the
    /// first; `lens` gets their lengths. On a guest file one `KT_IOC_RECVV`,
    /// elsewhere one [`Channel::recv`]. Returns the count; 0 is end of
    /// channel. A message larger than its buffer is [`Error::Truncated`].
    pub fn recv_batch(
        &self,
        bufs: &mut [&mut [u8]],
        lens: &mut Vec<usize>,
        nb: &mut NbStats,
    ) -> Result<usize> {
        lens.clear();
        let stashed = self
            .stash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if self.kind != Kind::Guest || stashed || bufs.is_empty() {
            let Some(first) = bufs.first_mut() else {
                return Ok(0);
            };
            return Ok(match self.recv(first, nb)? {
                Recv::Msg(n) => {
                    lens.push(n);
                    1
                }
                Recv::Eof => 0,
            });
        }
        loop {
            self.wait_readable()?;
            match sys::retry(|| ioctl::recvv(self.fd.as_fd(), bufs)) {
                Ok(r) if r.truncated => {
                    let i = r.count - 1;
                    return Err(Error::Truncated {
                        label: self.label.clone(),
                        len: r.lens[i] as usize,
                        limit: bufs[i].len(),
                    });
                }
                Ok(r) => {
                    lens.extend(r.lens[..r.count].iter().map(|&l| l as usize));
                    return Ok(r.count);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    nb.recv_eagain += 1;
                    self.wait(libc::POLLIN, None)?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(0),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED)) => {
                    return Err(Error::ClosedTooBig {
                        label: self.label.clone(),
                    })
                }
                Err(e) => return Err(self.batch_err(e, 0, "receive batch")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::seqpacket_pair;

    fn pair() -> (Channel, Channel) {
        let (a, b) = seqpacket_pair().unwrap();
        (
            Channel::new(a, Kind::Host, "a".into(), 4096, 8192),
            Channel::new(b, Kind::Host, "b".into(), 4096, 8192),
        )
    }

    #[test]
    fn boundaries_and_eof() {
        let (a, b) = pair();
        let mut nb = NbStats::default();
        a.send(b"", &mut nb).unwrap();
        a.send(b"one", &mut nb).unwrap();
        a.send(b"", &mut nb).unwrap();
        a.send(&[7u8; 4096], &mut nb).unwrap();
        let mut buf = b.recv_buffer();
        assert_eq!(b.recv(&mut buf, &mut nb).unwrap(), Recv::Msg(0));
        assert_eq!(b.recv(&mut buf, &mut nb).unwrap(), Recv::Msg(3));
        assert_eq!(&buf[..3], b"one");
        // The sender goes away with messages still queued: the empty one in
        // the middle must not read as end-of-channel.
        drop(a);
        assert_eq!(b.recv(&mut buf, &mut nb).unwrap(), Recv::Msg(0));
        assert_eq!(b.recv(&mut buf, &mut nb).unwrap(), Recv::Msg(4096));
        assert_eq!(b.recv(&mut buf, &mut nb).unwrap(), Recv::Eof);
    }

    #[test]
    fn guest_files_tell_empty_messages_from_eof_by_reading_ahead() {
        // Kind::Guest uses read/write and no FIONREAD, as on
        // /dev/kerntransport; a seqpacket socket stands in for the device.
        let (a, b) = seqpacket_pair().unwrap();
        let a = Channel::new(a, Kind::Guest, "a".into(), 4096, 4096);
        let b = Channel::new(b, Kind::Guest, "b".into(), 4096, 4096);
        let mut nb = NbStats::default();
        for m in [&b""[..], b"one", b"", &[9u8; 4096]] {
            a.send(m, &mut nb).unwrap();
        }
        drop(a);
        let mut buf = b.recv_buffer();
        let mut got = Vec::new();
        while let Recv::Msg(n) = b.recv(&mut buf, &mut nb).unwrap() {
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got, vec![vec![], b"one".to_vec(), vec![], vec![9u8; 4096]]);
    }

    #[test]
    fn batches_fall_back_to_one_message_per_call_off_the_guest() {
        let (a, b) = pair();
        let mut nb = NbStats::default();
        a.send_batch(&[&b"x"[..], b"", b"yz"], &mut nb).unwrap();
        drop(a);
        let mut big = b.recv_buffer();
        let mut small = [0u8; 4];
        let mut lens = Vec::new();
        let mut got = Vec::new();
        loop {
            let mut bufs = [&mut big[..], &mut small[..]];
            match b.recv_batch(&mut bufs, &mut lens, &mut nb).unwrap() {
                0 => break,
                n => {
                    assert_eq!(n, 1, "one message per call off the guest");
                    got.push(bufs[0][..lens[0]].to_vec());
                }
            }
        }
        assert_eq!(got, vec![b"x".to_vec(), vec![], b"yz".to_vec()]);
    }

    #[test]
    fn host_side_refuses_oversized_messages() {
        let (a, _b) = pair();
        let e = a.send(&[0u8; 4097], &mut NbStats::default()).unwrap_err();
        assert!(matches!(
            e,
            Error::MsgSize {
                len: 4097,
                limit: 4096
            }
        ));
    }

    #[test]
    fn truncation_is_an_error() {
        let (a, b) = pair();
        let mut nb = NbStats::default();
        a.send(&[1u8; 100], &mut nb).unwrap();
        let mut small = [0u8; 10];
        assert!(matches!(
            b.recv(&mut small, &mut nb),
            Err(Error::Truncated { len: 100, .. })
        ));
    }

    #[test]
    fn nonblocking_counts_eagain_and_timeout_fires() {
        let (a, mut b) = pair();
        b.set_nonblocking(true).unwrap();
        b.set_timeout(Some(Duration::from_millis(20)));
        let mut buf = b.recv_buffer();
        let mut nb = NbStats::default();
        assert!(matches!(
            b.recv(&mut buf, &mut nb),
            Err(Error::Timeout { .. })
        ));
        // The writer fills the socket and must meet EAGAIN; drain only once
        // the socket reports it is full.
        a.set_nonblocking(true).unwrap();
        let probe = a.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut nb = NbStats::default();
            for _ in 0..2000 {
                a.send(&[3u8; 4000], &mut nb).unwrap();
            }
            nb
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sys::poll(probe.fd.as_fd(), libc::POLLOUT, 0).unwrap() & libc::POLLOUT != 0 {
            assert!(std::time::Instant::now() < deadline, "socket never filled");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(probe);
        b.set_timeout(Some(Duration::from_secs(10)));
        for _ in 0..2000 {
            assert_eq!(b.recv(&mut buf, &mut nb).unwrap(), Recv::Msg(4000));
        }
        let wnb = writer.join().unwrap();
        assert!(wnb.send_eagain > 0, "the writer never saw EAGAIN");
        assert_eq!(b.recv(&mut buf, &mut nb).unwrap(), Recv::Eof);
    }

    #[test]
    fn send_to_closed_peer_is_peer_closed() {
        let (a, b) = pair();
        drop(b);
        assert!(matches!(
            a.send(b"x", &mut NbStats::default()),
            Err(Error::PeerClosed { .. })
        ));
    }
}
