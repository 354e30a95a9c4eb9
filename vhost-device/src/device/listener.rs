//! Host programs arriving on `--listen`: the listening socket (with a
//! spare descriptor for when the process runs out of them), the
//! `CONNECT` handshakes and `LIST` requests (answered with the guest's
//! listener names, `listening.rs`), and the deadlines (handshake and open timeouts,
//! accept pauses) that run off the device's timerfd.

use super::*;

/// What accepting with the spare descriptor gave.
pub(super) enum SpareAccept {
    /// A connection was accepted, refused with `ERR 24` and closed.
    Refused,
    /// Nothing was waiting.
    Empty,
    /// It did not help; pause the listener.
    Failed,
}

pub(super) fn open_spare() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
}

pub(super) fn new_timer() -> io::Result<TimerFd> {
    let t = TimerFd::new()?;
    let fd = t.as_raw_fd();
    // SAFETY: F_GETFL on the timer fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // Non-blocking: a timer re-armed between epoll_wait and its read must
    // not block the worker.
    // SAFETY: F_SETFL on the timer fd we own, with flags from F_GETFL.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

impl Device {
    /// Adds or removes the listener and waiting handshakes from epoll: host
    /// connections are only served while a driver is live.
    pub(super) fn arm_listener(&mut self, on: bool) {
        if self.listener_armed == on {
            return;
        }
        self.listener_armed = on;
        let op = || {
            if on {
                ControlOperation::Add
            } else {
                ControlOperation::Delete
            }
        };
        self.poll_listener(on && self.listener_paused_until.is_none());
        for (tok, h) in self.handshakes.iter_mut() {
            if h.registered != on {
                let _ = self.epoll.ctl(
                    op(),
                    h.sock.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, *tok),
                );
                h.registered = on;
            }
        }
    }

    /// Adds or removes the listener fd itself from epoll.
    pub(super) fn poll_listener(&mut self, on: bool) {
        if self.listener_polled == on {
            return;
        }
        let Some(l) = &self.listener else {
            return;
        };
        let op = if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        match self.epoll.ctl(
            op,
            l.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        ) {
            Ok(()) => self.listener_polled = on,
            Err(e) => log::warn!("listening socket epoll: {e}"),
        }
    }

    /// Takes the listener out of epoll for [`ACCEPT_PAUSE`] after an accept
    /// error that would otherwise leave it readable with nothing accepted.
    pub(super) fn pause_listener(&mut self, e: &io::Error) {
        if self.fd_limit_log.allow() {
            log::warn!(
                "listening socket accept: {e}; not accepting for {} ms",
                ACCEPT_PAUSE.as_millis()
            );
        }
        self.listener_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        self.poll_listener(false);
    }

    /// Whether a handshake deadline entry still applies.
    pub(super) fn handshake_due(&self, (at, tok): (Instant, u64)) -> bool {
        self.handshakes.get(&tok).is_some_and(|h| h.deadline == at)
    }

    /// Whether an open deadline entry still applies: the channel is still
    /// waiting for the guest's answer with its host connection.
    pub(super) fn open_due(&self, (at, id): (Instant, u32)) -> bool {
        self.channels.get(&id).is_some_and(|c| {
            c.state == State::Opening && c.open_deadline == Some(at) && c.sock.is_some()
        })
    }

    /// The earliest deadline the timer must wake the device for (entries
    /// that no longer apply are dropped from the queue fronts first).
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(e) = self.handshake_deadlines.front().copied() {
            if self.handshake_due(e) {
                break;
            }
            self.handshake_deadlines.pop_front();
        }
        while let Some(e) = self.open_deadlines.front().copied() {
            if self.open_due(e) {
                break;
            }
            self.open_deadlines.pop_front();
        }
        [
            self.listener_paused_until,
            self.handshake_deadlines.front().map(|e| e.0),
            self.open_deadlines.front().map(|e| e.0),
            self.share_wait,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Closes host connections whose `CONNECT` line did not come in time.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        while let Some(e) = self.handshake_deadlines.front().copied() {
            if e.0 > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            if !self.handshake_due(e) {
                continue;
            }
            if let Some(h) = self.drop_handshake(e.1) {
                add(&self.stats.events.handshake_timeouts, 1);
                log::debug!("host connection sent no CONNECT line in time; closed");
                let _ = h.sock.send(&handshake::err_msg(
                    ErrorCode::TimedOut,
                    "no CONNECT line in time",
                ));
            }
        }
    }

    /// Fails host-opened channels the guest did not answer in time: the
    /// host program gets `ERR 110` and its connection is closed. The
    /// channel stays until the guest answers (SPEC §3.1: the id is the
    /// guest's to answer); a late `OPEN_OK` is answered with `CLOSE`.
    pub(super) fn expire_opens(&mut self, now: Instant) {
        while let Some(e) = self.open_deadlines.front().copied() {
            if e.0 > now {
                break;
            }
            self.open_deadlines.pop_front();
            if !self.open_due(e) {
                continue;
            }
            let id = e.1;
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            ch.open_deadline = None;
            add(&self.stats.events.open_timeouts, 1);
            log::info!(
                "guest did not answer host connection to {:?} ({id:#x}) in time",
                ch.service
            );
            if let Some(s) = &ch.sock {
                let _ = s.send(&handshake::err_msg(
                    ErrorCode::TimedOut,
                    "guest did not answer in time",
                ));
            }
            self.drop_socket(id);
        }
    }

    /// Arms the timer for [`Device::next_deadline`] (or disarms it).
    pub(super) fn rearm_timer(&mut self) {
        let next = self.next_deadline();
        if next == self.timer_at {
            return;
        }
        let r = match next {
            Some(t) => {
                // A zero duration would disarm the timer.
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.reset(d, None)
            }
            None => self.timer.clear(),
        };
        match r {
            Ok(()) => self.timer_at = next,
            Err(e) => log::warn!("timer: {e}"),
        }
    }

    /// The timer fired: act on every deadline that has passed.
    pub(super) fn on_timer(&mut self) {
        // Consume the expiration (non-blocking; nothing to read is fine).
        let _ = self.timer.wait();
        self.timer_at = None;
        let now = Instant::now();
        if self.listener_paused_until.is_some_and(|t| t <= now) {
            self.listener_paused_until = None;
            self.poll_listener(self.listener_armed);
        }
        self.expire_handshakes(now);
        self.expire_opens(now);
        // This pass's rx part serves the channels that waited for their
        // share (it sets the deadline again if they still must wait).
        if self.share_wait.is_some_and(|t| t <= now) {
            self.share_wait = None;
        }
    }

    pub(super) fn accept_hosts(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(l) = &self.listener else {
                return;
            };
            let sock = match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match e.raw_os_error() {
                    // Interrupted, or this one connection failed: the next
                    // one may be fine.
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                    Some(libc::EMFILE | libc::ENFILE) => match self.accept_with_spare() {
                        SpareAccept::Refused => continue,
                        SpareAccept::Empty => return,
                        SpareAccept::Failed => {
                            self.pause_listener(&e);
                            return;
                        }
                    },
                    _ => {
                        self.pause_listener(&e);
                        return;
                    }
                },
            };
            add(&self.stats.events.host_connects, 1);
            if self.handshakes.len() >= MAX_HANDSHAKES {
                let _ = sock.send(&handshake::err_msg(
                    ErrorCode::MFile,
                    "too many pending connections",
                ));
                continue;
            }
            self.next_handshake = self.next_handshake.wrapping_add(1) & 0xffff_ffff;
            let tok = HANDSHAKE_BIT | self.next_handshake;
            let deadline = Instant::now() + self.params.handshake_timeout;
            let registered = self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, tok),
                )
                .is_ok();
            self.handshakes.insert(
                tok,
                Handshake {
                    sock,
                    registered,
                    deadline,
                },
            );
            self.handshake_deadlines.push_back((deadline, tok));
        }
    }

    /// Out of descriptors with a connection queued: frees the spare
    /// descriptor, accepts the connection with it, answers
    /// `ERR 24 too many open files` and closes it, then takes the spare
    /// back. The listener is thus drained instead of staying readable (a
    /// level-triggered listener would otherwise wake the worker forever).
    pub(super) fn accept_with_spare(&mut self) -> SpareAccept {
        let spare = match self.spare_fd.take() {
            Some(fd) => Some(fd),
            // Lost earlier: maybe a descriptor is free again now.
            None => open_spare().ok(),
        };
        let Some(spare) = spare else {
            return SpareAccept::Failed;
        };
        drop(spare);
        let r = match self.listener.as_ref().map(SeqListener::accept) {
            Some(Ok(sock)) => {
                add(&self.stats.events.fd_limit_refusals, 1);
                add(&self.stats.events.host_connects, 1);
                let _ = sock.send(&handshake::err_msg(
                    ErrorCode::MFile,
                    "too many open files in kt-vhost-device",
                ));
                drop(sock);
                if self.fd_limit_log.allow() {
                    log::warn!("out of file descriptors: refused a host connection (ERR 24)");
                }
                SpareAccept::Refused
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => SpareAccept::Empty,
            Some(Err(_)) | None => SpareAccept::Failed,
        };
        match open_spare() {
            Ok(fd) => self.spare_fd = Some(fd),
            Err(e) => {
                if self.fd_limit_log.allow() {
                    log::warn!("cannot reopen the spare descriptor: {e}");
                }
            }
        }
        r
    }

    pub(super) fn handshake_event(&mut self, tok: u64) {
        let Some(h) = self.handshakes.get(&tok) else {
            return;
        };
        let mut buf = [0u8; HANDSHAKE_MAX];
        let r = h.sock.recv(&mut buf);
        add(
            &self.stats.events.passed_fds_closed,
            h.sock.take_passed_fds_closed(),
        );
        let n = match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Ok(Recv::Msg(n)) => n,
            Ok(Recv::Eof) | Err(_) => {
                self.drop_handshake(tok);
                return;
            }
        };
        let Some(h) = self.drop_handshake(tok) else {
            return;
        };
        let reply_err = |code: ErrorCode, text: &str| {
            let _ = h.sock.send(&handshake::err_msg(code, text));
        };
        if n > HANDSHAKE_MAX {
            reply_err(ErrorCode::Inval, "handshake line too long");
            return;
        }
        let name = match handshake::parse_request(&buf[..n]) {
            Ok(handshake::Request::Connect(name)) => name.to_owned(),
            Ok(handshake::Request::List) => {
                // One answer, then the connection closes (h is dropped).
                let reply = self.list_reply();
                let _ = h.sock.set_send_buffer(2 * reply.len() + 4096);
                if let Err(e) = h.sock.send(&reply) {
                    log::debug!("LIST answer not sent: {e}");
                }
                return;
            }
            Err(e) => {
                reply_err(ErrorCode::Inval, &e.to_string());
                return;
            }
        };
        if !self.active || !self.guest_listen {
            log::info!("host connection to guest service {name:?} refused: guest does not accept host connections");
            reply_err(
                ErrorCode::ConnRefused,
                "guest does not accept host connections",
            );
            return;
        }
        // The slot is given back when the channel leaves the table.
        if !self.budget.try_take() {
            reply_err(ErrorCode::MFile, "too many channels");
            return;
        }
        let id = self.alloc_device_id();
        let counters = self
            .stats
            .open_channel_on(self.pair, id, &name, Opener::Host);
        let _ = h
            .sock
            .set_send_buffer(2 * (self.params.config.max_msg_size as usize + 4096));
        let mut ch = Channel::new(
            &name,
            Opener::Host,
            State::Opening,
            h.sock,
            self.buffer.clone(),
            0,
            counters,
        );
        let deadline = Instant::now() + self.params.open_timeout;
        ch.open_deadline = Some(deadline);
        self.open_deadlines.push_back((deadline, id));
        self.channels.insert(id, ch);
        let payload = name.into_bytes();
        let hdr = Header::with_payload(MsgType::Open, id, payload.len() as u32);
        self.queue_ctrl(hdr, payload, true);
    }

    pub(super) fn drop_handshake(&mut self, tok: u64) -> Option<Handshake> {
        let h = self.handshakes.remove(&tok)?;
        if h.registered {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.sock.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
        Some(h)
    }
}
