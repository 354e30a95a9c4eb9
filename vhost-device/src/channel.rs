//! One channel's state: its life cycle as one [`State`] with the legal
//! transitions in [`State::next`], its host socket, credit both ways,
//! sequence numbers and the bounded queue of guest messages waiting for the
//! host socket, with its window taken from (and given back to) the VM's
//! budget on held data (`budget::VmBuffer`). Pure state and small
//! helpers; the device (`device/`)
//! feeds it protocol events and counts illegal transitions as malformed
//! input.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use kt_proto::{CreditError, RecvCredit, SendCredit};

use crate::budget::VmBuffer;
use crate::seqpacket::SeqPacket;
use crate::stats::{Counters, Opener};

/// Where a channel is in its life (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The device sent OPEN for a host connection; waiting for the guest's
    /// OPEN_OK / OPEN_ERR.
    Opening,
    /// Open both ways.
    Open,
    /// Half closed by the device: it sent CLOSE (the host side went away or
    /// the guest broke the protocol) and waits for the guest's CLOSE; late
    /// guest DATA is discarded.
    CloseSent,
    /// Half closed by the guest: it sent CLOSE; guest data still waiting is
    /// written to the host, then the device answers with CLOSE.
    CloseReceived,
    /// Both CLOSEs exchanged (or the OPEN was refused): the channel is
    /// forgotten and its id free.
    Closed,
    /// The transport was reset (driver gone, device stopped): the channel
    /// ended without a close handshake.
    Reset,
}

/// What happens to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The guest accepted a device-opened channel.
    OpenOk,
    /// The guest refused a device-opened channel.
    OpenErr,
    /// The guest sent CLOSE.
    GuestClose,
    /// The device sends CLOSE.
    DeviceClose,
    /// The transport is reset.
    Reset,
}

/// An event the channel's state does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event:?} on a channel that is {state:?}")]
pub struct IllegalTransition {
    /// Where the channel was (it stays there).
    pub state: State,
    /// What was attempted.
    pub event: Event,
}

impl State {
    /// The legal transitions; `None` for an illegal one.
    pub fn next(self, event: Event) -> Option<State> {
        use Event as E;
        use State as S;
        match (self, event) {
            (_, E::Reset) => Some(S::Reset),
            (S::Opening, E::OpenOk) => Some(S::Open),
            (S::Opening, E::OpenErr) => Some(S::Closed),
            // A CLOSE in answer to OPEN is a refusal (SPEC §3.2).
            (S::Opening, E::GuestClose) => Some(S::Closed),
            // Giving up on an OPEN still needs the guest's answer.
            (S::Opening, E::DeviceClose) => Some(S::CloseSent),
            (S::Open, E::GuestClose) => Some(S::CloseReceived),
            (S::Open, E::DeviceClose) => Some(S::CloseSent),
            (S::CloseSent, E::GuestClose) => Some(S::Closed),
            (S::CloseReceived, E::DeviceClose) => Some(S::Closed),
            (
                S::Open | S::CloseSent | S::CloseReceived | S::Closed | S::Reset,
                E::OpenOk | E::OpenErr,
            )
            | (S::CloseSent, E::DeviceClose)
            | (S::CloseReceived, E::GuestClose)
            | (S::Closed | S::Reset, E::GuestClose | E::DeviceClose) => None,
        }
    }

    /// Whether the device has sent its CLOSE.
    pub fn close_sent(self) -> bool {
        matches!(self, State::CloseSent | State::Closed)
    }

    /// Whether the guest has sent its CLOSE.
    pub fn close_received(self) -> bool {
        matches!(self, State::CloseReceived | State::Closed)
    }

    /// Past OPEN_OK and not yet forgotten: the host socket is in use.
    pub fn established(self) -> bool {
        matches!(self, State::Open | State::CloseSent | State::CloseReceived)
    }
}

/// A channel between a guest endpoint and a host socket.
#[derive(Debug)]
pub struct Channel {
    /// Service name.
    pub service: String,
    /// Which side opened it.
    pub opener: Opener,
    /// Life-cycle state.
    pub state: State,
    /// The host connection; `None` once the host side is gone.
    pub sock: Option<SeqPacket>,
    /// epoll events currently registered for `sock` (0 = not registered).
    pub registered: u32,
    /// The host socket may have input: it is not polled for input until a
    /// receive returns `WouldBlock`.
    pub readable: bool,
    /// The host hung up: the fd is out of epoll for good; what is left in
    /// it is read, then the channel closes.
    pub hup: bool,
    /// The host closed without reading everything the guest sent (the
    /// kernel said `ECONNRESET` or `EPIPE`): later guest data is discarded
    /// and the final CLOSE carries `KT_ERR_CONNRESET`, after the host's
    /// remaining messages.
    pub host_unread: bool,
    /// Whether the channel is queued for the rx scheduler.
    pub in_ready: bool,
    /// Host input waits for guest credit.
    pub stalled: bool,
    /// Size of the host message that waits for credit.
    pub stall_need: u32,
    /// Size of the last host message taken: the rx room the next one is
    /// expected to need (host messages are received straight into rx
    /// buffers gathered for it; what does not fit is copied on).
    pub last_len: usize,
    /// Credit towards the guest (host → guest data).
    pub send: SendCredit,
    /// Credit we grant the guest (guest → host data).
    pub recv: RecvCredit,
    /// Next DATA seq we send to the guest.
    pub tx_seq: u32,
    /// Next DATA seq expected from the guest.
    pub rx_seq: u32,
    /// Guest messages not yet accepted by the host socket (bounded by the
    /// credit granted: at most `recv.buf_alloc` credit bytes).
    pub pending: VecDeque<Vec<u8>>,
    /// A CREDIT_UPDATE is queued towards the guest.
    pub update_queued: bool,
    /// A host-opened channel waiting for the guest's answer fails its host
    /// connection with `ERR 110` at this time.
    pub open_deadline: Option<Instant>,
    /// Counters shown by `stats`.
    pub counters: Arc<Counters>,
    /// The VM's budget this channel's window comes from.
    vm: Arc<VmBuffer>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.vm.close(self.recv.buf_alloc, self.recv.in_flight);
    }
}

impl Channel {
    /// A new channel over `sock` granting the guest a window from the
    /// VM's budget `vm`.
    pub fn new(
        service: &str,
        opener: Opener,
        state: State,
        sock: SeqPacket,
        vm: Arc<VmBuffer>,
        peer_buf_alloc: u32,
        counters: Arc<Counters>,
    ) -> Channel {
        let window = vm.open();
        Channel {
            service: service.to_owned(),
            opener,
            state,
            sock: Some(sock),
            registered: 0,
            readable: false,
            hup: false,
            host_unread: false,
            in_ready: false,
            stalled: false,
            stall_need: 0,
            last_len: 0,
            send: SendCredit::new(peer_buf_alloc),
            recv: RecvCredit::new(window),
            tx_seq: 0,
            rx_seq: 0,
            pending: VecDeque::new(),
            update_queued: false,
            open_deadline: None,
            counters,
            vm,
        }
    }

    /// Accounts for an arriving guest message of `msg_len` bytes; refuses
    /// one over the credit granted.
    pub fn accept(&mut self, msg_len: u32) -> Result<(), CreditError> {
        let before = self.recv.in_flight;
        self.recv.on_receive(msg_len)?;
        self.vm.hold(self.recv.in_flight - before);
        Ok(())
    }

    /// A guest message of `msg_len` bytes left the device (taken by the
    /// host socket or discarded): its credit is freed, and the window is
    /// resized towards the channel's share of the VM's budget. The window
    /// shrinks by at most what was freed, so `fwd_cnt + buf_alloc` (the
    /// most the guest may have sent) never goes back (SPEC §5).
    pub fn consumed(&mut self, msg_len: u32) {
        let before = self.recv.in_flight;
        self.recv.on_consume(msg_len);
        let freed = before - self.recv.in_flight;
        self.vm.release_held(freed);
        let old = self.recv.buf_alloc;
        let new = self.vm.resize(old, freed);
        if new != old {
            self.recv.buf_alloc = new;
            // `fwd_cnt - last_advertised` stays the growth of the limit
            // since the last advertisement (see `needs_update`).
            self.recv.last_advertised = self
                .recv
                .last_advertised
                .wrapping_add(old.wrapping_sub(new));
        }
    }

    /// Whether the guest should get a CREDIT_UPDATE: the limit it may send
    /// up to grew by half the window since the last advertisement, or by
    /// the window less one largest message, whichever is less: with a
    /// window under two messages, a guest waiting to send a large one
    /// still hears of the room once everything is drained.
    pub fn needs_update(&self) -> bool {
        let grown = self.recv.fwd_cnt.wrapping_sub(self.recv.last_advertised);
        let buf = self.recv.buf_alloc;
        let threshold = (buf / 2).min(buf.saturating_sub(self.vm.min_window()));
        // The limit never goes back; a "negative" growth would be a bug,
        // not a reason to advertise.
        grown != 0 && grown < 1 << 31 && grown >= threshold
    }

    /// Moves the channel on `event`, or leaves it where it is and says why
    /// not.
    pub fn apply(&mut self, event: Event) -> Result<State, IllegalTransition> {
        match self.state.next(event) {
            Some(s) => {
                self.state = s;
                Ok(s)
            }
            None => Err(IllegalTransition {
                state: self.state,
                event,
            }),
        }
    }

    /// Whether host input should be read and forwarded to the guest.
    pub fn wants_host_input(&self) -> bool {
        self.state == State::Open && self.sock.is_some()
    }

    /// The epoll events the channel needs now. An open channel's socket
    /// stays registered for hang-up (`EPOLLRDHUP`; `EPOLLHUP`/`EPOLLERR`
    /// are always reported) even while its input waits for guest credit or
    /// rx buffers, so a host close is seen at once whatever else is going
    /// on; `EPOLLIN` only while input is wanted and not already known.
    pub fn wanted_events(&self) -> u32 {
        if self.sock.is_none() || self.hup || !self.state.established() {
            return 0;
        }
        let mut ev = libc::EPOLLRDHUP as u32;
        if self.wants_host_input() && !self.readable {
            ev |= libc::EPOLLIN as u32;
        }
        if !self.pending.is_empty() && !self.host_unread {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }

    /// The host socket is gone: waiting guest messages are dropped and
    /// their credit accounted as freed.
    pub fn discard_pending(&mut self) {
        let lens: Vec<u32> = self.pending.drain(..).map(|m| m.len() as u32).collect();
        for len in lens {
            self.consumed(len);
        }
    }

    /// The host closed without reading what the guest sent: from now on
    /// guest data is discarded (its credit returned at once). Returns how
    /// many waiting messages were dropped.
    pub fn host_stopped_reading(&mut self) -> usize {
        self.host_unread = true;
        let n = self.pending.len();
        self.discard_pending();
        n
    }

    /// Whether the channel can be forgotten: both CLOSEs exchanged (ours is
    /// sent only once nothing is left for the host, or the host is gone).
    pub fn finished(&self) -> bool {
        self.state == State::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [State; 6] = [
        State::Opening,
        State::Open,
        State::CloseSent,
        State::CloseReceived,
        State::Closed,
        State::Reset,
    ];
    const EVENTS: [Event; 5] = [
        Event::OpenOk,
        Event::OpenErr,
        Event::GuestClose,
        Event::DeviceClose,
        Event::Reset,
    ];

    #[test]
    fn transition_table() {
        use Event as E;
        use State as S;
        let legal = [
            (S::Opening, E::OpenOk, S::Open),
            (S::Opening, E::OpenErr, S::Closed),
            (S::Opening, E::GuestClose, S::Closed),
            (S::Opening, E::DeviceClose, S::CloseSent),
            (S::Open, E::GuestClose, S::CloseReceived),
            (S::Open, E::DeviceClose, S::CloseSent),
            (S::CloseSent, E::GuestClose, S::Closed),
            (S::CloseReceived, E::DeviceClose, S::Closed),
        ];
        for from in STATES {
            for ev in EVENTS {
                let want = if ev == E::Reset {
                    Some(S::Reset)
                } else {
                    legal
                        .iter()
                        .find(|(f, e, _)| *f == from && *e == ev)
                        .map(|t| t.2)
                };
                assert_eq!(from.next(ev), want, "{from:?} on {ev:?}");
            }
        }
    }

    #[test]
    fn close_flags_follow_the_state() {
        for s in STATES {
            assert_eq!(
                s.close_sent(),
                matches!(s, State::CloseSent | State::Closed),
                "{s:?}"
            );
            assert_eq!(
                s.close_received(),
                matches!(s, State::CloseReceived | State::Closed),
                "{s:?}"
            );
        }
        // Both orders of the close handshake end in Closed.
        let mut a = State::Open;
        for e in [Event::GuestClose, Event::DeviceClose] {
            a = a.next(e).unwrap();
        }
        let mut b = State::Open;
        for e in [Event::DeviceClose, Event::GuestClose] {
            b = b.next(e).unwrap();
        }
        assert_eq!((a, b), (State::Closed, State::Closed));
    }

    #[test]
    fn an_illegal_event_leaves_the_channel_where_it_was() {
        let (a, _b) = crate::seqpacket::SeqPacket::pair().unwrap();
        let stats = crate::stats::Stats::new(0);
        let counters = stats.open_channel(1, "svc", crate::stats::Opener::Guest);
        let mut ch = Channel::new(
            "svc",
            crate::stats::Opener::Guest,
            State::Open,
            a,
            Arc::new(VmBuffer::unlimited(4096, 1024)),
            0,
            counters,
        );
        assert_eq!(
            ch.apply(Event::OpenOk),
            Err(IllegalTransition {
                state: State::Open,
                event: Event::OpenOk
            })
        );
        assert_eq!(ch.state, State::Open);
        assert_eq!(ch.apply(Event::GuestClose), Ok(State::CloseReceived));
        assert!(!ch.wants_host_input());
        assert!(ch.apply(Event::GuestClose).is_err());
        assert_eq!(ch.state, State::CloseReceived);
        assert!(!ch.finished());
        assert_eq!(ch.apply(Event::DeviceClose), Ok(State::Closed));
        assert!(ch.finished());
    }

    fn channel(vm: &Arc<VmBuffer>, id: u32) -> Channel {
        let (a, _b) = crate::seqpacket::SeqPacket::pair().unwrap();
        let stats = crate::stats::Stats::new(0);
        let counters = stats.open_channel(id, "svc", Opener::Guest);
        Channel::new(
            "svc",
            Opener::Guest,
            State::Open,
            a,
            vm.clone(),
            0,
            counters,
        )
    }

    #[test]
    fn the_window_follows_the_budget_and_what_was_granted_never_goes_back() {
        let vm = Arc::new(VmBuffer::new(6000, 4000, 1000));
        let mut a = channel(&vm, 1);
        assert_eq!(a.recv.buf_alloc, 1000);
        a.accept(468).unwrap();
        assert_eq!(vm.held(), 500);
        assert!(a.accept(469).is_err(), "over the window");
        // Draining grows the window to the share (alone: channel_buffer),
        // and the guest hears of it.
        a.consumed(468);
        assert_eq!((a.recv.buf_alloc, vm.held()), (4000, 0));
        assert!(a.needs_update());
        a.recv.advertised();
        // Two more channels: the share falls to 2000. What `a` was granted
        // stays; its window shrinks only as it drains.
        let b = channel(&vm, 2);
        let c = channel(&vm, 3);
        assert_eq!(vm.granted(), 6000);
        let mut limit = a.recv.fwd_cnt.wrapping_add(a.recv.buf_alloc);
        for _ in 0..20 {
            a.accept(268).unwrap();
            a.consumed(268);
            let now = a.recv.fwd_cnt.wrapping_add(a.recv.buf_alloc);
            assert!(now.wrapping_sub(limit) < 1 << 31, "the limit went back");
            limit = now;
            assert!(a.recv.buf_alloc >= 1000);
        }
        assert_eq!(a.recv.buf_alloc, 2000);
        drop((b, c));
        assert_eq!(vm.granted(), 2000);
        // Held data goes back with the channel.
        a.accept(68).unwrap();
        drop(a);
        assert_eq!((vm.held(), vm.granted()), (0, 0));
    }

    #[test]
    fn a_window_under_two_messages_still_announces_room_for_one() {
        let vm = Arc::new(VmBuffer::new(1500, 4000, 1000));
        let mut a = channel(&vm, 1);
        assert_eq!(a.recv.buf_alloc, 1000);
        // The guest sent 100 and waits to send a 1000-byte message (900
        // left); the window grows to its share (1500 alone, less than two
        // messages).
        a.accept(68).unwrap();
        a.recv.advertised();
        a.consumed(68);
        assert_eq!(a.recv.buf_alloc, 1500);
        // The limit grew by 600: under half the window (750), past the
        // window less one message (500): the guest is told now.
        assert!(a.needs_update());
    }
}
