//! Socket paths: the `sockaddr_un` length limit, checked before any
//! system call so callers can report it in their own words.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::net::SocketAddrUnix;

/// Longest path a `sockaddr_un` holds (108 bytes with the trailing NUL).
pub const MAX_PATH: usize = 107;

/// A socket path that is empty or longer than [`MAX_PATH`] bytes.
#[derive(Debug, thiserror::Error)]
#[error("socket path must be 1 to {MAX_PATH} bytes")]
pub struct PathTooLong {
    /// The path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
}

/// Checks that `path` fits a `sockaddr_un` (1 to [`MAX_PATH`] bytes).
pub fn check_path(path: &Path) -> Result<(), PathTooLong> {
    let len = path.as_os_str().as_bytes().len();
    if len == 0 || len > MAX_PATH {
        return Err(PathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

/// The address of `path`; a bad length is `InvalidInput` carrying
/// [`PathTooLong`].
pub(crate) fn unix_addr(path: &Path) -> io::Result<SocketAddrUnix> {
    check_path(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(SocketAddrUnix::new(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_limits() {
        assert!(check_path(Path::new("/tmp/x.sock")).is_ok());
        assert!(check_path(&PathBuf::from("x".repeat(MAX_PATH))).is_ok());
        let e = check_path(&PathBuf::from("x".repeat(MAX_PATH + 1))).unwrap_err();
        assert_eq!(e.len, MAX_PATH + 1);
        assert_eq!(e.to_string(), "socket path must be 1 to 107 bytes");
        assert_eq!(check_path(Path::new("")).unwrap_err().len, 0);
        let e = unix_addr(Path::new("")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "socket path must be 1 to 107 bytes");
    }
}
