//! Host side: Unix `SOCK_SEQPACKET` sockets. Connecting to a guest service
//! through kt-vhost-device's listening socket with the SPEC §9 handshake,
//! and the listening socket of a host service that the device connects to
//! once per guest channel. Sockets, stale-path claims and buffer sizes come
//! from the shared `kt-seqpacket` crate; this module owns the handshake and
//! the `kt` error messages.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kt_proto::consts::MAX_MSG_SIZE_LIMIT;
use kt_proto::handshake::{self, Reply};
use kt_seqpacket::{socket, ClaimError, Interest, SeqListener, SocketType};

use crate::channel::{Channel, Kind};
use crate::error::{open_error, Error, Result};
use crate::sys;

/// Socket buffer asked for, so one message of up to 1 MiB fits.
const SOCK_BUF: usize = 4 << 20;

/// Largest message a host endpoint can receive (the protocol limit).
pub const RECV_CAPACITY: usize = MAX_MSG_SIZE_LIMIT as usize;

/// Refuses a path that does not fit `sockaddr_un` (or is empty).
fn check_path(path: &Path) -> Result<()> {
    kt_seqpacket::check_path(path).map_err(|e| Error::PathTooLong {
        path: path.to_path_buf(),
        len: e.len,
        max: kt_seqpacket::MAX_PATH,
    })
}

/// Raises the socket buffers so large messages fit (best effort: without
/// privileges the kernel caps them at `wmem_max`/`rmem_max`, and the send
/// then fails with `EMSGSIZE`, which is reported).
fn grow_buffers(fd: &OwnedFd) {
    // Best effort by design: the kernel clamps or refuses large values.
    let _ = socket::set_send_buffer(fd, SOCK_BUF);
    let _ = socket::set_recv_buffer(fd, SOCK_BUF);
}

fn connect_path(path: &Path) -> Result<OwnedFd> {
    check_path(path)?;
    let fd = socket::new_socket(SocketType::SeqPacket, false).map_err(|e| Error::Socket {
        path: path.to_path_buf(),
        what: "socket",
        source: e,
    })?;
    match sys::retry(|| socket::connect(&fd, path)) {
        Ok(()) => Ok(fd),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NoSocket {
                path: path.to_path_buf(),
            },
            Some(libc::ECONNREFUSED) => Error::SocketRefused {
                path: path.to_path_buf(),
            },
            Some(libc::EINTR) => Error::Interrupted,
            _ => Error::Socket {
                path: path.to_path_buf(),
                what: "connect",
                source: e,
            },
        }),
    }
}

/// Connects to guest service `name` through the device's listening socket:
/// sends `CONNECT <name>` and waits for `OK <id>` or `ERR <errno> <text>`.
pub fn connect_service(socket_path: &Path, name: &str, max_msg_size: usize) -> Result<Channel> {
    kt_proto::name::validate(name.as_bytes()).map_err(|source| Error::BadName {
        name: name.to_string(),
        source,
    })?;
    let fd = connect_path(socket_path)?;
    grow_buffers(&fd);
    let mut ch = Channel::new(
        fd,
        Kind::Host,
        format!("{name} (via {})", socket_path.display()),
        max_msg_size,
        RECV_CAPACITY,
    );
    let mut nb = Default::default();
    ch.send(&handshake::connect_msg(name), &mut nb)?;
    let mut buf = [0u8; 512];
    let n = match ch.recv(&mut buf, &mut nb)? {
        crate::channel::Recv::Msg(n) => n,
        crate::channel::Recv::Eof => {
            return Err(Error::Open {
                name: name.to_string(),
                what: "connect",
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "kt-vhost-device closed the connection without a reply",
                ),
            })
        }
    };
    match handshake::parse_reply(&buf[..n]) {
        Ok(Reply::Ok { channel }) => {
            ch.set_label(format!("{name} (channel {channel:#x})"));
            Ok(ch)
        }
        Ok(Reply::Err { code, text }) => {
            let raw = io::Error::from_raw_os_error(code.errno());
            Err(match open_error(name, "connect", raw) {
                Error::Open { name, what, .. } => Error::Open {
                    name,
                    what,
                    source: io::Error::other(format!("{text} (errno {})", code.errno())),
                },
                mapped => mapped,
            })
        }
        Err(source) => Err(Error::Handshake {
            name: name.to_string(),
            source,
        }),
    }
}

/// Asks the device behind its listening socket which names the guest's
/// listeners serve (`LIST`, SPEC §9); the answer is checked like any
/// device input (count, names).
pub fn list_guest_services(socket_path: &Path, wait: Duration) -> Result<Vec<String>> {
    let fd = connect_path(socket_path)?;
    grow_buffers(&fd);
    let mut ch = Channel::new(
        fd,
        Kind::Host,
        format!("LIST (via {})", socket_path.display()),
        LIST_REPLY_MAX,
        LIST_REPLY_MAX,
    );
    ch.set_timeout(Some(wait));
    let mut nb = Default::default();
    ch.send(&handshake::list_msg(), &mut nb)?;
    let mut buf = vec![0u8; LIST_REPLY_MAX];
    let n = match ch.recv(&mut buf, &mut nb)? {
        crate::channel::Recv::Msg(n) => n,
        crate::channel::Recv::Eof => {
            return Err(Error::Open {
                name: "LIST".to_string(),
                what: "list",
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "kt-vhost-device closed the connection without a reply",
                ),
            })
        }
    };
    match handshake::parse_list_reply(&buf[..n]) {
        Ok(handshake::ListReply::Names(names)) => Ok(names),
        Ok(handshake::ListReply::Err { code, text }) => Err(Error::Open {
            name: "LIST".to_string(),
            what: "list",
            source: io::Error::other(format!("{text} (errno {})", code.errno())),
        }),
        Err(source) => Err(Error::Handshake {
            name: "LIST".to_string(),
            source,
        }),
    }
}

/// Largest `LIST` answer read: 1024 names of at most 63 bytes, a newline
/// each, and the `OK <n>` line.
const LIST_REPLY_MAX: usize = 1024 * 64 + 64;

/// Connects straight to a host service's socket, the way kt-vhost-device
/// does for a guest channel (no handshake).
pub fn connect_direct(path: &Path, max_msg_size: usize) -> Result<Channel> {
    let fd = connect_path(path).map_err(|e| match e {
        Error::NoSocket { path } => Error::Socket {
            path,
            what: "connect",
            source: io::Error::from_raw_os_error(libc::ENOENT),
        },
        Error::SocketRefused { path } => Error::Socket {
            path,
            what: "connect",
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        },
        other => other,
    })?;
    grow_buffers(&fd);
    Ok(Channel::new(
        fd,
        Kind::Host,
        path.display().to_string(),
        max_msg_size,
        RECV_CAPACITY,
    ))
}

/// A listening `SOCK_SEQPACKET` socket of a host service. The socket file
/// is removed when the listener is dropped.
#[derive(Debug)]
pub struct Listener {
    sock: SeqListener,
    path: PathBuf,
    max_msg_size: usize,
    accepted: u64,
    kind: Kind,
}

impl Listener {
    /// Binds and listens at `path`. A stale socket file (nobody listening)
    /// is replaced; a live one is an error.
    pub fn bind(path: &Path, max_msg_size: usize) -> Result<Listener> {
        Self::bind_kind(path, max_msg_size, Kind::Host)
    }

    /// Binds a `SOCK_STREAM` listener whose connections carry
    /// length-prefixed messages ([`crate::framed`]): the host end of
    /// vhost-device-vsock (`<uds>_<port>`) and of QEMU's virtio-serial
    /// chardev. The socket file must not exist yet.
    pub fn bind_stream(path: &Path, max_msg_size: usize) -> Result<Listener> {
        Self::bind_kind(
            path,
            max_msg_size,
            Kind::Stream {
                socket: true,
                chunk: 0,
            },
        )
    }

    fn bind_kind(path: &Path, max_msg_size: usize, kind: Kind) -> Result<Listener> {
        check_path(path)?;
        let sock_err = |what, source| Error::Socket {
            path: path.to_path_buf(),
            what,
            source,
        };
        kt_seqpacket::claim_socket_path(path).map_err(|e| match e {
            ClaimError::InUse { .. } => Error::SocketInUse {
                path: path.to_path_buf(),
            },
            ClaimError::NotSocket { .. } => sock_err(
                "bind",
                io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            ),
            ClaimError::Io { source, .. } => sock_err("remove stale socket", source),
        })?;
        let ty = match kind {
            Kind::Stream { .. } => SocketType::Stream,
            _ => SocketType::SeqPacket,
        };
        let sock =
            SeqListener::bind_unclaimed(path, ty, false, 128).map_err(|e| sock_err("bind", e))?;
        Ok(Listener {
            sock,
            path: path.to_path_buf(),
            max_msg_size,
            accepted: 0,
            kind,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for a connection; `Ok(false)` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        match kt_seqpacket::poll_once(self.sock.as_fd(), Interest::Readable, timeout) {
            Ok(ready) => Ok(ready),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if crate::signal::interrupted() {
                    Err(Error::Interrupted)
                } else {
                    Ok(false)
                }
            }
            Err(e) => Err(Error::Socket {
                path: self.path.clone(),
                what: "poll",
                source: e,
            }),
        }
    }

    /// Accepts the next connection: one guest channel.
    pub fn accept(&mut self) -> Result<Channel> {
        let r = sys::retry(|| self.sock.accept_fd(false));
        let fd = r.map_err(|e| match e.raw_os_error() {
            Some(libc::EINTR) => Error::Interrupted,
            _ => Error::Socket {
                path: self.path.clone(),
                what: "accept",
                source: e,
            },
        })?;
        grow_buffers(&fd);
        self.accepted += 1;
        let recv_capacity = match self.kind {
            Kind::Stream { .. } => crate::framed::RECV_CAPACITY,
            _ => RECV_CAPACITY,
        };
        Ok(Channel::new(
            fd,
            self.kind,
            format!("connection {} on {}", self.accepted, self.path.display()),
            self.max_msg_size,
            recv_capacity,
        ))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The socket file is ours; a failure leaves a stale file that the
        // next bind replaces.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connected pair of `SOCK_SEQPACKET` sockets (for tests and loopback).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::pair_fds()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{NbStats, Recv};

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kt-host-{}-{name}", std::process::id()))
    }

    /// A fake kt-vhost-device: accepts one connection, checks CONNECT and
    /// answers with `reply`.
    fn fake_device(path: &Path, reply: &'static [u8]) -> std::thread::JoinHandle<String> {
        let mut l = Listener::bind(path, 4096).unwrap();
        std::thread::spawn(move || {
            let c = l.accept().unwrap();
            let mut buf = c.recv_buffer();
            let mut nb = NbStats::default();
            let Recv::Msg(n) = c.recv(&mut buf, &mut nb).unwrap() else {
                panic!("no CONNECT")
            };
            c.send(reply, &mut nb).unwrap();
            if reply.starts_with(b"OK") {
                c.send(b"hello from guest", &mut nb).unwrap();
            }
            String::from_utf8(buf[..n].to_vec()).unwrap()
        })
    }

    #[test]
    fn handshake_ok() {
        let p = tmp("ok");
        let dev = fake_device(&p, b"OK 2147483653\n");
        let ch = connect_service(&p, "echo", 4096).unwrap();
        assert_eq!(ch.label(), "echo (channel 0x80000005)");
        let mut buf = ch.recv_buffer();
        let n = ch.recv(&mut buf, &mut NbStats::default()).unwrap();
        assert_eq!(n, Recv::Msg(16));
        assert_eq!(dev.join().unwrap(), "CONNECT echo\n");
    }

    #[test]
    fn handshake_errors_map_to_clear_errors() {
        for (reply, want) in [
            (
                &b"ERR 2 no such service\n"[..],
                "svc: no such service (ENOENT)",
            ),
            (&b"ERR 13 policy\n"[..], "svc: refused (EACCES)"),
            (
                &b"ERR 111 nobody\n"[..],
                "svc: connection refused — nobody is serving it (ECONNREFUSED)",
            ),
            (
                &b"ERR 24 too many\n"[..],
                "svc: connect: too many (errno 24)",
            ),
        ] {
            let p = tmp(&format!("err{}", reply[5]));
            let dev = fake_device(&p, reply);
            let e = connect_service(&p, "svc", 4096).unwrap_err();
            assert_eq!(e.to_string(), want);
            dev.join().unwrap();
        }
        let p = tmp("garbage");
        let dev = fake_device(&p, b"HELLO");
        let e = connect_service(&p, "svc", 4096).unwrap_err();
        assert!(matches!(e, Error::Handshake { .. }), "{e}");
        dev.join().unwrap();
    }

    #[test]
    fn missing_socket_and_bad_names() {
        let p = tmp("missing");
        assert_eq!(
            connect_service(&p, "echo", 1).unwrap_err().to_string(),
            format!(
                "{}: no such socket — is kt-vhost-device running?",
                p.display()
            )
        );
        assert!(matches!(
            connect_service(&p, "", 1),
            Err(Error::BadName { .. })
        ));
        let long = PathBuf::from("/tmp/".to_string() + &"x".repeat(200));
        assert!(matches!(
            connect_service(&long, "echo", 1),
            Err(Error::PathTooLong { .. })
        ));
    }

    #[test]
    fn descriptors_a_host_peer_passes_are_closed() {
        use std::io::Read;
        let (a, b) = seqpacket_pair().unwrap();
        let peer = kt_seqpacket::SeqPacket::from_fd(a);
        let ch = Channel::new(b, Kind::Host, "t".into(), 64, 64);
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        peer.send_with_fds(b"hi", &[w.as_fd(), w.as_fd()]).unwrap();
        drop(w);
        let mut buf = ch.recv_buffer();
        let got = ch.recv(&mut buf, &mut NbStats::default()).unwrap();
        assert_eq!(got, Recv::Msg(2));
        // Every copy of the other end is closed: `r` sees EOF at once.
        assert_eq!(
            r.read(&mut [0u8; 1]).unwrap(),
            0,
            "a passed descriptor was left open"
        );
    }

    #[test]
    fn stale_socket_is_replaced_live_one_refused() {
        let p = tmp("stale");
        let first = Listener::bind(&p, 1).unwrap();
        assert!(matches!(
            Listener::bind(&p, 1),
            Err(Error::SocketInUse { .. })
        ));
        drop(first);
        assert!(!p.exists());
        // Create a genuinely stale socket file (bound, then closed).
        drop(SeqListener::bind_unclaimed(&p, SocketType::SeqPacket, false, 1).unwrap());
        assert!(p.exists());
        let l = Listener::bind(&p, 1).unwrap();
        drop(l);
        assert!(!p.exists());
    }
}
