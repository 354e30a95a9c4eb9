//! The bench peer: `kt serve --mode bench` on the host, driven by
//! `kt bench --direction to-host|from-host|both` in the guest, so every
//! throughput and rate figure is one direction at a time and measured to
//! the moment the receiver has the last message.
//!
//! One channel carries a sequence of batches; each starts with a request
//! message from the bench side (ASCII, space-separated):
//!
//! * `kt-bench echo COUNT` — the peer sends the next COUNT messages back
//!   (ping-pong);
//! * `kt-bench sink COUNT SIZE` — the peer reads COUNT messages of SIZE
//!   bytes, then answers with a result;
//! * `kt-bench source COUNT SIZE` — the peer sends COUNT messages of SIZE
//!   bytes, then reads one `kt-bench done` from the bench side (sent once
//!   it has them all) and answers with a result.
//!
//! The result is `kt-bench result MSGS BYTES CPU_US ELAPSED_US`: what the
//! peer moved, and the CPU time (user + system, from `/proc/PID/stat`) that
//! it and the processes listed in its `--cpu-pids` file (the VMM, the
//! device backend) used between the request and the batch's end. The same
//! protocol works over every transport (kerntransport, and length-prefixed
//! frames on vsock and virtio-serial), so all are measured alike.

use std::path::Path;
use std::time::Instant;

use crate::channel::{Channel, NbStats, Recv};
use crate::error::{Error, Result};

const MAGIC: &str = "kt-bench";

/// One request of the bench side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Echo the next `count` messages.
    Echo {
        /// Messages to echo.
        count: u64,
    },
    /// Read `count` messages of `size` bytes, then answer with a result.
    Sink {
        /// Messages.
        count: u64,
        /// Bytes each.
        size: usize,
    },
    /// Send `count` messages of `size` bytes, wait for `done`, answer.
    Source {
        /// Messages.
        count: u64,
        /// Bytes each.
        size: usize,
    },
}

impl Request {
    /// The request message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Echo { count } => format!("{MAGIC} echo {count}"),
            Request::Sink { count, size } => format!("{MAGIC} sink {count} {size}"),
            Request::Source { count, size } => format!("{MAGIC} source {count} {size}"),
        }
        .into_bytes()
    }

    /// Parses a request message.
    pub fn parse(msg: &[u8]) -> std::result::Result<Request, String> {
        let text = std::str::from_utf8(msg).map_err(|_| not_a_request(msg))?;
        let w: Vec<&str> = text.split(' ').collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| not_a_request(msg));
        match w.as_slice() {
            [MAGIC, "echo", c] => Ok(Request::Echo { count: num(c)? }),
            [MAGIC, op @ ("sink" | "source"), c, s] => {
                let count = num(c)?;
                let size = usize::try_from(num(s)?).map_err(|_| not_a_request(msg))?;
                Ok(if *op == "sink" {
                    Request::Sink { count, size }
                } else {
                    Request::Source { count, size }
                })
            }
            _ => Err(not_a_request(msg)),
        }
    }
}

fn not_a_request(msg: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&msg[..msg.len().min(40)]).into();
    format!("expected a kt-bench request, got {} bytes {shown:?} — is the peer `kt bench --direction to-host|from-host|both`?", msg.len())
}

/// The bench side's "I have them all" after a source batch.
pub fn done_message() -> Vec<u8> {
    format!("{MAGIC} done").into_bytes()
}

/// What the peer reports at the end of a sink or source batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerResult {
    /// Messages moved.
    pub msgs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// CPU time of the peer and its `--cpu-pids` processes, microseconds.
    pub cpu_us: u64,
    /// The peer's own elapsed time, microseconds.
    pub elapsed_us: u64,
}

impl PeerResult {
    /// The result message.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{MAGIC} result {} {} {} {}",
            self.msgs, self.bytes, self.cpu_us, self.elapsed_us
        )
        .into_bytes()
    }

    /// Parses a result message.
    pub fn parse(msg: &[u8]) -> std::result::Result<PeerResult, String> {
        let bad = || {
            format!(
                "expected a kt-bench result from the peer, got {} bytes",
                msg.len()
            )
        };
        let text = std::str::from_utf8(msg).map_err(|_| bad())?;
        let w: Vec<&str> = text.split(' ').collect();
        let [MAGIC, "result", m, b, c, e] = w.as_slice() else {
            return Err(bad());
        };
        let n = |s: &str| s.parse::<u64>().map_err(|_| bad());
        Ok(PeerResult {
            msgs: n(m)?,
            bytes: n(b)?,
            cpu_us: n(c)?,
            elapsed_us: n(e)?,
        })
    }
}

/// Clock ticks per second of `/proc` CPU times.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// utime + stime (ticks) from the text of `/proc/PID/stat`.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14, 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy ticks (user, nice, system, irq, softirq) of all CPUs from the text
/// of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq ...
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

/// This machine's busy CPU time so far, microseconds (`/proc/stat`).
pub fn system_cpu_us() -> Result<u64> {
    let text =
        std::fs::read_to_string("/proc/stat").map_err(|e| Error::io("read /proc/stat", e))?;
    let ticks =
        parse_proc_stat(&text).ok_or_else(|| Error::Bench("/proc/stat has no cpu line".into()))?;
    Ok(ticks * 1_000_000 / clk_tck())
}

/// CPU time so far (microseconds) of this process and of the PIDs listed
/// in `pids_file` (whitespace-separated; a missing file or a gone process
/// counts nothing).
fn processes_cpu_us(pids_file: Option<&Path>) -> u64 {
    let mut pids = vec![std::process::id().to_string()];
    if let Some(text) = pids_file.and_then(|p| std::fs::read_to_string(p).ok()) {
        pids.extend(text.split_whitespace().map(str::to_string));
    }
    pids.sort();
    pids.dedup();
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|t| parse_pid_stat(&t))
        .sum();
    ticks * 1_000_000 / clk_tck()
}

fn recv_msg(ch: &Channel, buf: &mut [u8], nb: &mut NbStats) -> Result<Option<usize>> {
    match ch.recv(buf, nb)? {
        Recv::Msg(n) => Ok(Some(n)),
        Recv::Eof => Ok(None),
    }
}

/// Serves one channel as the bench peer until the bench side closes it.
pub fn serve(ch: &Channel, pids_file: Option<&Path>) -> Result<()> {
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    while let Some(n) = recv_msg(ch, &mut buf, &mut nb)? {
        let req = Request::parse(&buf[..n]).map_err(Error::Bench)?;
        let (cpu0, t0) = (processes_cpu_us(pids_file), Instant::now());
        let mut res = PeerResult::default();
        match req {
            Request::Echo { count } => {
                for _ in 0..count {
                    let Some(n) = recv_msg(ch, &mut buf, &mut nb)? else {
                        return Ok(());
                    };
                    ch.send(&buf[..n], &mut nb)?;
                }
                continue;
            }
            Request::Sink { count, size } => {
                for i in 0..count {
                    let Some(n) = recv_msg(ch, &mut buf, &mut nb)? else {
                        return Err(Error::Bench(format!(
                            "sink: the bench side closed after {i} of {count} messages"
                        )));
                    };
                    if n != size {
                        return Err(Error::Bench(format!(
                            "sink: message {i} has {n} bytes, expected {size}"
                        )));
                    }
                    res.msgs += 1;
                    res.bytes += n as u64;
                }
            }
            Request::Source { count, size } => {
                let msg = vec![0x5au8; size];
                for _ in 0..count {
                    ch.send(&msg, &mut nb)?;
                    res.msgs += 1;
                    res.bytes += size as u64;
                }
                let n = recv_msg(ch, &mut buf, &mut nb)?.ok_or_else(|| {
                    Error::Bench("source: the bench side closed before `done`".into())
                })?;
                if buf[..n] != done_message()[..] {
                    return Err(Error::Bench(format!(
                        "source: expected `kt-bench done`, got {n} bytes"
                    )));
                }
            }
        }
        res.elapsed_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        res.cpu_us = processes_cpu_us(pids_file).saturating_sub(cpu0);
        ch.send(&res.encode(), &mut nb)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Echo { count: 7 },
            Request::Sink {
                count: 1000,
                size: 64,
            },
            Request::Source {
                count: 3,
                size: 65536,
            },
        ] {
            assert_eq!(Request::parse(&r.encode()), Ok(r));
        }
        for bad in [
            &b""[..],
            b"kt-bench",
            b"kt-bench sink 1",
            b"hello",
            &[0xff; 64],
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        let r = PeerResult {
            msgs: 1,
            bytes: 2,
            cpu_us: 3,
            elapsed_us: 4,
        };
        assert_eq!(PeerResult::parse(&r.encode()), Ok(r));
        assert!(PeerResult::parse(b"kt-bench result 1 2 3").is_err());
    }

    #[test]
    fn proc_parsers() {
        let stat = "1234 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        assert_eq!(parse_pid_stat(stat), Some(300));
        assert_eq!(parse_pid_stat("1 (x) S"), None);
        let ps = "cpu  10 1 5 1000 7 2 3 0 0 0\ncpu0 10 1 5 1000 7 2 3 0 0 0\n";
        assert_eq!(parse_proc_stat(ps), Some(21));
        assert!(parse_pid_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).is_some());
        assert!(system_cpu_us().is_ok());
    }
}
