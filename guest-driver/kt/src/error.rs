//! The tool's error type: one variant per failure a user can meet, each
//! rendered as one line (`main` prints it after `kt: ` and exits 1). Also the
//! errno → error mapping shared by the guest ioctls and the host handshake.

use std::io;
use std::path::PathBuf;

use kt_proto::handshake::HandshakeError;
use kt_proto::NameError;

use crate::traffic::ParamsError;

/// Result alias of the tool.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that makes `kt` exit 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The misc device node does not exist.
    #[error("{}: no such file — is kerntransport.ko loaded?", path.display())]
    NoDevice {
        /// Device path.
        path: PathBuf,
    },
    /// The node exists but no kerntransport virtio device is bound.
    #[error("{}: no kerntransport device present (ENODEV) — does the VM have the virtio device?", path.display())]
    DeviceAbsent {
        /// Device path.
        path: PathBuf,
    },
    /// Opening the device failed otherwise.
    #[error("{}: {source}", path.display())]
    DeviceOpen {
        /// Device path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `ENOENT`: nobody offers this service name.
    #[error("{name}: no such service (ENOENT)")]
    NoService {
        /// Service name.
        name: String,
    },
    /// `EACCES`: the policy refuses this name.
    #[error("{name}: refused (EACCES)")]
    Refused {
        /// Service name.
        name: String,
    },
    /// `ECONNREFUSED`: the service exists but nobody serves it.
    #[error("{name}: connection refused — nobody is serving it (ECONNREFUSED)")]
    ConnRefused {
        /// Service name.
        name: String,
    },
    /// Any other failure to open a channel.
    #[error("{name}: {what}: {source}")]
    Open {
        /// Service name.
        name: String,
        /// Operation (connect, listen, accept).
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The name is not a valid service name.
    #[error("invalid service name {name:?}: {source}")]
    BadName {
        /// What the user gave.
        name: String,
        /// Why it is invalid.
        source: NameError,
    },
    /// `EMSGSIZE`: the message is over the channel's limit.
    #[error("message of {len} bytes is too big: the limit is {limit} bytes (EMSGSIZE)")]
    MsgSize {
        /// Message length.
        len: usize,
        /// `max_msg_size` of the channel.
        limit: usize,
    },
    /// A signal (SIGINT, SIGTERM) interrupted a blocking call.
    #[error("interrupted")]
    Interrupted,
    /// `ECONNRESET`: the channel was reset (peer gone or transport reset).
    #[error("{label}: channel reset (ECONNRESET)")]
    Reset {
        /// Channel label.
        label: String,
    },
    /// The peer closed the channel while we were still sending.
    #[error("{label}: the peer closed the channel")]
    PeerClosed {
        /// Channel label.
        label: String,
    },
    /// The peer closed the channel because a message was larger than the
    /// device's maximum (SPEC §9: an oversized host message).
    #[error("{label}: the peer closed the channel: a message was too big (EMSGSIZE)")]
    ClosedTooBig {
        /// Channel label.
        label: String,
    },
    /// The channel ended before the expected number of messages.
    #[error("{label}: channel closed after {got} of {want} messages")]
    Ended {
        /// Channel label.
        label: String,
        /// Messages received.
        got: u64,
        /// Messages expected.
        want: u64,
    },
    /// Nothing arrived in time (`--timeout`).
    #[error("{label}: nothing arrived for {secs} s (--timeout)")]
    Timeout {
        /// Channel label.
        label: String,
        /// The timeout.
        secs: f64,
    },
    /// A received message did not fit the receive buffer.
    #[error("{label}: received a {len}-byte message, larger than the {limit}-byte limit (see --max-msg-size)")]
    Truncated {
        /// Channel label.
        label: String,
        /// Real length.
        len: usize,
        /// Buffer size.
        limit: usize,
    },
    /// The backend's socket does not exist.
    #[error("{}: no such socket — is kt-vhost-device running?", path.display())]
    NoSocket {
        /// Socket path.
        path: PathBuf,
    },
    /// Nobody listens on the backend's socket.
    #[error("{}: connection refused — is kt-vhost-device running?", path.display())]
    SocketRefused {
        /// Socket path.
        path: PathBuf,
    },
    /// A socket path that does not fit `sockaddr_un`.
    #[error("{}: socket path too long ({len} bytes, at most {max})", path.display())]
    PathTooLong {
        /// Socket path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Another server already listens on the path.
    #[error("{}: already in use by a running server", path.display())]
    SocketInUse {
        /// Socket path.
        path: PathBuf,
    },
    /// Other socket operation failures.
    #[error("{}: {what}: {source}", path.display())]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Operation.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The device's handshake reply did not parse.
    #[error("{name}: bad handshake reply from kt-vhost-device: {source}")]
    Handshake {
        /// Service name.
        name: String,
        /// Why.
        source: HandshakeError,
    },
    /// I/O on a channel or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// Bad `gen`/`verify` size parameters.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// Arguments that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// `kt verify` found a problem.
    #[error("verify: {0}")]
    Verify(String),
    /// `kt bench` got something other than an echo.
    /// `kt soak` found a problem or could not go on.
    #[error("soak: {0}")]
    Soak(String),
    #[error("bench: {0}")]
    Bench(String),
    /// `kt list`: the device refused `kt.services` (ENOENT): it predates
    /// service discovery.
    #[error("kt.services: the device does not offer service discovery (ENOENT) — kt-vhost-device too old?")]
    NoDiscovery,
    /// `kt list`: the device closed `kt.services` before a whole listing.
    #[error("kt.services: the device closed the channel before a complete listing")]
    DiscoveryEnded,
    /// `kt list`: the device sent a listing that breaks SPEC §3.3.
    #[error("kt.services: bad listing from the device: {source}")]
    BadListing {
        /// What is wrong with it.
        source: kt_proto::listing::ListingError,
    },
    /// `kt list`: no listing (or, with `--wait`, none naming the service)
    /// in time.
    #[error("{}", match wanted {
        Some(w) => format!("{w}: not listed by kt.services within {secs} s (--timeout)"),
        None => format!("kt.services: no listing from the device within {secs} s (--timeout)"),
    })]
    ListTimeout {
        /// `--wait NAME`.
        wanted: Option<String>,
        /// The timeout.
        secs: f64,
    },
    /// The driver's sysfs directory is missing.
    #[error("{}: no such directory — is kerntransport.ko loaded?", path.display())]
    NoDriver {
        /// The sysfs directory.
        path: PathBuf,
    },
    /// The driver is loaded but bound to no device.
    #[error("{}: no kerntransport device is bound to the driver", path.display())]
    NoBoundDevice {
        /// The sysfs directory.
        path: PathBuf,
    },
    /// A driver counter in sysfs did not hold a number.
    #[error("{device}/{attribute}: {value:?} is not a number")]
    BadAttribute {
        /// The virtio device (`virtioN`).
        device: String,
        /// The attribute, relative to the device.
        attribute: String,
        /// What it held.
        value: String,
    },
}

impl Error {
    /// Wraps an I/O error with a description of the operation.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Maps the errno of a failed channel open (guest `KT_IOC_CONNECT`,
/// `KT_IOC_LISTEN`, `KT_IOC_ACCEPT`, or the host handshake's `ERR <errno>`)
/// to the error the user sees.
pub fn open_error(name: &str, what: &'static str, source: io::Error) -> Error {
    let name = name.to_string();
    match source.raw_os_error() {
        Some(libc::ENOENT) => Error::NoService { name },
        Some(libc::EACCES) | Some(libc::EPERM) => Error::Refused { name },
        Some(libc::ECONNREFUSED) => Error::ConnRefused { name },
        Some(libc::ECONNRESET) => Error::Reset { label: name },
        Some(libc::EINTR) => Error::Interrupted,
        _ => Error::Open { name, what, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(e: i32) -> io::Error {
        io::Error::from_raw_os_error(e)
    }

    #[test]
    fn open_errors_name_the_cause() {
        let s = |e| open_error("echo", "connect", errno(e)).to_string();
        assert_eq!(s(libc::ENOENT), "echo: no such service (ENOENT)");
        assert_eq!(s(libc::EACCES), "echo: refused (EACCES)");
        assert_eq!(
            s(libc::ECONNREFUSED),
            "echo: connection refused — nobody is serving it (ECONNREFUSED)"
        );
        assert_eq!(s(libc::EINTR), "interrupted");
        assert!(s(libc::EMFILE).starts_with("echo: connect: "));
    }

    #[test]
    fn device_errors_read_as_specified() {
        let e = Error::NoDevice {
            path: "/dev/kerntransport".into(),
        };
        assert_eq!(
            e.to_string(),
            "/dev/kerntransport: no such file — is kerntransport.ko loaded?"
        );
        let e = Error::MsgSize {
            len: 70000,
            limit: 65536,
        };
        assert_eq!(
            e.to_string(),
            "message of 70000 bytes is too big: the limit is 65536 bytes (EMSGSIZE)"
        );
    }
}
