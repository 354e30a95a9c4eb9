//! Guest → host writes: accepted DATA delivered to the host socket
//! straight from guest memory (`deliver`), consecutive messages of one
//! channel taken in one tx pass as a burst with one `sendmmsg` (their
//! chains go back to the guest only after it, so the guest cannot reuse a
//! buffer the kernel has not read yet), copies queued while the socket is
//! full (`flush_pending`), and send failures.

use std::os::fd::AsFd;

use super::*;
use crate::chain::TxMsg;
use crate::iov::{send_guest, send_guest_many, GuestBytes, IOV_MAX};

/// Counts one guest message of `len` bytes written to the host from a
/// channel of queue pair `pair`.
pub(super) fn count_to_host(stats: &Stats, pair: u16, ch: &Channel, len: u64) {
    add(&ch.counters.msgs_to_host, 1);
    add(&ch.counters.bytes_to_host, len);
    let t = stats.totals(pair);
    add(&t.msgs_to_host, 1);
    add(&t.bytes_to_host, len);
}

/// Most messages one burst (one `sendmmsg`) carries.
pub const BURST_MAX: usize = 32;

/// Accepted DATA messages of one channel waiting to be sent together.
#[derive(Debug, Default)]
pub(super) struct Burst<'m> {
    id: u32,
    msgs: Vec<GuestBytes<'m>>,
    heads: Vec<u16>,
}

impl<'m> Burst<'m> {
    /// Whether `msg` can go in a burst (its payload fits one iovec list).
    pub fn takes(msg: &TxMsg<'_>) -> bool {
        msg.payload.segments() <= IOV_MAX
    }

    /// Whether a message of channel `id` can join this burst (it is empty,
    /// or of the same channel and not full).
    pub fn continues(&self, id: u32) -> bool {
        self.msgs.is_empty() || (self.id == id && self.msgs.len() < BURST_MAX)
    }

    /// Adds an accepted message and its chain's head.
    pub fn push(&mut self, id: u32, payload: GuestBytes<'m>, head: u16) {
        self.id = id;
        self.msgs.push(payload);
        self.heads.push(head);
    }
}

impl Device {
    /// Sends what `burst` holds and returns its chains to the guest; false
    /// if the used ring failed.
    pub(super) fn flush_burst(&mut self, burst: &mut Burst<'_>, q: &mut Queue, mem: &Mem) -> bool {
        if burst.msgs.is_empty() {
            return true;
        }
        let id = burst.id;
        if burst.msgs.len() == 1 {
            if let Some(m) = burst.msgs.pop() {
                self.deliver(id, m);
            }
        } else {
            self.deliver_many(id, &burst.msgs);
        }
        burst.msgs.clear();
        for head in burst.heads.drain(..) {
            if let Err(e) = q.add_used(mem, head, 0) {
                self.malformed(None, &format_args!("tx used ring: {e}"));
                return false;
            }
        }
        true
    }

    /// `deliver` for several messages of one channel: one `sendmmsg` when
    /// the socket has nothing queued before them; the ones it does not take
    /// are queued as copies (and a failure is handled as for one message).
    fn deliver_many(&mut self, id: u32, msgs: &[GuestBytes<'_>]) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let direct = ch.state == State::Open && !ch.host_unread && ch.pending.is_empty();
        let Some(sock) = ch.sock.as_ref().filter(|_| direct) else {
            for m in msgs {
                self.deliver(id, m.clone());
            }
            return;
        };
        let (sent, err) = send_guest_many(sock.as_fd(), msgs);
        for m in &msgs[..sent] {
            let len = m.len() as u64;
            ch.consumed(len as u32);
            count_to_host(&self.stats, self.pair, ch, len);
        }
        if let Some(e) = err {
            // Queued like any unsent message, so the failure handling
            // returns or drops their credit as before.
            for m in &msgs[sent..] {
                ch.pending.push_back(m.to_vec());
            }
            if e.kind() != io::ErrorKind::WouldBlock {
                self.host_send_failed(id, e);
                return;
            }
        }
        self.after_host_writes(id);
    }

    /// Delivers an accepted guest message to the host socket: straight
    /// from guest memory, or as a copy queued behind others or when the
    /// socket cannot take it now; discarded (credit returned) once the host
    /// stopped reading, or dropped once the device closed the channel.
    pub(super) fn deliver(&mut self, id: u32, payload: GuestBytes<'_>) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.state == State::CloseSent {
            // Closed by the device after this message was accepted (an
            // earlier message of the same burst failed): late data.
            return;
        }
        if ch.host_unread {
            // The host closed without reading: nobody will (SPEC §3.2,
            // the reader has gone); the credit comes back at once.
            log::debug!("DATA on channel {id:#x} discarded: the host closed");
            ch.consumed(payload.len() as u32);
            self.queue_credit_update(id, false);
            return;
        }
        if ch.pending.is_empty() {
            if let Some(sock) = &ch.sock {
                // Straight from guest memory to the host socket; a copy is
                // made only if the socket cannot take it now.
                let r = loop {
                    match send_guest(sock.as_fd(), &payload) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r,
                    }
                };
                match r {
                    Ok(_) => {
                        let len = payload.len() as u64;
                        ch.consumed(len as u32);
                        count_to_host(&self.stats, self.pair, ch, len);
                        self.after_host_writes(id);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ch.pending.push_back(payload.to_vec());
                        self.update_interest(id);
                    }
                    Err(e) => {
                        // Queued like any unsent message, so the failure
                        // handling returns or drops its credit as before.
                        ch.pending.push_back(payload.to_vec());
                        self.host_send_failed(id, e);
                    }
                }
                return;
            }
        }
        ch.pending.push_back(payload.to_vec());
        self.flush_pending(id);
    }

    /// Writes queued guest messages to the host socket until it would block.
    pub(super) fn flush_pending(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let mut failed = None;
        while let Some(msg) = ch.pending.front() {
            let Some(sock) = &ch.sock else {
                break;
            };
            match sock.send(msg) {
                Ok(_) => {
                    let len = msg.len() as u64;
                    ch.pending.pop_front();
                    ch.consumed(len as u32);
                    count_to_host(&self.stats, self.pair, ch, len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(e) => self.host_send_failed(id, e),
            None => self.after_host_writes(id),
        }
    }

    /// After guest data was written to the host socket: credit back to the
    /// guest if due, epoll interest, and a pending CLOSE answer.
    pub(super) fn after_host_writes(&mut self, id: u32) {
        self.queue_credit_update(id, false);
        self.update_interest(id);
        self.maybe_finish(id);
    }

    /// Sending guest data to the host socket failed with `e` (not
    /// `WouldBlock`).
    pub(super) fn host_send_failed(&mut self, id: u32, e: io::Error) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let gone = matches!(
            e.raw_os_error(),
            Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
        );
        if gone && ch.wants_host_input() {
            // The host closed (or stopped reading) with guest data
            // unwritten. What it sent before still goes to the guest;
            // its hang-up arrives as an epoll event and ends the
            // channel after that data.
            let n = ch.host_stopped_reading();
            log::debug!("channel {id:#x}: host stopped reading ({e}); {n} message(s) dropped");
            self.queue_credit_update(id, false);
            self.update_interest(id);
            return;
        }
        let code = if e.raw_os_error() == Some(libc::EMSGSIZE) {
            log::warn!("channel {id:#x}: host socket cannot carry a message: {e}");
            ErrorCode::MsgSize
        } else {
            log::debug!("channel {id:#x}: host send: {e}");
            ErrorCode::ConnReset
        };
        self.close_from_host(id, code);
    }
}
