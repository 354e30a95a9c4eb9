//! Host ends of verifiable test streams, in the format of `kt gen` /
//! `kt verify` (the `kt` crate's `traffic` module: sizes and payloads from
//! (seed, seq), a self-describing prefix with a CRC). A [`Stream`] names the
//! parameters both ends share; [`send_stream`] plays `kt gen` and
//! [`verify_stream`] / [`verify_until_eof`] play `kt verify` on a host
//! `SOCK_SEQPACKET` connection, stopping at the first lost, reordered,
//! duplicated or corrupt message with an error that says which. Owns the
//! host-side traffic loops; the format itself is the `kt` crate's.

use std::fmt;
use std::time::Duration;

use kt::traffic::{Counts, Outcome, Params, ParamsError, Verifier};

use crate::seqpacket::{SeqpacketConn, SocketError, RECV_MAX};

/// Errors from a host-side stream.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The stream's parameters are invalid.
    #[error("stream {stream}: {source}")]
    Params {
        /// The stream.
        stream: String,
        /// Why.
        source: ParamsError,
    },
    /// A socket operation failed (including an early end of the stream).
    #[error("stream {stream}: after {done} of {count} messages: {source}")]
    Socket {
        /// The stream.
        stream: String,
        /// Messages sent or verified before the failure.
        done: u64,
        /// Messages the stream has.
        count: u64,
        /// Why.
        source: SocketError,
    },
    /// A received message was not the expected one.
    #[error("stream {stream}: {outcome} ({counts})")]
    Mismatch {
        /// The stream.
        stream: String,
        /// What the message turned out to be.
        outcome: Outcome,
        /// Totals at that point.
        counts: Counts,
    },
    /// More arrived after the last message of the stream.
    #[error("stream {stream}: an extra {len}-byte message after all {count} messages")]
    Extra {
        /// The stream.
        stream: String,
        /// Messages the stream has.
        count: u64,
        /// The extra message's length.
        len: usize,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, TrafficError>;

/// One test stream: `count` messages of `kt gen --seed S --min-size A
/// --max-size B`.
#[derive(Clone, Debug)]
pub struct Stream {
    label: String,
    params: Params,
    seed: u64,
    min: usize,
    max: usize,
    count: u64,
}

impl Stream {
    /// A stream called `label` (for messages) with the given parameters.
    pub fn new(label: &str, seed: u64, min: usize, max: usize, count: u64) -> Result<Stream> {
        let params = Params::new(seed, min, max).map_err(|source| TrafficError::Params {
            stream: label.to_string(),
            source,
        })?;
        Ok(Stream {
            label: label.to_string(),
            params,
            seed,
            min,
            max,
            count,
        })
    }

    /// The stream's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Number of messages.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The generator parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Message `seq` of the stream.
    pub fn message(&self, seq: u64) -> Vec<u8> {
        self.params.message(seq)
    }

    /// The `kt gen` / `kt verify` arguments for this stream.
    pub fn kt_args(&self) -> String {
        format!(
            "--count {} --min-size {} --max-size {} --seed {}",
            self.count, self.min, self.max, self.seed
        )
    }

    fn socket_err(&self, done: u64, source: SocketError) -> TrafficError {
        TrafficError::Socket {
            stream: self.label.clone(),
            done,
            count: self.count,
            source,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.label, self.kt_args())
    }
}

/// What a verified stream carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Messages verified, in order and intact.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// Sends every message of `stream` on `conn` (blocking while the device
/// has no credit for more); returns the payload bytes sent.
pub fn send_stream(conn: &SeqpacketConn, stream: &Stream) -> Result<u64> {
    let mut msg = Vec::with_capacity(stream.max);
    let mut bytes = 0u64;
    for seq in 0..stream.count {
        stream.params.fill(seq, &mut msg);
        conn.send(&msg).map_err(|e| stream.socket_err(seq, e))?;
        bytes += msg.len() as u64;
    }
    Ok(bytes)
}

/// Receives and checks messages until `want` are verified (`None`: until
/// the peer closes). Each receive waits up to `timeout`.
fn verify(
    conn: &SeqpacketConn,
    stream: &Stream,
    want: Option<u64>,
    timeout: Duration,
) -> Result<Received> {
    let mut v = Verifier::new(stream.params);
    let mut buf = vec![0u8; RECV_MAX];
    let mut got = Received::default();
    while !matches!(want, Some(w) if got.messages >= w) {
        let n = match conn.recv_into(&mut buf, timeout) {
            Ok(n) => n,
            Err(SocketError::Closed) if want.is_none() => return Ok(got),
            Err(e) => return Err(stream.socket_err(got.messages, e)),
        };
        let outcome = v.check(&buf[..n]);
        if outcome != Outcome::Ok {
            return Err(TrafficError::Mismatch {
                stream: stream.label.clone(),
                outcome,
                counts: v.counts(),
            });
        }
        got.messages += 1;
        got.bytes += n as u64;
    }
    Ok(got)
}

/// Receives all `stream.count()` messages and checks each (order, size,
/// contents); then expects the peer to close within `timeout`, with
/// nothing more sent.
pub fn verify_stream(conn: &SeqpacketConn, stream: &Stream, timeout: Duration) -> Result<Received> {
    let got = verify(conn, stream, Some(stream.count), timeout)?;
    match conn.recv(timeout) {
        Err(SocketError::Closed) => Ok(got),
        Ok(extra) => Err(TrafficError::Extra {
            stream: stream.label.clone(),
            count: stream.count,
            len: extra.len(),
        }),
        Err(e) => Err(stream.socket_err(got.messages, e)),
    }
}

/// Receives messages of `stream` until the peer closes (a sender killed
/// mid-stream), checking each; `stream.count()` is only an upper bound.
pub fn verify_until_eof(
    conn: &SeqpacketConn,
    stream: &Stream,
    timeout: Duration,
) -> Result<Received> {
    verify(conn, stream, None, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqpacket::SeqpacketListener;
    use crate::tempdir::TempDir;
    use std::thread;

    const T: Duration = Duration::from_secs(10);

    fn pair(name: &str) -> (TempDir, SeqpacketConn, SeqpacketConn) {
        let dir = TempDir::new(name).expect("tempdir");
        let l = SeqpacketListener::bind(&dir.join("s.sock")).expect("bind");
        let a = SeqpacketConn::connect(l.path()).expect("connect");
        let b = l.accept(T).expect("accept");
        (dir, a, b)
    }

    #[test]
    fn a_stream_round_trips_and_ends() {
        let (_dir, a, b) = pair("traffic-ok");
        let s = Stream::new("t", 5, 1, 3000, 200).expect("stream");
        assert_eq!(
            s.kt_args(),
            "--count 200 --min-size 1 --max-size 3000 --seed 5"
        );
        let sender = {
            let s = s.clone();
            thread::spawn(move || {
                let bytes = send_stream(&a, &s).expect("send");
                drop(a);
                bytes
            })
        };
        let got = verify_stream(&b, &s, T).expect("verify");
        assert_eq!(got.messages, 200);
        assert_eq!(got.bytes, sender.join().expect("sender"));
    }

    #[test]
    fn loss_and_early_end_are_reported() {
        let (_dir, a, b) = pair("traffic-bad");
        let s = Stream::new("lossy", 1, 16, 64, 10).expect("stream");
        a.send(&s.message(0)).expect("send");
        a.send(&s.message(2)).expect("send");
        let err = verify_stream(&b, &s, T).expect_err("seq 1 missing");
        assert!(err.to_string().contains("seq 1 lost"), "{err}");

        let (_dir2, a, b) = pair("traffic-short");
        a.send(&s.message(0)).expect("send");
        drop(a);
        let err = verify_stream(&b, &s, T).expect_err("ends early");
        assert!(err.to_string().contains("after 1 of 10"), "{err}");

        let (_dir3, a, b) = pair("traffic-eof");
        for seq in 0..3 {
            a.send(&s.message(seq)).expect("send");
        }
        drop(a);
        assert_eq!(verify_until_eof(&b, &s, T).expect("eof").messages, 3);
    }
}
