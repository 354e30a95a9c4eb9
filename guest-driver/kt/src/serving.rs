//! Serving channels: the message pump (print / echo / count) that `recv`,
//! `listen` and `serve` share, and the accept loop of `kt listen` (guest)
//! and `kt serve` (host) that runs one worker thread per channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::channel::{Channel, NbStats, Recv};
use crate::error::{Error, Result};
use crate::guest::GuestListener;
use crate::host::Listener;
use crate::{out, signal};

/// A source of channels.
pub trait Acceptor {
    /// Waits up to `timeout` for a pending channel.
    fn wait(&self, timeout: Option<Duration>) -> Result<bool>;
    /// Takes the next channel.
    fn accept(&mut self) -> Result<Channel>;
}

impl Acceptor for GuestListener {
    fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        GuestListener::wait(self, timeout)
    }
    fn accept(&mut self) -> Result<Channel> {
        GuestListener::accept(self)
    }
}

impl Acceptor for Listener {
    fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        Listener::wait(self, timeout)
    }
    fn accept(&mut self) -> Result<Channel> {
        Listener::accept(self)
    }
}

/// A message budget shared by all channels of one run (`--count`).
#[derive(Debug, Default)]
pub struct Budget {
    limit: Option<u64>,
    used: AtomicU64,
}

impl Budget {
    /// At most `limit` messages (`None`: unlimited).
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Whether the budget is used up.
    pub fn done(&self) -> bool {
        self.limit
            .is_some_and(|l| self.used.load(Ordering::SeqCst) >= l)
    }

    /// Claims one message; false if the budget was already used up.
    fn claim(&self) -> bool {
        let before = self.used.fetch_add(1, Ordering::SeqCst);
        match self.limit {
            None => true,
            Some(l) => before < l,
        }
    }
}

/// What the pump does with each message.
#[derive(Debug, Clone, Copy, Default)]
pub struct PumpMode {
    /// Print it (`Some(hex)`).
    pub print: Option<bool>,
    /// Send it back.
    pub echo: bool,
}

/// Totals of one pumped channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pumped {
    /// Messages handled.
    pub msgs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Reads messages until the channel ends or the budget is used up.
pub fn pump(ch: &Channel, mode: PumpMode, budget: &Budget) -> Result<Pumped> {
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    let mut total = Pumped::default();
    let mut echo = mode.echo;
    while !budget.done() {
        let n = match ch.recv(&mut buf, &mut nb)? {
            Recv::Eof => break,
            Recv::Msg(n) => n,
        };
        if !budget.claim() {
            break;
        }
        let msg = &buf[..n];
        if let Some(hex) = mode.print {
            out::message(msg, hex)?;
        }
        if echo {
            match ch.send(msg, &mut nb) {
                Ok(()) => {}
                // The peer stopped listening (e.g. `kt send` to an echo
                // service): keep reading what it sent, stop answering.
                Err(Error::PeerClosed { .. }) => echo = false,
                Err(e) => return Err(e),
            }
        }
        total.msgs += 1;
        total.bytes += n as u64;
    }
    Ok(total)
}

/// A per-channel handler run on a worker thread.
pub type Handler = Arc<dyn Fn(Channel) -> Result<()> + Send + Sync>;

/// Accepts channels and runs `handler` on each in its own thread, until
/// `channels` channels have ended or the budget is used up (or forever).
/// A failing channel is reported on stderr; the loop goes on.
pub fn accept_loop(
    acc: &mut dyn Acceptor,
    channels: Option<u64>,
    budget: &Arc<Budget>,
    handler: Handler,
) -> Result<()> {
    let finished = Arc::new(AtomicU64::new(0));
    let mut accepted = 0u64;
    let tick = Duration::from_millis(100);
    loop {
        if signal::interrupted() {
            return Err(Error::Interrupted);
        }
        if budget.done() {
            return Ok(());
        }
        if let Some(n) = channels {
            if finished.load(Ordering::SeqCst) >= n {
                return Ok(());
            }
            if accepted >= n {
                std::thread::sleep(tick);
                continue;
            }
        }
        if !acc.wait(Some(tick))? {
            continue;
        }
        let ch = match acc.accept() {
            Ok(ch) => ch,
            Err(e @ Error::Reset { .. }) => {
                eprintln!("kt: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        accepted += 1;
        let handler = Arc::clone(&handler);
        let done = Arc::clone(&finished);
        let label = ch.label().to_string();
        signal::spawn_worker("kt-channel", move || {
            if let Err(e) = handler(ch) {
                eprintln!("kt: {label}: {e}");
            }
            done.fetch_add(1, Ordering::SeqCst);
        })
        .map_err(|e| Error::io("spawn channel thread", e))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Kind;
    use crate::host::seqpacket_pair;

    #[test]
    fn budget_counts_exactly() {
        let b = Budget::new(Some(2));
        assert!(!b.done());
        assert!(b.claim());
        assert!(b.claim());
        assert!(b.done());
        assert!(!b.claim());
        let unlimited = Budget::new(None);
        for _ in 0..10 {
            assert!(unlimited.claim());
        }
        assert!(!unlimited.done());
    }

    #[test]
    fn echo_pump_answers_and_stops_at_budget() {
        let (a, b) = seqpacket_pair().unwrap();
        let a = Channel::new(a, Kind::Host, "a".into(), 1024, 1024);
        let b = Channel::new(b, Kind::Host, "b".into(), 1024, 1024);
        let mut nb = NbStats::default();
        for m in [&b"x"[..], b"", b"hello"] {
            a.send(m, &mut nb).unwrap();
        }
        let got = pump(
            &b,
            PumpMode {
                print: None,
                echo: true,
            },
            &Budget::new(Some(3)),
        )
        .unwrap();
        assert_eq!(got, Pumped { msgs: 3, bytes: 6 });
        let mut buf = a.recv_buffer();
        for want in [&b"x"[..], b"", b"hello"] {
            let Recv::Msg(n) = a.recv(&mut buf, &mut nb).unwrap() else {
                panic!("eof")
            };
            assert_eq!(&buf[..n], want);
        }
    }

    #[test]
    fn echo_to_a_departed_peer_still_reads_everything() {
        let (a, b) = seqpacket_pair().unwrap();
        let a = Channel::new(a, Kind::Host, "a".into(), 1024, 1024);
        let b = Channel::new(b, Kind::Host, "b".into(), 1024, 1024);
        let mut nb = NbStats::default();
        for m in [&b"x"[..], b"yy", b"zzz"] {
            a.send(m, &mut nb).unwrap();
        }
        drop(a);
        let mode = PumpMode {
            print: None,
            echo: true,
        };
        let got = pump(&b, mode, &Budget::new(None)).unwrap();
        assert_eq!(got, Pumped { msgs: 3, bytes: 6 });
    }
}
