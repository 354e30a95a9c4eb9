//! The control socket: a Unix stream socket where a client writes one
//! command line and reads one answer line: `stats` answers one line of
//! JSON ([`DaemonSnapshot`], every VM); `reload` has the daemon read its
//! policy (and config) files again and answers `ok <what changed>` or
//! `error: <why>`. Owns the server thread and the clients used by
//! `kt-vhost-device stats` and `reload`; never touches queues.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::seccomp::Filter;
use crate::sockpath::{claim_socket_path, ClaimError};
use crate::stats::DaemonSnapshot;

/// What the control socket asks of the daemon.
pub trait Handler: Send + Sync + 'static {
    /// Every VM's counters.
    fn snapshot(&self) -> DaemonSnapshot;
    /// Reloads; a line saying what changed, or why it failed.
    fn reload(&self) -> Result<String, String>;
}

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Could not create the socket.
    #[error("control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The path is taken by a live daemon or is not a socket.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Could not talk to the daemon.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The daemon answered something unexpected.
    #[error("control socket {path}: bad answer: {source}")]
    Answer {
        /// Socket path.
        path: PathBuf,
        /// JSON error.
        source: serde_json::Error,
    },
    /// The daemon refused the request.
    #[error("control socket {path}: daemon said: {text}")]
    Refused {
        /// Socket path.
        path: PathBuf,
        /// Its message.
        text: String,
    },
}

const REQ_MAX: u64 = 256;

/// One line: no newline inside (the client reads one line).
fn one_line(s: &str) -> String {
    s.replace('\n', "; ")
}

fn serve_one(stream: UnixStream, handler: &dyn Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, REQ_MAX)).read_line(&mut line)?;
    let mut out = &stream;
    match line.trim() {
        "stats" => {
            let mut json =
                serde_json::to_string(&handler.snapshot()).map_err(std::io::Error::other)?;
            json.push('\n');
            out.write_all(json.as_bytes())
        }
        "reload" => {
            let answer = match handler.reload() {
                Ok(what) => format!("ok {}\n", one_line(&what)),
                Err(why) => format!("error: {}\n", one_line(&why)),
            };
            out.write_all(answer.as_bytes())
        }
        other => {
            let cmd: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
            out.write_all(format!("error: unknown command {cmd:?}\n").as_bytes())
        }
    }
}

/// Binds `path` (replacing a stale socket, refusing one a live daemon
/// answers on) and serves requests on a thread, which installs `filter`
/// on itself first.
pub fn spawn_server(
    path: &Path,
    handler: Arc<dyn Handler>,
    filter: Filter,
) -> Result<JoinHandle<()>, ControlError> {
    claim_socket_path(path)?;
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::thread::Builder::new()
        .name("kt-control".into())
        .spawn(move || {
            if let Err(e) = filter.install() {
                log::error!("control socket: {e}; not serving it");
                return;
            }
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve_one(s, handler.as_ref()) {
                            log::debug!("control client: {e}");
                        }
                    }
                    Err(e) => {
                        // Out of descriptors, say: the connection stays
                        // queued, so wait instead of spinning on it.
                        log::warn!("control socket accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(|source| ControlError::Bind {
            path: path.to_owned(),
            source,
        })
}

/// Sends `cmd` to the daemon behind `path` and reads its answer line
/// (`error: ...` becomes [`ControlError::Refused`]).
fn request(path: &Path, cmd: &str, timeout: Duration) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("{cmd}\n").as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(io)?;
    if let Some(text) = line.strip_prefix("error: ") {
        return Err(ControlError::Refused {
            path: path.to_owned(),
            text: text.trim().to_owned(),
        });
    }
    Ok(line)
}

/// Asks the daemon behind `path` for its counters.
pub fn query(path: &Path) -> Result<DaemonSnapshot, ControlError> {
    let line = request(path, "stats", Duration::from_secs(5))?;
    serde_json::from_str(&line).map_err(|source| ControlError::Answer {
        path: path.to_owned(),
        source,
    })
}

/// Has the daemon behind `path` reload; returns what it says changed.
pub fn reload(path: &Path) -> Result<String, ControlError> {
    // Starting VMs binds sockets and reads files: allow it time.
    let line = request(path, "reload", Duration::from_secs(60))?;
    match line.strip_prefix("ok") {
        Some(what) => Ok(what.trim().to_owned()),
        None => Err(ControlError::Refused {
            path: path.to_owned(),
            text: format!("unexpected answer {:?}", line.trim()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::seccomp::{Role, SeccompMode};
    use crate::stats::Stats;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake {
        stats: Stats,
        reload_fails: AtomicBool,
    }

    impl Handler for Fake {
        fn snapshot(&self) -> DaemonSnapshot {
            DaemonSnapshot {
                vms: vec![self.stats.snapshot()],
            }
        }

        fn reload(&self) -> Result<String, String> {
            if self.reload_fails.load(Ordering::Relaxed) {
                Err("config file x: line 2:\nbad".into())
            } else {
                Ok("vm a: policy reloaded".into())
            }
        }
    }

    #[test]
    fn query_round_trip() {
        let dir = std::env::temp_dir().join(format!("kt-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.sock");
        let fake = Arc::new(Fake {
            stats: Stats::new(9),
            reload_fails: AtomicBool::new(false),
        });
        let filter = Filter::new(SeccompMode::Off, Role::Worker).unwrap();
        spawn_server(&p, fake.clone(), filter).unwrap();
        fake.stats
            .open_channel(1, "echo", crate::stats::Opener::Guest);
        let s = query(&p).unwrap();
        assert_eq!(s.vms[0].guest_id, 9);
        assert_eq!(s.vms[0].vm, "vm9");
        assert_eq!(s.vms[0].channels.len(), 1);
        assert_eq!(reload(&p).unwrap(), "vm a: policy reloaded");
        fake.reload_fails.store(true, Ordering::Relaxed);
        let e = reload(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("daemon said: config file x: line 2:; bad"),
            "{e}"
        );
        let mut c = UnixStream::connect(&p).unwrap();
        c.write_all(b"bogus\n").unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        assert!(line.starts_with("error: unknown command"), "{line}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
