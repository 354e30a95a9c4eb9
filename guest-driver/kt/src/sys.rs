//! Thin safe wrappers over the few raw system calls the tool needs on file
//! descriptors: read, write, poll, fcntl, ioctl (socket send and receive
//! are kt-seqpacket's). `EINTR` is retried unless a SIGINT/SIGTERM arrived
//! (see `signal`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::signal;

/// Converts a `-1`-on-error return value.
fn cvt(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// Runs `f` again on `EINTR` unless the user interrupted us.
pub fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !signal::interrupted() => {}
            r => return r,
        }
    }
}

/// `read(2)` once.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    cvt(r)
}

/// `write(2)` once.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let r = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    cvt(r)
}

/// `poll(2)` on one fd; returns `revents` (0 on timeout). `timeout_ms < 0`
/// waits forever.
pub fn poll(fd: BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.revents)
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an int flag argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An ioctl whose argument is a pointer to `T` (read, written, or both by
/// the kernel). Returns the ioctl's non-negative result.
pub fn ioctl_ptr<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<i32> {
    let ptr: *mut T = arg;
    // SAFETY: `ptr` points to a live, properly aligned T that the request
    // number encodes the size of; the kernel reads/writes at most that.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, ptr) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// An ioctl without argument. Returns the ioctl's non-negative result.
pub fn ioctl_none(fd: BorrowedFd<'_>, request: u32) -> io::Result<i32> {
    // SAFETY: the request takes no argument; 0 is passed for the variadic.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0);
        // SAFETY: pipe2 returned two fresh descriptors that we now own.
        let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        // SAFETY: as above.
        let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        (a, b)
    }

    #[test]
    fn nonblocking_read_reports_would_block() {
        let (r, w) = pipe();
        set_nonblocking(r.as_fd(), true).unwrap();
        let mut buf = [0u8; 4];
        let e = read(r.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(poll(r.as_fd(), libc::POLLIN, 0).unwrap(), 0);
        assert_eq!(write(w.as_fd(), b"ab").unwrap(), 2);
        assert_ne!(poll(r.as_fd(), libc::POLLIN, 0).unwrap() & libc::POLLIN, 0);
        assert_eq!(read(r.as_fd(), &mut buf).unwrap(), 2);
    }

    #[test]
    fn ioctl_errors_come_back_as_errno() {
        let (r, _w) = pipe();
        let mut n = 0u32;
        // TIOCGPTN on a pipe: not a tty.
        let e = ioctl_ptr(r.as_fd(), libc::TIOCGPTN as u32, &mut n).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
    }
}
