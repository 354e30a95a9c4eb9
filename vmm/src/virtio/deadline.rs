//! Time limits for the vhost-user socket: a connect that gives up after the
//! timeout, and a per-connection watchdog that shuts the socket down when a
//! request takes longer than the timeout. vhost 0.18 retries a receive that
//! fails with EAGAIN, so SO_RCVTIMEO alone would only make it spin; a shut
//! down socket makes the blocked call return an error at once. Owns no
//! vhost-user logic: callers arm the watchdog around each request and ask
//! afterwards whether it fired.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Default time limit of one vhost-user request (`--vhost-user-timeout-ms`).
pub const DEFAULT_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_VHOST_USER_TIMEOUT_MS);

fn timeval(t: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: t.subsec_micros().into(),
    }
}

/// Connects a Unix stream socket to `path`, waiting at most `timeout` for
/// room in the listener's backlog (a stuck backend stops accepting). The
/// returned stream is blocking, without timeouts.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = timeval(timeout);
    set_timeout(fd.as_raw_fd(), libc::SO_SNDTIMEO, &tv)?;
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes that outlives the call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINPROGRESS) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no room in the listener's backlog after {} ms",
                    timeout.as_millis()
                ),
            ),
            _ => e,
        });
    }
    // Back to a socket without a send timeout: the watchdog bounds requests.
    set_timeout(fd.as_raw_fd(), libc::SO_SNDTIMEO, &timeval(Duration::ZERO))?;
    Ok(UnixStream::from(fd))
}

fn set_timeout(fd: RawFd, opt: libc::c_int, tv: &libc::timeval) -> io::Result<()> {
    // SAFETY: tv points at a timeval of the size passed; fd is open.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_ref(tv).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One request in progress.
#[derive(Debug)]
struct Armed {
    id: u64,
    socket: RawFd,
    deadline: Instant,
    /// It ran out of time (its socket was shut down).
    fired: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Requests in progress (several threads may each have one).
    armed: Vec<Armed>,
    next_id: u64,
    /// The owner is gone: the thread ends.
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shuts a socket down when a request on it outlives the timeout. One per
/// vhost-user device (requests from several threads at once are fine); its
/// thread ends when the watchdog is dropped.
#[derive(Debug)]
pub struct Watchdog {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Watchdog {
    /// A watchdog allowing each request `timeout`.
    pub fn new(timeout: Duration) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || watch(&s))?;
        Ok(Self { shared, timeout })
    }

    /// The time each request is allowed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` (one request on `socket`) under the time limit. Returns its
    /// result and whether the limit was hit (then `socket` is shut down and
    /// `f`'s error is the consequence).
    pub fn run<T>(&self, socket: &impl AsRawFd, f: impl FnOnce() -> T) -> (T, bool) {
        let id = {
            let mut st = lock(&self.shared);
            let id = st.next_id;
            st.next_id += 1;
            st.armed.push(Armed {
                id,
                socket: socket.as_raw_fd(),
                deadline: Instant::now() + self.timeout,
                fired: false,
            });
            id
        };
        self.shared.wake.notify_one();
        let out = f();
        let mut st = lock(&self.shared);
        // Disarmed under the lock: the socket is never shut down after this.
        let fired = match st.armed.iter().position(|a| a.id == id) {
            Some(i) => st.armed.swap_remove(i).fired,
            None => false,
        };
        (out, fired)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.wake.notify_one();
    }
}

fn watch(s: &Shared) {
    let mut st = lock(s);
    loop {
        if st.stop {
            return;
        }
        let now = Instant::now();
        for a in st
            .armed
            .iter_mut()
            .filter(|a| !a.fired && a.deadline <= now)
        {
            // SAFETY: a.socket is the socket of a request still in progress
            // (`run` disarms under this lock before its caller can close
            // it); shutdown takes no pointers.
            unsafe { libc::shutdown(a.socket, libc::SHUT_RDWR) };
            a.fired = true;
        }
        let next = st
            .armed
            .iter()
            .filter(|a| !a.fired)
            .map(|a| a.deadline)
            .min();
        st = match next {
            None => s.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(d) => s
                .wake
                .wait_timeout(st, d.saturating_duration_since(now))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_stalled_read_ends_at_the_timeout() {
        let (a, _b) = UnixStream::pair().unwrap();
        let w = Watchdog::new(Duration::from_millis(100)).unwrap();
        let start = Instant::now();
        let (r, fired) = w.run(&a, || a.try_clone().unwrap().read(&mut [0u8; 4]));
        assert!(fired);
        assert_eq!(r.unwrap(), 0, "shut down: the read sees end of file");
        assert!(start.elapsed() < Duration::from_secs(2));
        // A request that finishes in time is left alone.
        let (mut c, d) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &d, b"x").unwrap();
        let fd = c.as_raw_fd();
        let (r, fired) = w.run(&fd, || c.read(&mut [0u8; 1]));
        assert_eq!((r.unwrap(), fired), (1, false));
        std::thread::sleep(Duration::from_millis(200));
        std::io::Write::write_all(&mut &d, b"y").unwrap();
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 1, "not shut down later");
        drop(a);
    }

    #[test]
    fn requests_from_two_threads_are_timed_separately() {
        let w = Arc::new(Watchdog::new(Duration::from_millis(300)).unwrap());
        let (stalled, _peer) = UnixStream::pair().unwrap();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            let s = stalled;
            w2.run(&s, || (&s).read(&mut [0u8; 1]))
        });
        // A quick request meanwhile neither fires nor disarms the other.
        std::thread::sleep(Duration::from_millis(50));
        let (c, d) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &d, b"x").unwrap();
        let (r, fired) = w.run(&c, || (&c).read(&mut [0u8; 1]));
        assert_eq!((r.unwrap(), fired), (1, false));
        let (r, fired) = t.join().unwrap();
        assert!(fired);
        assert_eq!(r.unwrap(), 0);
    }

    #[test]
    fn connect_to_a_full_backlog_times_out() {
        let dir = std::env::temp_dir().join(format!("kt-vmm-deadline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("full.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: the listener's open socket; listen() takes no pointers.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        let first = connect(&path, Duration::from_millis(100)).unwrap();
        // Never accepted: fill the backlog until connect gives up.
        let mut held = vec![first];
        let start = Instant::now();
        let err = loop {
            match connect(&path, Duration::from_millis(100)) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 100, "backlog never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(start.elapsed() < Duration::from_secs(30));
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
