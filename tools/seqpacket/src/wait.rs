//! Waiting for a socket: `poll(2)` until readable or writable, once or
//! until a deadline.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// What to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// A message, a connection to accept, or hang-up (`POLLIN`).
    Readable,
    /// Room to send (`POLLOUT`).
    Writable,
}

/// Polls `fd` once: true if it became ready (hang-up and errors count as
/// ready: the next call reports them) within `timeout` (`None`: no
/// limit). A signal is `ErrorKind::Interrupted`, for callers with their
/// own signal handling.
pub fn poll_once(fd: impl AsFd, interest: Interest, timeout: Option<Duration>) -> io::Result<bool> {
    let events = match interest {
        Interest::Readable => PollFlags::IN,
        Interest::Writable => PollFlags::OUT,
    };
    let fd = fd.as_fd();
    let mut fds = [PollFd::new(&fd, events)];
    // A timeout too large for a timespec is no timeout.
    let ts = timeout.and_then(|t| Timespec::try_from(t).ok());
    let n = rustix::event::poll(&mut fds, ts.as_ref())?;
    Ok(n > 0)
}

/// Waits until `fd` is ready or `timeout` (`None`: no limit) has passed,
/// carrying on after signals; false on timeout.
pub fn wait(fd: impl AsFd, interest: Interest, timeout: Option<Duration>) -> io::Result<bool> {
    let fd = fd.as_fd();
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match poll_once(fd, interest, left) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeqPacket;

    #[test]
    fn readable_writable_and_timeouts() {
        let (a, b) = SeqPacket::pair().unwrap();
        let t0 = Instant::now();
        assert!(!wait(&b, Interest::Readable, Some(Duration::from_millis(50))).unwrap());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(!poll_once(&b, Interest::Readable, Some(Duration::ZERO)).unwrap());
        assert!(wait(&a, Interest::Writable, Some(Duration::from_millis(50))).unwrap());
        a.send(b"x").unwrap();
        assert!(wait(&b, Interest::Readable, None).unwrap());
        // Hang-up counts as readable.
        let mut buf = [0u8; 4];
        b.recv(&mut buf).unwrap();
        drop(a);
        assert!(wait(&b, Interest::Readable, Some(Duration::from_secs(5))).unwrap());
    }
}
