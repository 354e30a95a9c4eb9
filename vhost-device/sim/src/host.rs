//! Host-side helpers for tests and the benches: a temporary directory
//! removed on drop, the daemon as a child process killed on drop (and
//! where to find its binary), and simple host services on `SOCK_SEQPACKET`
//! sockets: echo, sink, source with a thread per connection, and an echo
//! or sink serving every connection from one epoll thread.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kt_vhost_device::seqpacket::{Recv, SeqListener, SeqPacket};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory (short path: socket paths are limited).
    pub fn new(tag: &str) -> io::Result<TempDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kt-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The daemon as a child process; killed and reaped on drop.
#[derive(Debug)]
pub struct DaemonProc {
    child: Child,
    /// Its vhost-user socket.
    pub socket: PathBuf,
}

impl DaemonProc {
    /// Starts `bin` with `args` and waits until `socket` exists.
    pub fn spawn(bin: &Path, socket: &Path, args: &[String]) -> io::Result<DaemonProc> {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(bin).args(args).stdin(Stdio::null()).spawn()?;
        let mut d = DaemonProc {
            child,
            socket: socket.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Some(st) = d.child.try_wait()? {
                return Err(io::Error::other(format!("daemon exited early: {st}")));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("daemon did not create its socket"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// Kills it now (a backend crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (from /proc), if readable.
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a host service does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Sends every message back.
    Echo,
    /// Counts messages and bytes.
    Sink,
    /// Sends `count` messages of `size` bytes, then keeps the connection
    /// open until the peer closes.
    Source {
        /// Messages.
        count: u64,
        /// Bytes each.
        size: usize,
    },
}

/// A host service listening on a socket, one thread per connection.
#[derive(Debug)]
pub struct Service {
    /// Socket path.
    pub path: PathBuf,
    /// Messages received by all connections.
    pub msgs: Arc<AtomicU64>,
    /// Bytes received by all connections.
    pub bytes: Arc<AtomicU64>,
    /// Connections accepted.
    pub conns: Arc<AtomicU64>,
    /// While set, connections do not read (backpressure tests).
    pub paused: Arc<AtomicBool>,
    _accept: JoinHandle<()>,
}

fn serve_conn(
    s: SeqPacket,
    b: Behaviour,
    msgs: &AtomicU64,
    bytes: &AtomicU64,
    paused: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 21];
    if let Behaviour::Source { count, size } = b {
        let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        for _ in 0..count {
            s.send(&data)?;
        }
    }
    loop {
        while paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        match s.recv(&mut buf)? {
            Recv::Eof => return Ok(()),
            Recv::Msg(n) => {
                msgs.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if b == Behaviour::Echo {
                    s.send(&buf[..n.min(buf.len())])?;
                }
            }
        }
    }
}

impl Service {
    /// Listens at `path` and serves every connection with `b`.
    pub fn spawn(path: &Path, b: Behaviour) -> io::Result<Service> {
        let l = SeqListener::bind(path)?;
        let msgs = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(AtomicU64::new(0));
        let paused = Arc::new(AtomicBool::new(false));
        let (m, by, c, p) = (msgs.clone(), bytes.clone(), conns.clone(), paused.clone());
        let accept = std::thread::spawn(move || {
            while let Ok(s) = l.accept_blocking() {
                c.fetch_add(1, Ordering::Relaxed);
                let (m, by, p) = (m.clone(), by.clone(), p.clone());
                std::thread::spawn(move || {
                    let _ = serve_conn(s, b, &m, &by, &p);
                });
            }
        });
        Ok(Service {
            path: path.to_owned(),
            msgs,
            bytes,
            conns,
            paused,
            _accept: accept,
        })
    }
}

/// Connects to the daemon's listening socket and performs the handshake
/// for guest service `name`; returns the socket and the channel id.
pub fn connect_guest(listen: &Path, name: &str) -> io::Result<Result<(SeqPacket, u32), String>> {
    let s = SeqPacket::connect(listen, false)?;
    s.send(&kt_proto::handshake::connect_msg(name))?;
    let mut buf = [0u8; 256];
    let n = match s.recv(&mut buf)? {
        Recv::Msg(n) => n.min(buf.len()),
        Recv::Eof => return Ok(Err("connection closed during handshake".into())),
    };
    match kt_proto::handshake::parse_reply(&buf[..n]) {
        Ok(kt_proto::handshake::Reply::Ok { channel }) => Ok(Ok((s, channel))),
        Ok(kt_proto::handshake::Reply::Err { code, text }) => {
            Ok(Err(format!("{} {text}", code.errno())))
        }
        Err(e) => Err(io::Error::other(e)),
    }
}

/// An epoll service on `path`, one thread for every connection: echoes
/// each message back (`echo`) or reads and drops it. A bounded batch per
/// connection per wake-up, so no connection starves the others.
pub fn spawn_epoll_service(path: &Path, echo: bool, stop: Arc<AtomicBool>) -> io::Result<()> {
    let listener = SeqListener::bind(path)?;
    let epoll = Epoll::new()?;
    const LISTENER: u64 = u64::MAX;
    epoll.ctl(
        ControlOperation::Add,
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        EpollEvent::new(EventSet::IN, LISTENER),
    )?;
    std::thread::spawn(move || {
        let mut conns: Vec<Option<SeqPacket>> = Vec::new();
        let mut events = vec![EpollEvent::default(); 256];
        let mut buf = vec![0u8; 1 << 20];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = epoll.wait(100, &mut events) else {
                continue;
            };
            for ev in &events[..n] {
                let tok = ev.data();
                if tok == LISTENER {
                    while let Ok(c) = listener.accept() {
                        let _ = epoll.ctl(
                            ControlOperation::Add,
                            std::os::fd::AsRawFd::as_raw_fd(&c),
                            EpollEvent::new(EventSet::IN, conns.len() as u64),
                        );
                        conns.push(Some(c));
                    }
                    continue;
                }
                let Some(slot) = conns.get_mut(tok as usize) else {
                    continue;
                };
                for _ in 0..64 {
                    let Some(c) = slot.as_ref() else { break };
                    let r = match c.recv(&mut buf) {
                        Ok(Recv::Msg(n)) if echo => {
                            // The echo's peer is the daemon, which always
                            // has room for one reply per request here
                            // (the guest reads every reply); a failed send
                            // ends the connection.
                            c.send(&buf[..n.min(buf.len())]).map(|_| true)
                        }
                        Ok(Recv::Msg(_)) => Ok(true),
                        Ok(Recv::Eof) => Ok(false),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => Err(e),
                    };
                    if !matches!(r, Ok(true)) {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            std::os::fd::AsRawFd::as_raw_fd(c),
                            EpollEvent::default(),
                        );
                        *slot = None;
                    }
                }
            }
        }
    });
    Ok(())
}

/// The `kt-vhost-device` binary for the benches: `explicit` (a --daemon
/// flag), else `$KT_VHOST_DEVICE`, else the one next to this program.
pub fn daemon_binary(explicit: Option<&Path>) -> io::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("KT_VHOST_DEVICE") {
        return Ok(p.into());
    }
    let p = std::env::current_exe()?.with_file_name("kt-vhost-device");
    if p.exists() {
        Ok(p)
    } else {
        Err(io::Error::other(format!(
            "no daemon binary at {} (build it: cargo build --release -p kt-vhost-device, \
             or pass --daemon)",
            p.display()
        )))
    }
}
