//! Guest memory as I/O vectors: the bytes of a descriptor chain as host
//! slices of guest memory ([`GuestBytes`]), copied out or in where the
//! device must look at them, and sent to or received from a host socket
//! with one `sendmsg`/`recvmsg` on iovecs over them, so message payloads
//! cross the backend without an intermediate buffer.
//!
//! Guest memory is hostile and shared: the guest may change it at any
//! time. Bytes passed through to a socket may change underneath (the guest
//! only hurts its own message); anything the device interprets (headers)
//! is copied out first and checked on the copy.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryError, Permissions, VolatileSlice};

use crate::chain::Mem;

/// Most iovecs one `sendmsg`/`recvmsg` takes (Linux `UIO_MAXIOV`); a
/// longer list (a hostile chain of many tiny descriptors) goes through a
/// copy instead.
pub const IOV_MAX: usize = 1024;

/// Most descriptors one message can carry (Linux `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Bytes in guest memory, in order, as slices of the mapping. Valid while
/// the guest memory they come from is borrowed (`'m`).
#[derive(Clone, Debug, Default)]
pub struct GuestBytes<'m> {
    slices: Vec<VolatileSlice<'m>>,
    len: usize,
}

impl<'m> GuestBytes<'m> {
    /// No bytes.
    pub fn new() -> GuestBytes<'m> {
        GuestBytes::default()
    }

    /// Appends `len` bytes of guest memory at `addr` (they may span
    /// memory regions). Fails on a range outside guest memory or a total
    /// that overflows; nothing is appended then.
    pub fn push(
        &mut self,
        mem: &'m Mem,
        addr: GuestAddress,
        len: usize,
        access: Permissions,
    ) -> Result<(), GuestMemoryError> {
        if len == 0 {
            return Ok(());
        }
        let total = self
            .len
            .checked_add(len)
            .ok_or(GuestMemoryError::GuestAddressOverflow)?;
        let keep = self.slices.len();
        let mut got = 0usize;
        for s in mem.get_slices(addr, len, access)? {
            match s {
                Ok(s) => {
                    got += s.len();
                    self.slices.push(s);
                }
                Err(e) => {
                    self.slices.truncate(keep);
                    return Err(e);
                }
            }
        }
        if got != len {
            self.slices.truncate(keep);
            return Err(GuestMemoryError::InvalidGuestAddress(addr));
        }
        self.len = total;
        Ok(())
    }

    /// Appends the slices of `other`.
    pub fn append(&mut self, other: &GuestBytes<'m>) {
        self.slices.extend_from_slice(&other.slices);
        self.len += other.len;
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slices (iovecs) the bytes take.
    pub fn segments(&self) -> usize {
        self.slices.len()
    }

    /// The bytes from `off` on (slices only; nothing is copied).
    pub fn tail(&self, off: usize) -> GuestBytes<'m> {
        self.range(off, self.len.saturating_sub(off))
    }

    /// `count` bytes from `off` (clamped to what there is).
    pub fn range(&self, off: usize, count: usize) -> GuestBytes<'m> {
        let mut out = GuestBytes::new();
        let mut skip = off;
        let mut want = count;
        for s in &self.slices {
            if want == 0 {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(want);
            if let Ok(part) = s.subslice(skip, n) {
                out.slices.push(part);
                out.len += n;
                want -= n;
            }
            skip = 0;
        }
        out
    }

    /// Copies bytes from offset `off` into `dst`; returns how many (fewer
    /// than `dst.len()` only at the end of the bytes).
    pub fn copy_to(&self, off: usize, dst: &mut [u8]) -> usize {
        let part = self.range(off, dst.len());
        let mut done = 0;
        for s in &part.slices {
            done += s.copy_to(&mut dst[done..]);
        }
        done
    }

    /// Copies `src` into the bytes from offset `off`; returns how many
    /// bytes were written.
    pub fn copy_from(&self, off: usize, src: &[u8]) -> usize {
        let part = self.range(off, src.len());
        let mut done = 0;
        for s in &part.slices {
            let n = s.len().min(src.len() - done);
            s.copy_from(&src[done..done + n]);
            done += n;
        }
        done
    }

    /// A copy of all the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        let n = self.copy_to(0, &mut v);
        v.truncate(n);
        v
    }

    fn iovecs(&self, out: &mut Vec<libc::iovec>) {
        out.extend(self.slices.iter().map(|s| libc::iovec {
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: s.len(),
        }));
    }
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct for which all-zero bytes are a
    // valid value (null pointers, zero lengths); the private padding
    // fields of some targets rule out a struct literal.
    unsafe { MaybeUninit::<libc::msghdr>::zeroed().assume_init() }
}

/// Sends `bytes` as one message on the connected socket `fd` without
/// blocking and without `SIGPIPE`: straight from guest memory with one
/// `sendmsg` when the bytes take at most [`IOV_MAX`] slices, else from a
/// copy. A `SOCK_SEQPACKET` send is all or nothing.
pub fn send_guest(fd: BorrowedFd<'_>, bytes: &GuestBytes<'_>) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    if bytes.segments() > IOV_MAX {
        let copy = bytes.to_vec();
        // SAFETY: `copy` is a live buffer of `copy.len()` bytes the call
        // only reads; `fd` is a borrowed, open descriptor.
        let r = unsafe { libc::send(fd.as_raw_fd(), copy.as_ptr().cast(), copy.len(), flags) };
        return if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        };
    }
    let mut iov = Vec::with_capacity(bytes.segments());
    bytes.iovecs(&mut iov);
    let mut msg = empty_msghdr();
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: every iovec points into guest memory mapped for the lifetime
    // of `bytes` (borrowed across the call) with its length checked when
    // the slice was made; the kernel only reads them. `msg` has no name
    // and no control data; `fd` is a borrowed, open descriptor.
    let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Sends each of `msgs` as one message on the connected socket `fd`, in
/// order, with `sendmmsg` (no blocking, no `SIGPIPE`), straight from guest
/// memory; each must take at most [`IOV_MAX`] slices. Returns how many
/// were sent and, if not all, the error that stopped the rest
/// (`WouldBlock` when the socket is full).
pub fn send_guest_many(fd: BorrowedFd<'_>, msgs: &[GuestBytes<'_>]) -> (usize, Option<io::Error>) {
    if msgs.iter().any(|m| m.segments() > IOV_MAX) {
        return (
            0,
            Some(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more guest slices than one sendmsg takes",
            )),
        );
    }
    let mut iov = Vec::with_capacity(msgs.iter().map(GuestBytes::segments).sum());
    let mut at = Vec::with_capacity(msgs.len());
    for m in msgs {
        at.push((iov.len(), m.segments()));
        m.iovecs(&mut iov);
    }
    // `iov` is complete and never grows again: pointers into it stay put.
    let mut hdrs: Vec<libc::mmsghdr> = at
        .iter()
        .map(|&(start, count)| {
            let mut h = empty_msghdr();
            // SAFETY: `start + count <= iov.len()` by construction: the
            // pointer stays inside (or one past the end of) `iov`.
            h.msg_iov = unsafe { iov.as_mut_ptr().add(start) };
            h.msg_iovlen = count as _;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    let mut done = 0;
    while done < hdrs.len() {
        let rest = &mut hdrs[done..];
        // SAFETY: every header points at iovecs in `iov` (alive and not
        // moved across the call), which point into guest memory mapped for
        // the lifetime of `msgs` with lengths checked when the slices were
        // made; the kernel only reads them and writes `msg_len`. No names,
        // no control data; `fd` is a borrowed, open descriptor.
        let r =
            unsafe { libc::sendmmsg(fd.as_raw_fd(), rest.as_mut_ptr(), rest.len() as _, flags) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (done, Some(e));
        }
        if r == 0 {
            return (done, Some(io::Error::from(io::ErrorKind::WouldBlock)));
        }
        done += r as usize;
    }
    (done, None)
}

/// What [`recv_guest`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recvd {
    /// A message of this full length (`MSG_TRUNC`): the first bytes went to
    /// the guest bytes, the next ones to the spill buffer, the rest (if the
    /// length exceeds both) was cut by the kernel.
    Msg(usize),
    /// The peer closed the connection and no message is left.
    Eof,
}

/// Control buffer: one `SCM_CREDENTIALS` plus `SCM_RIGHTS` with
/// [`SCM_MAX_FD`] descriptors, with room for headers and alignment.
const CONTROL: usize = 64 + size_of::<libc::ucred>() + 64 + SCM_MAX_FD * size_of::<RawFd>();

/// Receives one message from the socket `fd` (with `SO_PASSCRED`, so a
/// zero-length message is told from EOF by its credentials) without
/// blocking: its first bytes into `bytes` (guest memory), what does not
/// fit into `spill`. Descriptors the peer passed are closed at once; the
/// second value is how many. `bytes` must take fewer than [`IOV_MAX`]
/// slices (`InvalidInput` otherwise; callers receive into `spill` alone
/// then).
pub fn recv_guest(
    fd: BorrowedFd<'_>,
    bytes: &GuestBytes<'_>,
    spill: &mut [u8],
) -> io::Result<(Recvd, u64)> {
    if bytes.segments() >= IOV_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more guest slices than one recvmsg takes",
        ));
    }
    let mut iov = Vec::with_capacity(bytes.segments() + 1);
    bytes.iovecs(&mut iov);
    if !spill.is_empty() {
        iov.push(libc::iovec {
            iov_base: spill.as_mut_ptr().cast(),
            iov_len: spill.len(),
        });
    }
    let mut control = [0u64; CONTROL.div_ceil(8)];
    let mut msg = empty_msghdr();
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * 8) as _;
    let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: the iovecs point into guest memory mapped for the lifetime
    // of `bytes` (borrowed across the call; lengths checked when the slices
    // were made) and into `spill`, which is exclusively borrowed; the
    // control buffer is a live, 8-byte-aligned local of the length given.
    let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = r as usize;
    let (any_control, closed) = drain_control(&msg);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Only possible past SCM_MAX_FD descriptors: the kernel did not
        // install the ones that did not fit and dropped its references.
        log::debug!("host socket: control data truncated (excess descriptors discarded)");
    }
    let any_control = any_control || msg.msg_flags & libc::MSG_CTRUNC != 0;
    if n == 0 && !any_control {
        return Ok((Recvd::Eof, closed));
    }
    Ok((Recvd::Msg(n), closed))
}

/// Walks the control messages of a received `msg`: whether there were
/// any, and how many passed descriptors were closed.
fn drain_control(msg: &libc::msghdr) -> (bool, u64) {
    let mut any = false;
    let mut closed = 0u64;
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR reads only its
    // control pointer and length.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        any = true;
        // SAFETY: `c` is non-null and was returned by CMSG_FIRSTHDR or
        // CMSG_NXTHDR, which keep it inside the control buffer.
        let hdr = unsafe { std::ptr::read_unaligned(c) };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(head) / size_of::<RawFd>();
            // SAFETY: `c` points at a control header inside the buffer.
            let data = unsafe { libc::CMSG_DATA(c) };
            for i in 0..count {
                // SAFETY: the kernel wrote `count` descriptors after the
                // header (cmsg_len covers them, inside the buffer).
                let p = unsafe { data.add(i * size_of::<RawFd>()) };
                // SAFETY: `p` points at one of those descriptors.
                let fd = unsafe { std::ptr::read_unaligned(p.cast::<RawFd>()) };
                if fd >= 0 {
                    // SAFETY: the kernel installed this descriptor for us
                    // just now and nothing else owns it: close it (the
                    // device never uses descriptors from peers).
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    closed += 1;
                }
            }
        }
        // SAFETY: `msg` and `c` as above; CMSG_NXTHDR returns null past
        // the end of the buffer.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    (any, closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqpacket::SeqPacket;
    use std::os::fd::AsFd;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .unwrap()
    }

    #[test]
    fn ranges_span_regions_and_copy_both_ways() {
        let m = mem();
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        m.write_slice(&data, GuestAddress(0xff00)).unwrap();
        let mut b = GuestBytes::new();
        b.push(&m, GuestAddress(0xff00), 300, Permissions::Read)
            .unwrap();
        assert_eq!((b.len(), b.segments()), (300, 2));
        assert_eq!(b.to_vec(), data);
        let mut mid = [0u8; 10];
        assert_eq!(b.copy_to(250, &mut mid), 10);
        assert_eq!(&mid, &data[250..260]);
        assert_eq!(b.tail(290).to_vec(), &data[290..]);
        assert_eq!(b.copy_from(298, b"xyz"), 2);
        assert!(b
            .push(&m, GuestAddress(0x1ff00), 0x200, Permissions::Read)
            .is_err());
        assert_eq!(b.len(), 300, "a failed push appends nothing");
    }

    #[test]
    fn many_slices_are_sent_and_received_whole() {
        let m = mem();
        let (a, z) = SeqPacket::pair().unwrap();
        // 1500 one-byte pieces: more than IOV_MAX, sent through a copy.
        let mut b = GuestBytes::new();
        for i in 0..1500u64 {
            m.write_obj((i % 251) as u8, GuestAddress(i * 2)).unwrap();
            b.push(&m, GuestAddress(i * 2), 1, Permissions::Read)
                .unwrap();
        }
        assert_eq!(send_guest(a.as_fd(), &b).unwrap(), 1500);
        let mut buf = vec![0u8; 2000];
        assert_eq!(z.recv(&mut buf).unwrap(), crate::seqpacket::Recv::Msg(1500));
        assert!(buf[..1500]
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (i % 251) as u8));
        // Receiving into that many pieces is refused (the caller uses its
        // spill buffer alone then); 1000 pieces are fine.
        z.send(&buf[..1500]).unwrap();
        let mut spill = vec![0u8; 1600];
        let e = recv_guest(a.as_fd(), &b, &mut spill).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let few = b.range(0, 1000);
        few.copy_from(0, &[0u8; 1000]);
        let (r, fds) = recv_guest(a.as_fd(), &few, &mut spill).unwrap();
        assert_eq!((r, fds), (Recvd::Msg(1500), 0));
        assert_eq!(few.to_vec(), &buf[..1000]);
        assert_eq!(&spill[..500], &buf[1000..1500]);
    }

    #[test]
    fn bursts_are_sent_as_separate_messages_until_the_socket_is_full() {
        let m = mem();
        let (a, z) = SeqPacket::pair().unwrap();
        a.set_send_buffer(4096).unwrap();
        let msgs: Vec<GuestBytes<'_>> = (0..150u64)
            .map(|i| {
                m.write_slice(&[i as u8; 700], GuestAddress(i * 700))
                    .unwrap();
                let mut b = GuestBytes::new();
                // Two slices each, the second empty for the even ones.
                b.push(&m, GuestAddress(i * 700), 300, Permissions::Read)
                    .unwrap();
                b.push(
                    &m,
                    GuestAddress(i * 700 + 300),
                    400 * (i as usize % 2),
                    Permissions::Read,
                )
                .unwrap();
                b
            })
            .collect();
        let (sent, err) = send_guest_many(a.as_fd(), &msgs);
        assert!(sent > 0 && sent < 150, "{sent}");
        assert_eq!(err.unwrap().kind(), io::ErrorKind::WouldBlock);
        let mut buf = [0u8; 1024];
        for i in 0..sent {
            let want = 300 + 400 * (i % 2);
            assert_eq!(z.recv(&mut buf).unwrap(), crate::seqpacket::Recv::Msg(want));
            assert!(buf[..want].iter().all(|&b| b == i as u8));
        }
        let e = z
            .set_nonblocking(true)
            .and_then(|()| z.recv(&mut buf))
            .unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::WouldBlock,
            "more sent than counted"
        );
        drop(z);
        let (sent, err) = send_guest_many(a.as_fd(), &msgs[..2]);
        assert_eq!(sent, 0);
        assert_eq!(err.unwrap().raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn receive_spills_and_tells_empty_messages_from_eof() {
        let m = mem();
        let (a, z) = SeqPacket::pair().unwrap();
        let mut b = GuestBytes::new();
        b.push(&m, GuestAddress(0x100), 8, Permissions::Write)
            .unwrap();
        z.send(b"0123456789abcdef").unwrap();
        z.send(b"").unwrap();
        let mut spill = [0u8; 4];
        assert_eq!(
            recv_guest(a.as_fd(), &b, &mut spill).unwrap().0,
            Recvd::Msg(16)
        );
        assert_eq!(b.to_vec(), b"01234567");
        assert_eq!(&spill, b"89ab");
        assert_eq!(
            recv_guest(a.as_fd(), &b, &mut spill).unwrap().0,
            Recvd::Msg(0)
        );
        let e = recv_guest(a.as_fd(), &b, &mut spill).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(z);
        assert_eq!(recv_guest(a.as_fd(), &b, &mut spill).unwrap().0, Recvd::Eof);
    }

    #[test]
    fn passed_descriptors_are_closed() {
        let m = mem();
        let (a, z) = SeqPacket::pair().unwrap();
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        z.send_with_fds(b"x", &[w.as_fd(), w.as_fd()]).unwrap();
        drop(w);
        let mut b = GuestBytes::new();
        b.push(&m, GuestAddress(0), 4, Permissions::Write).unwrap();
        let (got, closed) = recv_guest(a.as_fd(), &b, &mut []).unwrap();
        assert_eq!((got, closed), (Recvd::Msg(1), 2));
        r.set_nonblocking(true).unwrap();
        let mut one = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut &r, &mut one).unwrap(),
            0,
            "every copy of the passed descriptor is closed"
        );
    }
}
