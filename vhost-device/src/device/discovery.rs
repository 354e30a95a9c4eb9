//! The device's own service `kt.services` (SPEC §3.3): the guest opens it
//! like any channel and reads listings of the names the policy lets it
//! open, a new one whenever a policy reload changes that set.
//!
//! Owns the kept ends ("feeds") of those channels and what is written into
//! them. Nothing here touches rings or credit: the channel's host socket is
//! one end of a `socketpair(AF_UNIX, SOCK_SEQPACKET)` and the device keeps
//! the other, so listings travel the ordinary host → guest path (credit,
//! fragmentation, CLOSE) as if a host service had sent them, and guest DATA
//! (a request for the listing again) arrives on the kept end like at any
//! host service. Writes never block: what the socket does not take waits
//! in the feed (at most the listing being written plus one newer listing)
//! and goes out when the kept end is writable again. A feed is dropped with
//! its channel's host socket (`Device::drop_socket`, `remove_channel`,
//! `deactivate`), so closed channels leave no descriptor behind.

use std::collections::VecDeque;

use kt_proto::consts::{DEVICE_NAME_PREFIX, SERVICES_NAME};
use kt_proto::listing;

use super::*;

/// `kt.services` channels open at once: each holds two descriptors
/// (counted in `fdlimit::OWN_FDS`), so their number is bounded apart from
/// `max_channels`.
pub const MAX_FEEDS: usize = 16;
/// Guest requests read from one feed per host event (the set is level
/// triggered: the rest come back in the next pass).
const REQUESTS_PER_EVENT: usize = 64;
/// epoll token of a feed: this tag | channel id.
pub(super) const FEED_TAG: u64 = 2 << 32;

/// The kept end of one `kt.services` channel.
#[derive(Debug)]
struct Feed {
    sock: SeqPacket,
    /// Messages of the listing being written, not yet taken by the socket.
    out: VecDeque<Vec<u8>>,
    /// A listing is due after `out` (the first one, a guest request, or
    /// a policy change while a listing was still being written).
    again: bool,
    /// epoll events registered for `sock`.
    registered: u32,
}

/// Every feed plus the names the last listings were made of.
#[derive(Debug)]
pub(super) struct Discovery {
    feeds: HashMap<u32, Feed>,
    names: Vec<String>,
}

impl Discovery {
    /// No feeds; listings start from `policy`'s names.
    pub(super) fn new(policy: &crate::policy::Policy) -> Discovery {
        Discovery {
            feeds: HashMap::new(),
            names: policy.names().map(str::to_owned).collect(),
        }
    }

    /// Open `kt.services` channels (feeds), for tests and logs.
    pub(super) fn len(&self) -> usize {
        self.feeds.len()
    }

    /// Whether feed `id` has output waiting for room in its socket (part
    /// of a listing, or a newer listing due), for tests.
    #[cfg(test)]
    pub(super) fn waiting(&self, id: u32) -> Option<bool> {
        self.feeds.get(&id).map(|f| !f.out.is_empty() || f.again)
    }
}

impl Device {
    /// OPEN of a device-reserved name (`kt.`): only `kt.services` exists.
    /// The channel counts against `max_channels` (checked by the caller)
    /// and gets its first listing at once.
    pub(super) fn open_device_service(&mut self, h: Header, name: &str) {
        let id = h.channel;
        debug_assert!(name.starts_with(DEVICE_NAME_PREFIX));
        if name != SERVICES_NAME {
            self.log_refusal(name, id, &"no such device service");
            self.refuse_open(id, ErrorCode::NoEnt);
            return;
        }
        if self.discovery.feeds.len() >= MAX_FEEDS {
            self.log_refusal(
                name,
                id,
                &format_args!("{MAX_FEEDS} {SERVICES_NAME} channels open"),
            );
            self.refuse_open(id, ErrorCode::MFile);
            return;
        }
        let (chan_end, kept) = match new_pair() {
            Ok(p) => p,
            Err(e) => {
                let code = tx::err_code_for_connect(&e);
                self.log_refusal(name, id, &format_args!("socketpair: {e}"));
                self.refuse_open(id, code);
                return;
            }
        };
        let token = FEED_TAG | u64::from(id);
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            kept.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        ) {
            self.log_refusal(name, id, &format_args!("epoll: {e}"));
            self.refuse_open(id, ErrorCode::NoMem);
            return;
        }
        self.discovery.feeds.insert(
            id,
            Feed {
                sock: kept,
                out: VecDeque::new(),
                again: true,
                registered: libc::EPOLLIN as u32,
            },
        );
        self.accept_guest_open(h, name, chan_end);
        // A reload not served yet is served now, so this listing and the
        // other channels' agree.
        self.refresh_names();
        self.write_feed(id);
        // The listing is in the socket: send it in this pass rather than
        // after the next host event.
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.readable = true;
            self.push_ready(id);
        }
    }

    /// The policy changed: a new listing on every feed if its set of names
    /// differs from the last one.
    pub(super) fn discovery_policy_changed(&mut self) {
        if self.refresh_names() {
            log::info!(
                "guest {}: service names changed; new listing on {} {SERVICES_NAME} channel(s)",
                self.params.config.guest_id,
                self.discovery.feeds.len()
            );
        }
    }

    /// Takes the policy's names; if they differ from the last listing's,
    /// every feed gets a new listing. Returns whether they differed.
    fn refresh_names(&mut self) -> bool {
        let policy = self.policy.get();
        if policy
            .names()
            .eq(self.discovery.names.iter().map(String::as_str))
        {
            return false;
        }
        self.discovery.names = policy.names().map(str::to_owned).collect();
        let ids: Vec<u32> = self.discovery.feeds.keys().copied().collect();
        for id in ids {
            if let Some(f) = self.discovery.feeds.get_mut(&id) {
                f.again = true;
            }
            self.write_feed(id);
        }
        true
    }

    /// Writes what feed `id` has to send until the socket is full (then
    /// waits for `EPOLLOUT`). A listing under way is finished before a
    /// newer one starts, so a reader never sees two listings mixed.
    fn write_feed(&mut self, id: u32) {
        let max = self.params.config.max_msg_size;
        let Some(f) = self.discovery.feeds.get_mut(&id) else {
            return;
        };
        let failed = loop {
            if f.out.is_empty() {
                if !f.again {
                    break None;
                }
                f.again = false;
                f.out = listing::encode(&self.discovery.names, max).into();
            }
            let Some(msg) = f.out.front() else {
                break None;
            };
            match f.sock.try_send(msg) {
                Ok(_) => {
                    f.out.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failed {
            // The channel's end is gone or broken: nothing can reach the
            // guest through it any more.
            log::warn!("{SERVICES_NAME} channel {id:#x}: writing the listing: {e}");
            self.close_from_host(id, ErrorCode::ConnReset);
            return;
        }
        let want = if f.out.is_empty() {
            libc::EPOLLIN as u32
        } else {
            (libc::EPOLLIN | libc::EPOLLOUT) as u32
        };
        if want != f.registered {
            let ev = EpollEvent::new(EventSet::from_bits_truncate(want), FEED_TAG | u64::from(id));
            match self
                .epoll
                .ctl(ControlOperation::Modify, f.sock.as_raw_fd(), ev)
            {
                Ok(()) => f.registered = want,
                Err(e) => {
                    log::warn!("{SERVICES_NAME} channel {id:#x}: epoll: {e}");
                    self.close_from_host(id, ErrorCode::NoMem);
                }
            }
        }
    }

    /// An epoll event on the kept end of channel `token & 0xffff_ffff`:
    /// guest requests to read, room to write, or the channel's end gone.
    pub(super) fn feed_event(&mut self, token: u64, set: EventSet) {
        let id = (token & 0xffff_ffff) as u32;
        let Some(f) = self.discovery.feeds.get_mut(&id) else {
            return;
        };
        let mut requests = 0usize;
        let mut gone = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if set.contains(EventSet::IN) {
            while requests < REQUESTS_PER_EVENT {
                // The request's bytes do not matter: receiving into an
                // empty buffer takes (and drops) the whole message.
                match f.sock.recv(&mut []) {
                    Ok(Recv::Msg(_)) => requests += 1,
                    Ok(Recv::Eof) => {
                        gone = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("{SERVICES_NAME} channel {id:#x}: {e}");
                        gone = true;
                        break;
                    }
                }
            }
            add(
                &self.stats.events.passed_fds_closed,
                f.sock.take_passed_fds_closed(),
            );
        }
        if gone {
            // The channel's end is closed (the channel is closing):
            // nothing can be written any more.
            self.forget_feed(id);
            return;
        }
        if requests > 0 {
            // However many requests: one listing (more while one is under
            // way would only repeat it).
            log::debug!("{SERVICES_NAME} channel {id:#x}: {requests} listing request(s)");
            f.again = true;
        }
        self.write_feed(id);
    }

    /// Drops the kept end of channel `id`, if it has one.
    pub(super) fn forget_feed(&mut self, id: u32) {
        if let Some(f) = self.discovery.feeds.remove(&id) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                f.sock.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
    }

    /// Drops every kept end (the transport stopped).
    pub(super) fn forget_feeds(&mut self) {
        let ids: Vec<u32> = self.discovery.feeds.keys().copied().collect();
        for id in ids {
            self.forget_feed(id);
        }
    }
}

/// A connected, non-blocking pair: (the channel's host end, the kept end).
fn new_pair() -> io::Result<(SeqPacket, SeqPacket)> {
    let (a, b) = SeqPacket::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}
