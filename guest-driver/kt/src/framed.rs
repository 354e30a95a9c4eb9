//! Length-prefixed messages over a byte stream — a vsock `SOCK_STREAM`
//! socket, a virtio-serial port, a Unix `SOCK_STREAM` socket — for the
//! peer-transport benchmark: each message is a `u32` little-endian length,
//! then that many payload bytes. Owns the framing and the guest-side opens
//! (`--vsock CID:PORT`, `--serial PATH`); [`Channel`] uses it for
//! [`Kind::Stream`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::channel::{Channel, Kind};
use crate::error::{Error, Result};
use crate::sys;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Largest message a stream endpoint can receive.
pub const RECV_CAPACITY: usize = 1 << 20;

fn wait(fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<()> {
    sys::retry(|| sys::poll(fd, events, -1)).map(|_| ())
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8], socket: bool, chunk: usize) -> io::Result<()> {
    while !data.is_empty() {
        let part = match chunk {
            0 => data,
            c => data.get(..c).unwrap_or(data),
        };
        let r = if socket {
            kt_seqpacket::send_fd(fd, part)
        } else {
            sys::write(fd, part)
        };
        match r {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(fd, libc::POLLOUT)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended before
/// the first byte. `EAGAIN` before the first byte is returned when
/// `nonblock_start`; once a frame has begun it is waited out.
fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8], nonblock_start: bool) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended inside a frame ({got} of {} bytes)", buf.len()),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && (got > 0 || !nonblock_start) => {
                wait(fd, libc::POLLIN)?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Sends `msg` as one frame; returns `msg.len()`. `socket` selects
/// `send(MSG_NOSIGNAL)` over `write`; `chunk` (0: no limit) caps each call.
pub fn write_frame(
    fd: BorrowedFd<'_>,
    msg: &[u8],
    socket: bool,
    chunk: usize,
) -> io::Result<usize> {
    let len = u32::try_from(msg.len()).map_err(|_| io::Error::from_raw_os_error(libc::EMSGSIZE))?;
    let mut frame = Vec::with_capacity(HEADER + msg.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(msg);
    write_all(fd, &frame, socket, chunk)?;
    Ok(msg.len())
}

/// Receives one frame into `buf`; returns its length. A frame longer than
/// `buf` returns its length unread (the caller reports the truncation and
/// drops the stream). A clean end of stream is `EPIPE`.
pub fn read_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut header = [0u8; HEADER];
    if !read_exact(fd, &mut header, true)? {
        return Err(io::Error::from_raw_os_error(libc::EPIPE));
    }
    let len = u32::from_le_bytes(header) as usize;
    let Some(dst) = buf.get_mut(..len) else {
        return Ok(len);
    };
    if !read_exact(fd, dst, false)? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream ended after a frame header",
        ));
    }
    Ok(len)
}

/// Parses `CID:PORT` of `--vsock`.
pub fn parse_vsock(s: &str) -> Result<(u32, u32)> {
    let bad = || Error::Usage(format!("--vsock {s}: expected CID:PORT (e.g. 2:5000)"));
    let (cid, port) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        cid.parse().map_err(|_| bad())?,
        port.parse().map_err(|_| bad())?,
    ))
}

/// Guest: connects an `AF_VSOCK` `SOCK_STREAM` socket to `cid:port`;
/// every `send` carries at most `chunk` bytes (0: no limit).
pub fn connect_vsock(addr: &str, max_msg_size: usize, chunk: usize) -> Result<Channel> {
    let (cid, port) = parse_vsock(addr)?;
    let io_err = |what: &str, e| Error::io(format!("vsock {addr}: {what}"), e);
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("socket", io::Error::last_os_error()));
    }
    // SAFETY: socket(2) returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    sa.svm_cid = cid;
    sa.svm_port = port;
    let sa_ptr: *const libc::sockaddr_vm = &sa;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    sys::retry(|| {
        // SAFETY: sa is a valid sockaddr_vm of length `len`.
        let r = unsafe { libc::connect(fd.as_raw_fd(), sa_ptr.cast(), len) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
    .map_err(|e| io_err("connect", e))?;
    Ok(Channel::new(
        fd,
        Kind::Stream {
            socket: true,
            chunk,
        },
        format!("vsock {addr}"),
        max_msg_size,
        RECV_CAPACITY,
    ))
}

/// Guest: opens a virtio-serial port (a character device) read-write;
/// every `write` carries at most `chunk` bytes (0: no limit).
pub fn open_serial(path: &Path, max_msg_size: usize, chunk: usize) -> Result<Channel> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    Ok(Channel::new(
        OwnedFd::from(f),
        Kind::Stream {
            socket: false,
            chunk,
        },
        format!("serial {}", path.display()),
        max_msg_size,
        RECV_CAPACITY,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn frames_keep_boundaries_across_a_byte_stream() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        for m in [&b"one"[..], b"", &[9u8; 5000]] {
            // A chunk limit splits the writes, never the frames.
            assert_eq!(write_frame(a.as_fd(), m, true, 1000).unwrap(), m.len());
        }
        let mut buf = vec![0u8; 8192];
        assert_eq!(read_frame(b.as_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(read_frame(b.as_fd(), &mut buf).unwrap(), 0);
        assert_eq!(read_frame(b.as_fd(), &mut buf).unwrap(), 5000);
        assert!(buf[..5000].iter().all(|&x| x == 9));
        drop(a);
        let e = read_frame(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn a_cut_frame_and_an_oversized_frame_are_errors_not_messages() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        // Header says 10 bytes, only 2 follow, then the writer goes.
        write_all(a.as_fd(), &[10, 0, 0, 0, 1, 2], true, 0).unwrap();
        drop(a);
        let mut buf = vec![0u8; 64];
        let e = read_frame(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        write_frame(a.as_fd(), &[1u8; 100], true, 0).unwrap();
        assert_eq!(read_frame(b.as_fd(), &mut buf[..16]).unwrap(), 100);
    }

    #[test]
    fn vsock_addresses_parse() {
        assert_eq!(parse_vsock("2:5000").unwrap(), (2, 5000));
        for bad in ["2", "x:1", "2:", ":5", "2:99999999999"] {
            assert!(parse_vsock(bad).is_err(), "{bad}");
        }
    }
}
