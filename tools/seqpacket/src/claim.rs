//! Claiming a Unix socket path before binding it: a socket file left by a
//! dead daemon is removed, one a live process still listens on is refused.
//!
//! Owns only the decision "may this path be bound?"; binding is the
//! caller's job ([`crate::SeqListener::bind`]; in kt-vhost-device also
//! `control.rs` and the vhost-user listener in `daemon.rs`; the `kt`
//! tool's host-service listeners). The check and the later bind are not atomic: two daemons
//! started in the same instant can still race, but a daemon started while
//! another one runs is always refused instead of silently taking over its
//! paths.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// Why a socket path cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Something answers on the path.
    #[error("another kt-vhost-device is listening on {}", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{} exists and is not a socket", path.display())]
    NotSocket {
        /// The path.
        path: PathBuf,
    },
    /// Looking at or removing the path failed.
    #[error("socket path {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
}

/// Makes `path` free for `bind()`: nothing there is fine; a socket file
/// nobody is bound to (connect says `ECONNREFUSED`) is removed; a socket a
/// live process is bound to, or any other kind of file, is refused.
///
/// The probe is a `SOCK_DGRAM` connect: on the stream and seqpacket
/// listeners the daemon uses it fails with `EPROTOTYPE` (the type differs)
/// without queueing a connection, so the live owner never sees the probe
/// (a stream probe would become a spurious vhost-user frontend or control
/// client). A datagram socket answers the connect: live as well.
pub fn claim_socket_path(path: &Path) -> Result<(), ClaimError> {
    let io_err = |source| ClaimError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ClaimError::NotSocket {
            path: path.to_owned(),
        });
    }
    let probe = UnixDatagram::unbound().map_err(io_err)?;
    match probe.connect(path) {
        Ok(()) => Err(ClaimError::InUse {
            path: path.to_owned(),
        }),
        Err(e) => match e.raw_os_error() {
            Some(e) if e == Errno::CONNREFUSED.raw_os_error() => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(e)),
            },
            Some(e) if e == Errno::NOENT.raw_os_error() => Ok(()),
            Some(e) if e == Errno::PROTOTYPE.raw_os_error() => Err(ClaimError::InUse {
                path: path.to_owned(),
            }),
            _ => Err(io_err(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kt-claim-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn free_stale_live_and_foreign_paths() {
        let d = dir("all");
        let p = d.join("s.sock");
        // Nothing there.
        claim_socket_path(&p).unwrap();
        // A live stream listener.
        let l = UnixListener::bind(&p).unwrap();
        let e = claim_socket_path(&p).unwrap_err();
        assert!(matches!(e, ClaimError::InUse { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("another kt-vhost-device is listening on {}", p.display())
        );
        assert!(p.exists(), "a live socket must not be removed");
        // The probe left no connection for the owner to accept.
        l.set_nonblocking(true).unwrap();
        assert_eq!(
            l.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        // Its owner went away: the file is stale and is removed.
        drop(l);
        assert!(p.exists());
        claim_socket_path(&p).unwrap();
        assert!(!p.exists());
        // A live SOCK_SEQPACKET listener.
        let s = crate::SeqListener::bind(&p).unwrap();
        assert!(matches!(
            claim_socket_path(&p),
            Err(ClaimError::InUse { .. })
        ));
        drop(s);
        // Not a socket: refused and left alone.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"data").unwrap();
        assert!(matches!(
            claim_socket_path(&p),
            Err(ClaimError::NotSocket { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
