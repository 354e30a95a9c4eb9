//! Guest side: `/dev/kerntransport`. Opening the device, `KT_IOC_CONNECT`
//! to a host service, `KT_IOC_LISTEN` + `KT_IOC_ACCEPT` for channels the
//! host opens, and `KT_IOC_INFO`. Each resulting file is one channel.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::channel::{Channel, Kind};
use crate::error::{open_error, Error, Result};
use crate::ioctl::{
    KtIocInfo, KtIocName, KT_IOC_ACCEPT, KT_IOC_CONNECT, KT_IOC_INFO, KT_IOC_LISTEN,
};
use crate::sys;

/// Default device node.
pub const DEFAULT_DEVICE: &str = "/dev/kerntransport";

/// Opens the device node (`O_RDWR | O_CLOEXEC`).
pub fn open(path: &Path) -> Result<OwnedFd> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::DeviceOpen {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let r = sys::retry(|| {
        // SAFETY: cpath is a valid NUL-terminated string.
        let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: open(2) returned a fresh descriptor that we now own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    });
    r.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NoDevice {
            path: path.to_path_buf(),
        },
        Some(libc::ENODEV) | Some(libc::ENXIO) => Error::DeviceAbsent {
            path: path.to_path_buf(),
        },
        Some(libc::EINTR) => Error::Interrupted,
        _ => Error::DeviceOpen {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

fn ioc_name(name: &str) -> Result<KtIocName> {
    KtIocName::new(name).map_err(|source| Error::BadName {
        name: name.to_string(),
        source,
    })
}

/// `KT_IOC_INFO` on any kerntransport file.
pub fn info(fd: &OwnedFd, path: &Path) -> Result<KtIocInfo> {
    let mut info = KtIocInfo::default();
    sys::retry(|| sys::ioctl_ptr(fd.as_fd(), KT_IOC_INFO, &mut info)).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EINTR) => Error::Interrupted,
            _ => Error::Io {
                what: format!("{}: KT_IOC_INFO", path.display()),
                source: e,
            },
        }
    })?;
    Ok(info)
}

/// Wraps a connected/accepted file as a channel, asking the driver for the
/// message limit and channel id.
fn channel(fd: OwnedFd, path: &Path, name: &str) -> Result<Channel> {
    let info = info(&fd, path)?;
    let max = (info.max_msg_size as usize).max(1);
    Ok(Channel::new(
        fd,
        Kind::Guest,
        format!("{name} (channel {})", info.channel),
        max,
        max,
    ))
}

/// Connects to host service `name`. Blocks until the host answers.
pub fn connect(path: &Path, name: &str) -> Result<Channel> {
    let mut arg = ioc_name(name)?;
    let fd = open(path)?;
    // Not retried on EINTR: the driver may have started the open.
    sys::ioctl_ptr(fd.as_fd(), KT_IOC_CONNECT, &mut arg)
        .map_err(|e| open_error(name, "connect", e))?;
    channel(fd, path, name)
}

/// Connects to `name` and returns the connected file's `KT_IOC_INFO`.
pub fn connected_info(path: &Path, name: &str) -> Result<KtIocInfo> {
    let mut arg = ioc_name(name)?;
    let fd = open(path)?;
    sys::ioctl_ptr(fd.as_fd(), KT_IOC_CONNECT, &mut arg)
        .map_err(|e| open_error(name, "connect", e))?;
    info(&fd, path)
}

/// A file listening on a service name for host-initiated channels.
#[derive(Debug)]
pub struct GuestListener {
    fd: OwnedFd,
    path: PathBuf,
    name: String,
}

/// Starts listening on `name`.
pub fn listen(path: &Path, name: &str) -> Result<GuestListener> {
    let mut arg = ioc_name(name)?;
    let fd = open(path)?;
    sys::retry(|| sys::ioctl_ptr(fd.as_fd(), KT_IOC_LISTEN, &mut arg)).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) if kt_proto::name::is_kernel_reserved(name) => {
                Error::Open {
                    name: name.to_string(),
                    what: "listen",
                    source: io::Error::new(
                        e.kind(),
                        format!(
                            "names starting with \"k.\" are reserved for kernel services ({e})"
                        ),
                    ),
                }
            }
            _ => Error::Open {
                name: name.to_string(),
                what: "listen",
                source: e,
            },
        }
    })?;
    Ok(GuestListener {
        fd,
        path: path.to_path_buf(),
        name: name.to_string(),
    })
}

impl GuestListener {
    /// Waits up to `timeout` (`None`: forever) for a pending channel;
    /// `Ok(false)` on timeout. Polls in short slices, so a missed wakeup
    /// costs at most one slice.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let slice = Duration::from_millis(200);
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let left = match deadline {
                None => slice,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    left.min(slice)
                }
            };
            if self.poll_once(left)? {
                return Ok(true);
            }
        }
    }

    fn poll_once(&self, timeout: Duration) -> Result<bool> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        match sys::poll(self.fd.as_fd(), libc::POLLIN, ms) {
            Ok(revents) => Ok(revents != 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if crate::signal::interrupted() {
                    Err(Error::Interrupted)
                } else {
                    Ok(false)
                }
            }
            Err(e) => Err(Error::io(format!("{}: poll", self.name), e)),
        }
    }

    /// Accepts the next host-opened channel (blocks).
    pub fn accept(&self) -> Result<Channel> {
        let raw = sys::retry(|| sys::ioctl_none(self.fd.as_fd(), KT_IOC_ACCEPT))
            .map_err(|e| open_error(&self.name, "accept", e))?;
        // SAFETY: KT_IOC_ACCEPT returns a new descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        channel(fd, &self.path, &self.name)
    }
}
