//! The control socket: a Unix stream socket where a client writes `stats\n`
//! and reads one line of JSON ([`StatsSnapshot`]). Owns the server thread
//! and the client used by `kt-vhost-device stats`; never touches queues.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sockpath::{claim_socket_path, ClaimError};
use crate::stats::{Stats, StatsSnapshot};

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

fn serve_one(stream: UnixStream, stats: &Stats) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, REQ_MAX)).read_line(&mut line)?;
    let mut out = &stream;
    match line.trim() {
        "stats" => {
            let mut json =
                serde_json::to_string(&stats.snapshot()).map_err(std::io::Error::other)?;
            json.push('\n');
            out.write_all(json.as_bytes())
        }
        other => {
            let cmd: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
            out.write_all(format!("error: unknown command {cmd:?}\n").as_bytes())
        }
    }
}

/// Binds `path` (replacing a stale socket, refusing one a live daemon
/// answers on) and serves requests on a thread.
pub fn spawn_server(path: &Path, stats: Arc<Stats>) -> Result<JoinHandle<()>, ControlError> {
    claim_socket_path(path)?;
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::thread::Builder::new()
        .name("kt-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve_one(s, &stats) {
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

/// Asks the daemon behind `path` for its counters.
pub fn query(path: &Path) -> Result<StatsSnapshot, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(b"stats\n").map_err(io)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(io)?;
    if let Some(text) = line.strip_prefix("error: ") {
        return Err(ControlError::Refused {
            path: path.to_owned(),
            text: text.trim().to_owned(),
        });
    }
    serde_json::from_str(&line).map_err(|source| ControlError::Answer {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let dir = std::env::temp_dir().join(format!("kt-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.sock");
        let stats = Arc::new(Stats::new(9));
        spawn_server(&p, stats.clone()).unwrap();
        stats.open_channel(1, "echo", crate::stats::Opener::Guest);
        let s = query(&p).unwrap();
        assert_eq!(s.guest_id, 9);
        assert_eq!(s.channels.len(), 1);
        let mut c = UnixStream::connect(&p).unwrap();
        c.write_all(b"bogus\n").unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        assert!(line.starts_with("error: unknown command"), "{line}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
