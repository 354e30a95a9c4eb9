//! The daemon's system-call allow-list (seccomp-bpf via `seccompiler`).
//!
//! Each thread installs it on itself before it serves anything (threads it
//! starts inherit it): the daemon serves vhost-user, reads and writes
//! guest memory and host `AF_UNIX` sockets, and nothing else. One thread
//! may do more: the manager of a daemon configured by a file (`--config`),
//! which adds VMs on reload, may also `bind`/`listen` sockets and `unlink`
//! stale ones ([`Role::Manager`]); with the flags' single VM nothing is
//! ever added, and the manager gets the workers' filter. A call outside
//! the list fails with `EPERM` (`--seccomp enforce`, the default) or is
//! allowed and logged by the kernel's audit log (`--seccomp log`, to find a
//! missing entry); `--seccomp off` installs nothing.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What the filter does with a call outside the allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Refuse it with EPERM.
    Enforce,
    /// Allow it and have the kernel log it (audit).
    Log,
    /// Install no filter.
    Off,
}

/// Which filter a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// VM, control and signal threads: serve only.
    Worker,
    /// The thread that adds VMs: also binds and unlinks socket paths.
    Manager,
}

/// Calls only [`Role::Manager`] may make: creating VM sockets.
const MANAGER_ONLY: &[libc::c_long] = &[
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This CPU architecture has no filter.
    #[error("seccomp: unsupported architecture {0}")]
    Arch(&'static str),
    /// seccompiler rejected the rules.
    #[error("seccomp: building the filter")]
    Build(#[source] seccompiler::BackendError),
    /// seccompiler could not compile the filter.
    #[error("seccomp: compiling the filter")]
    Compile(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("seccomp: installing the filter")]
    Install(#[source] seccompiler::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SeccompError>;

/// Calls the daemon makes after set-up, found by tracing the integration
/// tests and the e2e runs, plus what a panic or an allocator needs.
const ALLOWED: &[libc::c_long] = &[
    // memory: guest RAM (vhost-user SET_MEM_TABLE maps the frontend's fds),
    // allocator, thread stacks
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    // descriptors and I/O
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    // the spare descriptor for EMFILE handling (/dev/null)
    libc::SYS_openat,
    // sockets (socket() and socketpair() are limited to AF_UNIX below)
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    // guest -> host bursts: several messages of one channel in one call
    libc::SYS_sendmmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // event loops and waiting
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_futex,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_sched_yield,
    // the listener's back-off timer after accept errors
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // threads (one set of workers per frontend connection)
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // signals, and what a panic's abort needs
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_tgkill,
    // limits and randomness (hash maps)
    libc::SYS_prlimit64,
    libc::SYS_getrandom,
    // SIGHUP (reload) arrives on a signalfd
    libc::SYS_signalfd4,
    // threads started after set-up add the workers' filter to their own
    libc::SYS_seccomp,
];

fn target_arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// The allow-list of `role` as a BPF program; calls outside it get
/// `mismatch`.
fn program(mismatch: SeccompAction, role: Role) -> Result<BpfProgram> {
    let extra = match role {
        Role::Worker => &[][..],
        Role::Manager => MANAGER_ONLY,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // Host peers are Unix sockets; the daemon never opens another family.
    let unix_only = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )
    .map_err(SeccompError::Build)?;
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        rules.insert(
            nr,
            vec![SeccompRule::new(vec![unix_only.clone()]).map_err(SeccompError::Build)?],
        );
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, target_arch()?)
        .map_err(SeccompError::Build)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Compile)
}

/// A compiled filter, built once and installed by each thread on itself.
#[derive(Clone, Debug)]
pub struct Filter(Option<BpfProgram>);

impl Filter {
    /// The filter of `role` in `mode` (`Off`: one that installs nothing).
    pub fn new(mode: SeccompMode, role: Role) -> Result<Filter> {
        let mismatch = match mode {
            SeccompMode::Off => return Ok(Filter(None)),
            SeccompMode::Enforce => SeccompAction::Errno(libc::EPERM as u32),
            SeccompMode::Log => SeccompAction::Log,
        };
        Ok(Filter(Some(program(mismatch, role)?)))
    }

    /// Installs the filter on the calling thread (stacked on any it has:
    /// the kernel applies the strictest); threads it starts inherit it.
    pub fn install(&self) -> Result<()> {
        match &self.0 {
            None => Ok(()),
            Some(prog) => seccompiler::apply_filter(prog).map_err(SeccompError::Install),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Runs `f` on a thread of its own under the enforcing filter (a filter
    /// on one thread leaves the test harness's other threads alone).
    fn under_filter<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            Filter::new(SeccompMode::Enforce, Role::Worker)
                .expect("filter builds")
                .install()
                .expect("filter installs");
            f()
        })
        .join()
        .expect("filtered thread")
    }

    #[test]
    fn forbidden_calls_are_refused_with_eperm() {
        let (inet, exec, ptrace) = under_filter(|| {
            // SAFETY: socket() takes no pointers; a returned fd is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let inet = (fd, errno());
            if fd >= 0 {
                // SAFETY: fd was just returned by socket() and is ours.
                unsafe { libc::close(fd) };
            }
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path and NULL-terminated argv/envp
            // that live across the call; on success the thread would be
            // replaced, which the filter must prevent.
            let r = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            let exec = (r, errno());
            // SAFETY: PTRACE_TRACEME takes no pointers.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            (inet, exec, (r, errno()))
        });
        assert_eq!(inet, (-1, libc::EPERM), "socket(AF_INET)");
        assert_eq!(exec, (-1, libc::EPERM), "execve");
        assert_eq!(ptrace.1, libc::EPERM, "ptrace");
    }

    #[test]
    fn only_the_manager_binds_and_a_worker_filter_narrows_it() {
        // Made before any filter: mkdir is not on the list.
        let dir = std::env::temp_dir().join(format!("kt-sc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        let bind_unlink = move || {
            let bound = std::os::unix::net::UnixListener::bind(&p).map_err(|e| e.raw_os_error());
            let unlinked = std::fs::remove_file(&p).map_err(|e| e.raw_os_error());
            (bound.map(|_| ()), unlinked)
        };
        let (manager, worker_after) = std::thread::spawn(move || {
            Filter::new(SeccompMode::Enforce, Role::Manager)
                .expect("filter builds")
                .install()
                .expect("filter installs");
            let manager = bind_unlink();
            // A thread the manager starts adds the workers' filter.
            let worker = std::thread::spawn(move || {
                Filter::new(SeccompMode::Enforce, Role::Worker)
                    .expect("filter builds")
                    .install()
                    .expect("filter installs");
                bind_unlink()
            })
            .join()
            .expect("worker thread");
            (manager, worker)
        })
        .join()
        .expect("manager thread");
        assert_eq!(manager, (Ok(()), Ok(())));
        assert_eq!(worker_after.0, Err(Some(libc::EPERM)));
        assert!(Filter::new(SeccompMode::Off, Role::Worker)
            .unwrap()
            .install()
            .is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_daemons_own_calls_still_work() {
        let ok = under_filter(|| {
            let (a, b) = std::os::unix::net::UnixDatagram::pair().expect("AF_UNIX pair");
            a.send(b"x").expect("send");
            let mut buf = [0u8; 1];
            let n = b.recv(&mut buf).expect("recv");
            // The device's burst send (sendmmsg), from a plain buffer.
            let mut byte = *b"y";
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            // SAFETY: an all-zero mmsghdr is valid (no name, no control).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut iov;
            h.msg_hdr.msg_iovlen = 1;
            // SAFETY: one header pointing at one live iovec over `byte`.
            let sent = unsafe { libc::sendmmsg(a.as_raw_fd(), &mut h, 1, 0) };
            let m = b.recv(&mut buf).expect("recv after sendmmsg");
            let v: Vec<u8> = (0..4096).map(|i| i as u8).collect();
            let t = std::thread::spawn(move || v.len()).join().expect("thread");
            n == 1 && sent == 1 && m == 1 && buf == *b"y" && t == 4096
        });
        assert!(ok);
    }
}
