//! The `/dev/kerntransport` ioctl numbers and argument structs, mirroring
//! `proto/include/kerntransport.h`. The numbers are computed with the Linux
//! `_IOC` encoding (asm-generic layout, as on x86_64 and arm64). The only
//! I/O here is the two batch ioctls ([`sendv`], [`recvv`]), whose argument
//! carries pointers a plain `sys::ioctl_ptr` could not vouch for.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use kt_proto::consts::NAME_MAX;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;

/// `_IOC_NONE`.
pub const IOC_NONE: u32 = 0;
/// `_IOC_WRITE`: user space writes the argument.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: user space reads the argument.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`. A size that does not fit the 14-bit field is
/// a build error where the result is a constant.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS), "ioctl argument too large");
    (dir << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// `_IO(type, nr)`.
pub const fn io(ty: u8, nr: u8) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// `_IOW(type, nr, size)`.
pub const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// `_IOR(type, nr, size)`.
pub const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

/// `struct kt_ioc_name`: a NUL-terminated service name.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KtIocName {
    /// Name bytes followed by at least one NUL.
    pub name: [u8; NAME_MAX + 1],
}

impl KtIocName {
    /// Wraps a validated name (1..=63 bytes, no NUL or control characters).
    pub fn new(name: &str) -> Result<Self, kt_proto::name::NameError> {
        let valid = kt_proto::name::validate(name.as_bytes())?;
        let mut out = Self {
            name: [0; NAME_MAX + 1],
        };
        out.name[..valid.len()].copy_from_slice(valid.as_bytes());
        Ok(out)
    }
}

/// `struct kt_ioc_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KtIocInfo {
    /// Negotiated largest message.
    pub max_msg_size: u32,
    /// This endpoint's channel id, 0 if none.
    pub channel: u32,
    /// `KT_STATE_*`.
    pub state: u32,
    /// Host-assigned guest id.
    pub guest_id: u32,
}

/// `KT_STATE_IDLE`.
pub const STATE_IDLE: u32 = 0;
/// `KT_STATE_CONNECTING`.
pub const STATE_CONNECTING: u32 = 1;
/// `KT_STATE_OPEN`.
pub const STATE_OPEN: u32 = 2;
/// `KT_STATE_LISTENING`.
pub const STATE_LISTENING: u32 = 3;
/// `KT_STATE_CLOSED`.
pub const STATE_CLOSED: u32 = 4;

/// Human name of a `KT_STATE_*` value.
pub fn state_name(state: u32) -> &'static str {
    match state {
        STATE_IDLE => "idle",
        STATE_CONNECTING => "connecting",
        STATE_OPEN => "open",
        STATE_LISTENING => "listening",
        STATE_CLOSED => "closed",
        _ => "unknown",
    }
}

/// `struct kt_ioc_msg`: one message of a batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KtIocMsg {
    /// User pointer to the payload (`KT_IOC_SENDV`) or buffer (`KT_IOC_RECVV`).
    pub buf: u64,
    /// SENDV: message length; RECVV: in: buffer size, out: message length.
    pub len: u32,
    /// In: 0; RECVV out: `KT_MSG_F_*`.
    pub flags: u32,
}

/// `struct kt_ioc_msgvec`: the argument of `KT_IOC_SENDV` / `KT_IOC_RECVV`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KtIocMsgvec {
    /// User pointer to `count` [`KtIocMsg`].
    pub msgs: u64,
    /// 1..=[`KT_IOC_VEC_MAX`].
    pub count: u32,
    /// 0.
    pub flags: u32,
}

/// `KT_IOC_VEC_MAX`: most messages per batch ioctl.
pub const KT_IOC_VEC_MAX: usize = 64;
/// `KT_MSG_F_TRUNC`: RECVV entry whose buffer was too small; its `len` is
/// the message's length and the message stays queued.
pub const KT_MSG_F_TRUNC: u32 = 0x1;

/// `KT_IOC_MAGIC`.
pub const KT_IOC_MAGIC: u8 = b'k';
/// `KT_IOC_CONNECT`: `_IOW('k', 1, struct kt_ioc_name)`.
pub const KT_IOC_CONNECT: u32 = iow(KT_IOC_MAGIC, 1, size_of::<KtIocName>());
/// `KT_IOC_LISTEN`: `_IOW('k', 2, struct kt_ioc_name)`.
pub const KT_IOC_LISTEN: u32 = iow(KT_IOC_MAGIC, 2, size_of::<KtIocName>());
/// `KT_IOC_ACCEPT`: `_IO('k', 3)`; returns a new fd.
pub const KT_IOC_ACCEPT: u32 = io(KT_IOC_MAGIC, 3);
/// `KT_IOC_INFO`: `_IOR('k', 4, struct kt_ioc_info)`.
pub const KT_IOC_INFO: u32 = ior(KT_IOC_MAGIC, 4, size_of::<KtIocInfo>());
/// `KT_IOC_SENDV`: `_IOW('k', 6, struct kt_ioc_msgvec)`; returns the count sent.
pub const KT_IOC_SENDV: u32 = iow(KT_IOC_MAGIC, 6, size_of::<KtIocMsgvec>());
/// `KT_IOC_RECVV`: `_IOW('k', 7, struct kt_ioc_msgvec)`; returns the entries filled.
pub const KT_IOC_RECVV: u32 = iow(KT_IOC_MAGIC, 7, size_of::<KtIocMsgvec>());

/// Runs a batch ioctl over `ents[..n]`.
fn msgvec_ioctl(
    fd: BorrowedFd<'_>,
    request: u32,
    ents: &mut [KtIocMsg; KT_IOC_VEC_MAX],
    n: usize,
) -> io::Result<usize> {
    let mut vec = KtIocMsgvec {
        msgs: ents.as_mut_ptr() as u64,
        count: n as u32,
        flags: 0,
    };
    let arg: *mut KtIocMsgvec = &mut vec;
    // SAFETY: `arg` points to a live KtIocMsgvec whose `msgs` points to
    // `n` <= KT_IOC_VEC_MAX live entries; the callers fill each entry's
    // buf/len from a slice that outlives this call (SENDV only reads them,
    // RECVV writes at most `len` bytes into each and the entries' len/flags).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// A message length as the ABI's `u32` (EMSGSIZE beyond it).
fn len32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EMSGSIZE))
}

/// `KT_IOC_SENDV`: sends the first at most [`KT_IOC_VEC_MAX`] of `msgs` in
/// order; returns how many were sent (only the first may wait for credit).
pub fn sendv(fd: BorrowedFd<'_>, msgs: &[&[u8]]) -> io::Result<usize> {
    let n = msgs.len().min(KT_IOC_VEC_MAX);
    let mut ents = [KtIocMsg::default(); KT_IOC_VEC_MAX];
    for (e, m) in ents.iter_mut().zip(&msgs[..n]) {
        e.buf = m.as_ptr() as u64;
        e.len = len32(m.len())?;
    }
    msgvec_ioctl(fd, KT_IOC_SENDV, &mut ents, n)
}

/// What one [`recvv`] filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Entries filled; 0 means end of channel.
    pub count: usize,
    /// Each filled entry's message length.
    pub lens: [u32; KT_IOC_VEC_MAX],
    /// The last filled entry's buffer was too small: its message is still
    /// queued, `lens[count - 1]` is its length and nothing was copied.
    pub truncated: bool,
}

/// `KT_IOC_RECVV`: receives up to `bufs.len()` (at most
/// [`KT_IOC_VEC_MAX`]) messages, one per buffer, waiting only for the first.
pub fn recvv(fd: BorrowedFd<'_>, bufs: &mut [&mut [u8]]) -> io::Result<Received> {
    let n = bufs.len().min(KT_IOC_VEC_MAX);
    let mut ents = [KtIocMsg::default(); KT_IOC_VEC_MAX];
    for (e, b) in ents.iter_mut().zip(bufs.iter_mut()) {
        e.buf = b.as_mut_ptr() as u64;
        // A larger buffer than 4 GiB is never needed: offer 4 GiB - 1.
        e.len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    }
    let count = msgvec_ioctl(fd, KT_IOC_RECVV, &mut ents, n)?.min(n);
    let mut out = Received {
        count,
        lens: [0; KT_IOC_VEC_MAX],
        truncated: false,
    };
    for (l, e) in out.lens.iter_mut().zip(&ents[..count]) {
        *l = e.len;
    }
    out.truncated = count > 0 && ents[count - 1].flags & KT_MSG_F_TRUNC != 0;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_header() {
        assert_eq!(size_of::<KtIocName>(), 64);
        assert_eq!(std::mem::align_of::<KtIocName>(), 1);
        assert_eq!(size_of::<KtIocInfo>(), 16);
        assert_eq!(std::mem::align_of::<KtIocInfo>(), 4);
        // struct kt_ioc_msg { __u64 buf; __u32 len; __u32 flags; }
        assert_eq!(size_of::<KtIocMsg>(), 16);
        assert_eq!(std::mem::offset_of!(KtIocMsg, buf), 0);
        assert_eq!(std::mem::offset_of!(KtIocMsg, len), 8);
        assert_eq!(std::mem::offset_of!(KtIocMsg, flags), 12);
        // struct kt_ioc_msgvec { __u64 msgs; __u32 count; __u32 flags; }
        assert_eq!(size_of::<KtIocMsgvec>(), 16);
        assert_eq!(std::mem::offset_of!(KtIocMsgvec, msgs), 0);
        assert_eq!(std::mem::offset_of!(KtIocMsgvec, count), 8);
        assert_eq!(std::mem::offset_of!(KtIocMsgvec, flags), 12);
    }

    #[test]
    fn encoding_matches_linux_ioctls_from_libc() {
        // Independent reference values: libc's constants for tty ioctls.
        // TIOCGPTN = _IOR('T', 0x30, unsigned int)
        assert_eq!(
            ior(b'T', 0x30, size_of::<u32>()) as libc::Ioctl,
            libc::TIOCGPTN
        );
        // TIOCSPTLCK = _IOW('T', 0x31, int)
        assert_eq!(
            iow(b'T', 0x31, size_of::<i32>()) as libc::Ioctl,
            libc::TIOCSPTLCK
        );
        // _IO has neither direction nor size bits; all four fields at their limits.
        assert_eq!(io(b'T', 0x20), 0x5420);
        assert_eq!(ioc(IOC_READ | IOC_WRITE, 0x12, 0x34, 0x3fff), 0xffff_1234);
    }

    #[test]
    fn kerntransport_ioctl_numbers() {
        // dir << 30 | size << 16 | 'k' (0x6b) << 8 | nr
        assert_eq!(KT_IOC_CONNECT, 0x4040_6b01);
        assert_eq!(KT_IOC_LISTEN, 0x4040_6b02);
        assert_eq!(KT_IOC_ACCEPT, 0x0000_6b03);
        assert_eq!(KT_IOC_INFO, 0x8010_6b04);
        assert_eq!(KT_IOC_SENDV, 0x4010_6b06);
        assert_eq!(KT_IOC_RECVV, 0x4010_6b07);
    }

    #[test]
    fn numbers_agree_with_kt_proto() {
        use kt_proto::consts;
        assert_eq!(KT_IOC_MAGIC, consts::IOC_MAGIC);
        assert_eq!(KT_IOC_CONNECT, consts::IOC_CONNECT);
        assert_eq!(KT_IOC_LISTEN, consts::IOC_LISTEN);
        assert_eq!(KT_IOC_ACCEPT, consts::IOC_ACCEPT);
        assert_eq!(KT_IOC_INFO, consts::IOC_INFO);
        assert_eq!(size_of::<KtIocName>(), consts::IOC_NAME_SIZE);
        assert_eq!(size_of::<KtIocInfo>(), consts::IOC_INFO_SIZE);
        assert_eq!(KT_IOC_SENDV, consts::IOC_SENDV);
        assert_eq!(KT_IOC_RECVV, consts::IOC_RECVV);
        assert_eq!(size_of::<KtIocMsg>(), consts::IOC_MSG_SIZE);
        assert_eq!(size_of::<KtIocMsgvec>(), consts::IOC_MSGVEC_SIZE);
        assert_eq!(KT_IOC_VEC_MAX, consts::IOC_VEC_MAX);
        assert_eq!(KT_MSG_F_TRUNC, consts::MSG_F_TRUNC);
    }

    #[test]
    fn batch_ioctls_on_a_non_kerntransport_fd_fail_cleanly() {
        // A pipe does not know the requests: ENOTTY, nothing touched.
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe returned two fresh descriptors that we now own.
        let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        // SAFETY: as above.
        let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        let e = sendv(w.as_fd(), &[&b"a"[..], &b"b"[..]]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        let mut a = [7u8; 4];
        let mut bufs = [&mut a[..]];
        let e = recvv(r.as_fd(), &mut bufs).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        assert_eq!(a, [7u8; 4]);
    }

    #[test]
    fn names_are_nul_terminated_and_validated() {
        let n = KtIocName::new("echo").unwrap();
        assert_eq!(&n.name[..5], b"echo\0");
        assert!(n.name[4..].iter().all(|&b| b == 0));
        let long = "x".repeat(63);
        let n = KtIocName::new(&long).unwrap();
        assert_eq!(n.name[63], 0);
        assert!(KtIocName::new("").is_err());
        assert!(KtIocName::new(&"x".repeat(64)).is_err());
        assert!(KtIocName::new("a\nb").is_err());
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name(STATE_OPEN), "open");
        assert_eq!(state_name(STATE_LISTENING), "listening");
        assert_eq!(state_name(99), "unknown");
    }
}
