//! SIGINT/SIGTERM handling: the handler only records that a signal came and
//! is installed without `SA_RESTART`, so a blocking call in the main thread
//! returns `EINTR` and the tool exits with "interrupted". Worker threads are
//! spawned with both signals blocked so the main thread is the one that sees
//! them.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn signal_set() -> io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given.
    let r = unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by sigemptyset just above.
    let mut set = unsafe { set.assume_init() };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `set` is an initialised sigset_t; sig is a valid signal.
        let r = unsafe { libc::sigaddset(&mut set, sig) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

/// Installs the handler for SIGINT and SIGTERM (no `SA_RESTART`).
pub fn install() -> io::Result<()> {
    let mask = signal_set()?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain data; all-zero is a valid value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        act.sa_mask = mask;
        act.sa_flags = 0;
        // SAFETY: `act` is fully initialised; the handler only stores to an
        // atomic, which is async-signal-safe.
        let r = unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: both pointers are valid; pthread_sigmask writes `old`.
    let r = unsafe { libc::pthread_sigmask(how, set, old.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: pthread_sigmask succeeded, so it wrote the old mask.
    Ok(unsafe { old.assume_init() })
}

/// Spawns a thread that runs with SIGINT/SIGTERM blocked.
pub fn spawn_worker<F, T>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let block = signal_set()?;
    let old = set_mask(libc::SIG_BLOCK, &block)?;
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(f);
    set_mask(libc::SIG_SETMASK, &old)?;
    spawned
}
