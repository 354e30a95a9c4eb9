//! Host socket I/O of open channels: epoll interest per channel, host
//! events, hang-ups, and taking host messages within the guest's credit,
//! received straight into the guest's rx buffers (one `recvmsg` with
//! iovecs over as many buffers as the channel's last message needed; what
//! does not fit lands in a spill buffer and is fragmented on).

use std::os::fd::AsFd;

use super::discovery;
use super::*;
use crate::iov::{recv_guest, GuestBytes, Recvd, IOV_MAX};

/// Takes a channel's host socket out of the worker's epoll set, if it is
/// in it. Every path that drops or stops watching a socket goes here.
pub(super) fn unwatch(epoll: &Epoll, ch: &mut Channel) {
    if let Some(sock) = &ch.sock {
        if ch.registered != 0 {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                sock.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
    }
    ch.registered = 0;
}

/// What one attempt to take a host message gave.
#[derive(Debug)]
pub(super) enum HostRead {
    /// A whole message of this many bytes: its first bytes went to the
    /// guest buffers offered, the rest to the spill buffer.
    Msg(usize),
    /// A message of this many bytes is waiting but the guest lacks credit
    /// for it.
    Stall(u32),
    /// Nothing to read now.
    WouldBlock,
    /// The host closed the connection.
    Eof,
    /// A message over `max_msg_size` (its length).
    TooBig(usize),
    /// A socket error.
    Failed(io::Error),
}

/// The size the next message of `sock` may take, without taking it:
/// `Ok(None)` when the guest has credit for the largest message (then it
/// is received at once, no peek); otherwise the peeked size, `Ok(Some)`
/// when the guest has credit for it, so a message is never taken without
/// credit.
pub(super) fn size_host(
    sock: &SeqPacket,
    credit: &kt_proto::SendCredit,
    max: usize,
) -> Result<Option<usize>, HostRead> {
    if credit.can_send(max as u32) {
        return Ok(None);
    }
    let len = match sock.peek_len() {
        Ok(Recv::Msg(len)) => len,
        Ok(Recv::Eof) => return Err(HostRead::Eof),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(HostRead::WouldBlock),
        Err(e) => return Err(HostRead::Failed(e)),
    };
    if len > max {
        return Err(HostRead::TooBig(len));
    }
    if !credit.can_send(len as u32) {
        return Err(HostRead::Stall(len as u32));
    }
    Ok(Some(len))
}

/// Takes one message from `sock` into `guest` (rx buffers' payload areas)
/// and then `spill`, which together hold `known` bytes (the peeked size)
/// or, when the size is not known, `max`. Returns what it saw and how
/// many descriptors the peer passed (closed).
pub(super) fn recv_host(
    sock: &SeqPacket,
    guest: &GuestBytes<'_>,
    spill: &mut [u8],
    known: Option<usize>,
    max: usize,
) -> (HostRead, u64) {
    match recv_guest(sock.as_fd(), guest, spill) {
        Ok((Recvd::Msg(n), c)) if n > max => (HostRead::TooBig(n), c),
        // The peek said otherwise: never forward a cut message.
        Ok((Recvd::Msg(n), c)) if known.is_some_and(|k| k != n) => (
            HostRead::Failed(io::Error::other(format!(
                "message changed size between peek ({}) and receive ({n})",
                known.unwrap_or(0)
            ))),
            c,
        ),
        Ok((Recvd::Msg(n), c)) => (HostRead::Msg(n), c),
        Ok((Recvd::Eof, c)) => (HostRead::Eof, c),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => (HostRead::WouldBlock, 0),
        Err(e) => (HostRead::Failed(e), 0),
    }
}

/// A host message taken by [`Device::read_host`].
#[derive(Debug)]
pub(super) enum Taken<'m> {
    /// Nothing taken; the rx buffer offered is still free.
    Unused(RxBuf<'m>),
    /// A message: its header (`len` still to be set per buffer) and its
    /// size; its first bytes are in the payload areas of `bufs`, in order;
    /// what did not fit waits in the device's `partial` message.
    Msg {
        /// DATA header with `msg_len`, seq and credit filled in.
        hdr: Header,
        /// Payload bytes.
        len: usize,
        /// The buffers holding its start (at least one).
        bufs: Vec<RxBuf<'m>>,
    },
}

/// Pops up to `max_bufs` more rx chains after `bufs` until their payload
/// room reaches `want` bytes; stops (and leaves the chain for the normal
/// path) at a chain that is not a plain usable buffer. Returns the room.
fn gather<'m>(
    q: &mut Queue,
    mem: &'m Mem,
    bufs: &mut Vec<RxBuf<'m>>,
    want: usize,
    max_bufs: usize,
) -> usize {
    let mut room: usize = bufs.iter().map(|b| b.capacity() - HDR_SIZE).sum();
    let mut segs: usize = bufs.iter().map(RxBuf::segments).sum();
    while room < want && bufs.len() < max_bufs {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            break;
        };
        match RxBuf::new(chain, mem) {
            Ok(b) if b.capacity() >= MIN_RX_BUF_SIZE as usize && segs + b.segments() < IOV_MAX => {
                room += b.capacity() - HDR_SIZE;
                segs += b.segments();
                bufs.push(b);
            }
            _ => {
                q.go_to_previous_position();
                break;
            }
        }
    }
    room
}

/// Gives back (un-pops) every buffer of `bufs` after the first `keep`:
/// they were the last chains popped, in order.
fn give_back(q: &mut Queue, bufs: &mut Vec<RxBuf<'_>>, keep: usize) {
    while bufs.len() > keep {
        bufs.pop();
        q.go_to_previous_position();
    }
}

impl Device {
    pub(super) fn update_interest(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let want = ch.wanted_events();
        if want == ch.registered {
            return;
        }
        let Some(sock) = &ch.sock else {
            return;
        };
        let fd = sock.as_raw_fd();
        let ev = EpollEvent::new(EventSet::from_bits_truncate(want), u64::from(id));
        let r = match (ch.registered, want) {
            (0, _) => self.epoll.ctl(ControlOperation::Add, fd, ev),
            (_, 0) => self.epoll.ctl(ControlOperation::Delete, fd, ev),
            _ => self.epoll.ctl(ControlOperation::Modify, fd, ev),
        };
        match r {
            Ok(()) => ch.registered = want,
            Err(e) => {
                log::warn!("channel {id:#x}: epoll: {e}");
                self.close_from_host(id, ErrorCode::NoMem);
            }
        }
    }

    pub(super) fn push_ready(&mut self, id: u32) {
        if let Some(ch) = self.channels.get_mut(&id) {
            if !ch.in_ready && ch.wants_host_input() {
                ch.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Serves one batch of up to 64 host events (never blocks). The set is
    /// level-triggered: events left over keep the epoll fd readable and
    /// come back in the next pass.
    pub(super) fn host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("host epoll: {e}");
                    return;
                }
            }
        };
        for ev in &events[..n] {
            let tok = ev.data();
            let set = EventSet::from_bits_truncate(ev.events());
            if tok == LISTENER_TOKEN {
                self.accept_hosts();
            } else if tok == TIMER_TOKEN {
                self.on_timer();
            } else if tok == WAKE_TOKEN {
                // Consumed; the pass this runs in does the work left over.
                let _ = self.wake.read();
                self.wake_pending = false;
            } else if tok == POLICY_TOKEN {
                let _ = self.policy_changed.read();
                self.on_policy_changed();
            } else if tok >> 32 == discovery::FEED_TAG >> 32 {
                self.feed_event(tok, set);
            } else if tok & HANDSHAKE_BIT != 0 {
                self.handshake_event(tok);
            } else if let Ok(id) = u32::try_from(tok) {
                self.channel_event(id, set);
            }
        }
    }

    pub(super) fn channel_event(&mut self, id: u32, set: EventSet) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            self.host_hung_up(id);
            return;
        }
        if set.contains(EventSet::IN) {
            ch.readable = true;
            self.push_ready(id);
        }
        if set.contains(EventSet::OUT) {
            self.flush_pending(id);
        }
        self.update_interest(id);
    }

    /// The host closed its connection (or it failed). Registered for
    /// hang-up whatever else the channel waits for, so this runs as soon as
    /// it happens, even while input is paused for credit or rx buffers. The
    /// fd leaves epoll for good; guest data still waiting is written if the
    /// socket takes it; then what the host sent before its close is read
    /// and forwarded (credit permitting) and only then the guest gets CLOSE
    /// (`read_host` at EOF).
    pub(super) fn host_hung_up(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        log::debug!("channel {id:#x} ({:?}): host hung up", ch.service);
        unwatch(&self.epoll, ch);
        ch.hup = true;
        ch.readable = true;
        if !ch.pending.is_empty() {
            self.flush_pending(id);
        }
        match self.channels.get(&id) {
            Some(ch) if ch.wants_host_input() => self.push_ready(id),
            Some(_) => self.close_from_host(id, ErrorCode::ConnReset),
            None => {}
        }
    }

    /// Reads one host message of channel `id`, if the guest has credit,
    /// straight into rx buffers: `first` (popped last) and as many more
    /// as the message is expected to need (at most `max_bufs` in all);
    /// what does not fit them is received into the spill buffer and
    /// becomes the `partial` message, fragmented on as before.
    pub(super) fn read_host<'m>(
        &mut self,
        id: u32,
        q: &mut Queue,
        mem: &'m Mem,
        first: RxBuf<'m>,
        max_bufs: usize,
    ) -> Taken<'m> {
        let max = self.params.config.max_msg_size as usize;
        let Some(ch) = self.channels.get_mut(&id) else {
            return Taken::Unused(first);
        };
        ch.in_ready = false;
        if !ch.wants_host_input() || !ch.readable {
            return Taken::Unused(first);
        }
        let mut bufs = vec![first];
        let mut retried = false;
        let got = loop {
            let Some(sock) = ch.sock.as_ref() else {
                break HostRead::Eof;
            };
            let sized = size_host(sock, &ch.send, max);
            add(
                &self.stats.events.passed_fds_closed,
                sock.take_passed_fds_closed(),
            );
            let got = match sized {
                Err(r) => r,
                Ok(known) => {
                    let want = known.unwrap_or(ch.last_len.min(max));
                    let room = if bufs[0].segments() < IOV_MAX {
                        gather(q, mem, &mut bufs, want, max_bufs)
                    } else {
                        // Too many slices for one recvmsg: all of it goes
                        // through the spill buffer (and is copied on).
                        0
                    };
                    let mut guest = GuestBytes::new();
                    if room > 0 {
                        for b in &bufs {
                            guest.append(&b.payload_area());
                        }
                    }
                    let spill = known.unwrap_or(max).saturating_sub(room);
                    if self.scratch.len() < spill {
                        self.scratch.resize(spill, 0);
                    }
                    let (got, closed) =
                        recv_host(sock, &guest, &mut self.scratch[..spill], known, max);
                    add(&self.stats.events.passed_fds_closed, closed);
                    got
                }
            };
            match got {
                HostRead::Failed(e) if e.raw_os_error() == Some(libc::ECONNRESET) && !retried => {
                    // The host closed with guest data unread. The kernel
                    // says so once; the messages it sent before closing
                    // are still queued.
                    let n = ch.host_stopped_reading();
                    log::debug!(
                        "channel {id:#x}: host closed with guest data unread; {n} message(s) dropped"
                    );
                    retried = true;
                }
                other => break other,
            }
        };
        if retried {
            self.queue_credit_update(id, false);
            self.update_interest(id);
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            give_back(q, &mut bufs, 1);
            return Taken::Unused(bufs.swap_remove(0));
        };
        let end = if ch.host_unread {
            ErrorCode::ConnReset
        } else {
            ErrorCode::Ok
        };
        let len = match got {
            HostRead::Msg(n) => n,
            other => {
                give_back(q, &mut bufs, 1);
                let first = bufs.swap_remove(0);
                match other {
                    HostRead::Stall(need) => {
                        ch.stall_need = need;
                        if !ch.stalled {
                            ch.stalled = true;
                            add(&ch.counters.credit_stalls, 1);
                            add(&self.stats.totals(self.pair).credit_stalls, 1);
                            self.queue_ctrl(
                                Header::new(MsgType::CreditRequest, id),
                                Vec::new(),
                                true,
                            );
                        }
                    }
                    HostRead::WouldBlock => {
                        ch.readable = false;
                        if ch.hup {
                            // Hung up and drained without EOF: nothing more comes.
                            self.close_from_host(id, end);
                        } else {
                            self.update_interest(id);
                        }
                    }
                    HostRead::Eof => self.close_from_host(id, end),
                    HostRead::TooBig(len) => {
                        add(&ch.counters.malformed, 1);
                        add(&self.stats.totals(self.pair).malformed, 1);
                        log::warn!(
                            "channel {id:#x} ({:?}): host sent a {len}-byte message, max is {max}; closing",
                            ch.service
                        );
                        self.close_from_host(id, ErrorCode::MsgSize);
                    }
                    HostRead::Failed(e) => {
                        log::debug!("channel {id:#x}: host receive: {e}");
                        self.close_from_host(id, ErrorCode::ConnReset);
                    }
                    HostRead::Msg(_) => {}
                }
                return Taken::Unused(first);
            }
        };
        ch.last_len = len;
        let len32 = len as u32;
        ch.send.on_send(len32);
        let mut hdr = Header::with_payload(MsgType::Data, id, len32);
        hdr.seq = ch.tx_seq;
        ch.tx_seq = ch.tx_seq.wrapping_add(1);
        hdr.buf_alloc = ch.recv.buf_alloc;
        hdr.fwd_cnt = ch.recv.fwd_cnt;
        ch.recv.advertised();
        add(&ch.counters.msgs_to_guest, 1);
        add(&ch.counters.bytes_to_guest, len as u64);
        let t = self.stats.totals(self.pair);
        add(&t.msgs_to_guest, 1);
        add(&t.bytes_to_guest, len as u64);
        // Round-robin: back of the queue while it may have more.
        ch.in_ready = true;
        self.ready.push_back(id);
        // Buffers the message does not reach go back; what went past them
        // (into the spill buffer) follows as fragments.
        let room: usize = if bufs[0].segments() < IOV_MAX {
            bufs.iter().map(|b| b.capacity() - HDR_SIZE).sum()
        } else {
            0
        };
        let mut keep = 0;
        if room > 0 {
            let mut covered = 0;
            while keep < bufs.len() && (keep == 0 || covered < len) {
                covered += bufs[keep].capacity() - HDR_SIZE;
                keep += 1;
            }
        }
        give_back(q, &mut bufs, keep);
        if len > room || keep == 0 {
            let direct = if keep == 0 { 0 } else { room };
            self.partial = Some(Outgoing {
                hdr,
                payload: self.scratch[..len - direct].to_vec(),
                off: 0,
                fill: false,
            });
        }
        Taken::Msg { hdr, len, bufs }
    }
}
