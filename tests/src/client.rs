//! A host program reaching a guest service through kt-vhost-device's
//! listening socket (SPEC §9): connect, send `CONNECT <name>`, read
//! `OK <channel-id>` or `ERR <errno> <text>`; or send `LIST` and read the
//! names the guest listens on. Owns the handshake from the host program's
//! side; the parsing is kt-proto's.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use kt_proto::handshake::{self, HandshakeError, ListReply, Reply};
use kt_proto::ErrorCode;

use crate::seqpacket::{SeqpacketConn, SocketError};

/// Errors from the connect handshake.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket trouble (connect, send, no reply in time, closed).
    #[error("connect handshake on {path}: {source}")]
    Socket {
        /// The backend's listening socket.
        path: String,
        /// Why.
        source: SocketError,
    },
    /// The reply did not parse.
    #[error("bad handshake reply {reply:?}: {source}")]
    BadReply {
        /// The reply text (lossy).
        reply: String,
        /// Why.
        source: HandshakeError,
    },
    /// The device refused: `ERR <errno> <text>`.
    #[error("refused: {code:?} (errno {errno}) {text}")]
    Refused {
        /// The protocol error.
        code: ErrorCode,
        /// Its Linux errno.
        errno: i32,
        /// The device's text.
        text: String,
    },
}

/// A connection to a guest service after `OK`: every message is one guest
/// message.
#[derive(Debug)]
pub struct GuestChannel {
    /// The connection.
    pub conn: SeqpacketConn,
    /// The channel id the device reported.
    pub channel: u32,
}

/// Connects to guest service `name` through the backend's `--listen`
/// socket, waiting up to `timeout` for the guest to accept.
pub fn connect_to_guest(
    listen: &Path,
    name: &str,
    timeout: Duration,
) -> Result<GuestChannel, ClientError> {
    let sock_err = |source| ClientError::Socket {
        path: listen.display().to_string(),
        source,
    };
    let conn = SeqpacketConn::connect(listen).map_err(sock_err)?;
    conn.send(&handshake::connect_msg(name)).map_err(sock_err)?;
    let reply = conn.recv(timeout).map_err(sock_err)?;
    match handshake::parse_reply(&reply) {
        Ok(Reply::Ok { channel }) => Ok(GuestChannel { conn, channel }),
        Ok(Reply::Err { code, text }) => Err(ClientError::Refused {
            code,
            errno: code.errno(),
            text,
        }),
        Err(source) => Err(ClientError::BadReply {
            reply: String::from_utf8_lossy(&reply).into_owned(),
            source,
        }),
    }
}

/// Asks the backend's `--listen` socket which names the guest's listeners
/// serve (`LIST`, SPEC §9), waiting up to `timeout` for the answer.
pub fn list_guest_services(listen: &Path, timeout: Duration) -> Result<Vec<String>, ClientError> {
    let sock_err = |source| ClientError::Socket {
        path: listen.display().to_string(),
        source,
    };
    let conn = SeqpacketConn::connect(listen).map_err(sock_err)?;
    conn.send(&handshake::list_msg()).map_err(sock_err)?;
    let reply = conn.recv(timeout).map_err(sock_err)?;
    match handshake::parse_list_reply(&reply) {
        Ok(ListReply::Names(names)) => Ok(names),
        Ok(ListReply::Err { code, text }) => Err(ClientError::Refused {
            code,
            errno: code.errno(),
            text,
        }),
        Err(source) => Err(ClientError::BadReply {
            reply: String::from_utf8_lossy(&reply).into_owned(),
            source,
        }),
    }
}

/// How long [`connect_to_guest_when_ready`] waits between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Like [`connect_to_guest`], but while the guest is not ready yet — nobody
/// listens on `name` (`ERR 2`), or no driver is live (`ERR 111`, e.g. during
/// boot, a module reload or a backend restart) — tries again until
/// `timeout` has passed. Any other refusal or error is returned at once.
/// Guest workloads start their listeners in the background, so the host
/// cannot know the exact moment the name is served.
pub fn connect_to_guest_when_ready(
    listen: &Path,
    name: &str,
    timeout: Duration,
) -> Result<GuestChannel, ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connect_to_guest(listen, name, left.max(RETRY_PAUSE)) {
            Err(ClientError::Refused { errno, .. })
                if (errno == libc::ENOENT || errno == libc::ECONNREFUSED)
                    && Instant::now() + RETRY_PAUSE < deadline =>
            {
                thread::sleep(RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqpacket::SeqpacketListener;
    use crate::tempdir::TempDir;

    const T: Duration = Duration::from_secs(10);

    /// A stand-in for the backend's listening socket that answers one
    /// CONNECT with `reply`.
    fn fake_device(reply: &'static [u8]) -> (TempDir, thread::JoinHandle<String>) {
        let dir = TempDir::new("client").expect("tempdir");
        let listener = SeqpacketListener::bind(&dir.join("listen.sock")).expect("bind");
        let handle = thread::spawn(move || {
            let conn = listener.accept(T).expect("accept");
            let msg = conn.recv(T).expect("CONNECT");
            conn.send(reply).expect("reply");
            // Keep the connection until the client read the reply.
            let _ = conn.recv(T);
            String::from_utf8(msg).expect("text")
        });
        (dir, handle)
    }

    #[test]
    fn ok_reply_gives_the_channel() {
        let (dir, device) = fake_device(b"OK 7\n");
        let ch = connect_to_guest(&dir.join("listen.sock"), "echo", T).expect("connect");
        assert_eq!(ch.channel, 7);
        drop(ch);
        assert_eq!(device.join().expect("device"), "CONNECT echo\n");
    }

    #[test]
    fn err_reply_is_refused_with_errno() {
        let (dir, device) = fake_device(b"ERR 111 no such service\n");
        let err = connect_to_guest(&dir.join("listen.sock"), "nothing", T).expect_err("refused");
        match err {
            ClientError::Refused { errno, text, .. } => {
                assert_eq!(errno, libc::ECONNREFUSED);
                assert_eq!(text, "no such service");
            }
            other => panic!("expected Refused, got {other}"),
        }
        device.join().expect("device");
    }

    #[test]
    fn retries_until_the_guest_listens() {
        let dir = TempDir::new("client-retry").expect("tempdir");
        let listener = SeqpacketListener::bind(&dir.join("listen.sock")).expect("bind");
        let device = thread::spawn(move || {
            for reply in [
                &b"ERR 111 no driver\n"[..],
                b"ERR 2 nobody listens\n",
                b"OK 9\n",
            ] {
                let conn = listener.accept(T).expect("accept");
                conn.recv(T).expect("CONNECT");
                conn.send(reply).expect("reply");
                if reply.starts_with(b"OK") {
                    let _ = conn.recv(T);
                }
            }
        });
        let ch = connect_to_guest_when_ready(&dir.join("listen.sock"), "svc", T).expect("ok");
        assert_eq!(ch.channel, 9);
        drop(ch);
        device.join().expect("device");
        // Other refusals are final.
        let (dir, device) = fake_device(b"ERR 13 no\n");
        let err =
            connect_to_guest_when_ready(&dir.join("listen.sock"), "svc", T).expect_err("refused");
        assert!(
            matches!(err, ClientError::Refused { errno: 13, .. }),
            "{err}"
        );
        device.join().expect("device");
    }

    #[test]
    fn list_reads_the_names() {
        let (dir, device) = fake_device(b"OK 2\nsvc-a\nsvc-b\n");
        let names = list_guest_services(&dir.join("listen.sock"), T).expect("list");
        assert_eq!(names, ["svc-a", "svc-b"]);
        assert_eq!(device.join().expect("device"), "LIST\n");
        let (dir, device) = fake_device(b"OK 3\nsvc-a\n");
        let err = list_guest_services(&dir.join("listen.sock"), T).expect_err("bad");
        assert!(matches!(err, ClientError::BadReply { .. }), "{err}");
        device.join().expect("device");
    }

    #[test]
    fn garbage_reply_is_an_error() {
        let (dir, device) = fake_device(b"HELLO\n");
        let err = connect_to_guest(&dir.join("listen.sock"), "echo", T).expect_err("bad");
        assert!(matches!(err, ClientError::BadReply { .. }), "{err}");
        device.join().expect("device");
    }
}
