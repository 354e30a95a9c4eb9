//! The `/dev/kerntransport` ioctl numbers and argument structs, mirroring
//! `proto/include/kerntransport.h`. The numbers are computed with the Linux
//! `_IOC` encoding (asm-generic layout, as on x86_64 and arm64). No I/O here.

use std::mem::size_of;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_header() {
        assert_eq!(size_of::<KtIocName>(), 64);
        assert_eq!(std::mem::align_of::<KtIocName>(), 1);
        assert_eq!(size_of::<KtIocInfo>(), 16);
        assert_eq!(std::mem::align_of::<KtIocInfo>(), 4);
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
