//! Service discovery, host side (SPEC §2.2): the names the guest's
//! listeners serve, as the driver announces them with `LISTEN` and
//! `UNLISTEN` on the tx queue once `KT_F_LISTEN_NOTIFY` is negotiated.
//!
//! The set is bounded (`MAX_GUEST_LISTENERS` names of at most 63 bytes),
//! forgotten whenever the device is deactivated (driver reset, frontend
//! gone) and mirrored into [`Stats`](crate::stats::Stats) for the control
//! socket; host programs read it with `LIST` on `--listen` (`listener.rs`).
//! Nothing here answers the guest: a bad announcement is only counted and
//! logged.

use std::collections::BTreeSet;

use kt_proto::consts::MAX_GUEST_LISTENERS;

use super::*;
use crate::iov::GuestBytes;

/// What one announcement did to the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// `LISTEN` of a new name: recorded.
    Added,
    /// `UNLISTEN` of a recorded name: forgotten.
    Removed,
    /// `LISTEN` of a name already recorded: nothing to do.
    Duplicate,
    /// `UNLISTEN` of a name not recorded: nothing to do.
    Unknown,
    /// `LISTEN` of a new name with the set full: dropped.
    Full,
}

/// The names guest listeners serve, at most `limit` of them.
#[derive(Debug)]
pub(super) struct GuestListeners {
    names: BTreeSet<String>,
    limit: usize,
}

impl Default for GuestListeners {
    fn default() -> Self {
        GuestListeners::with_limit(MAX_GUEST_LISTENERS)
    }
}

impl GuestListeners {
    pub(super) fn with_limit(limit: usize) -> GuestListeners {
        GuestListeners {
            names: BTreeSet::new(),
            limit,
        }
    }

    /// Records `name` (already validated).
    pub(super) fn listen(&mut self, name: &str) -> Change {
        if self.names.contains(name) {
            Change::Duplicate
        } else if self.names.len() >= self.limit {
            Change::Full
        } else {
            self.names.insert(name.to_owned());
            Change::Added
        }
    }

    /// Forgets `name`.
    pub(super) fn unlisten(&mut self, name: &str) -> Change {
        if self.names.remove(name) {
            Change::Removed
        } else {
            Change::Unknown
        }
    }

    pub(super) fn clear(&mut self) {
        self.names.clear();
    }

    /// The names, in byte order.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

impl Device {
    /// A `LISTEN` or `UNLISTEN` from the driver (header checked: channel 0,
    /// 1..=63 payload bytes).
    pub(super) fn on_listen_msg(&mut self, t: MsgType, payload: GuestBytes<'_>) {
        if !self.listen_notify {
            self.malformed(
                None,
                &format_args!("{t:?} without KT_F_LISTEN_NOTIFY negotiated"),
            );
            return;
        }
        let bytes = payload.to_vec();
        let name = match name::validate(&bytes) {
            Ok(n) => n,
            Err(e) => {
                self.malformed(None, &format_args!("{t:?}: {e}"));
                return;
            }
        };
        let change = if t == MsgType::Listen {
            self.guest_listeners.listen(name)
        } else {
            self.guest_listeners.unlisten(name)
        };
        let gid = self.params.config.guest_id;
        match change {
            Change::Added => {
                self.stats.guest_listener_added(name);
                log::debug!("guest {gid}: guest listens on {name:?}");
            }
            Change::Removed => {
                self.stats.guest_listener_removed(name);
                log::debug!("guest {gid}: guest stopped listening on {name:?}");
            }
            Change::Duplicate | Change::Unknown => {
                // Harmless: announcements still in the ring when the
                // device was replaced arrive again after the re-announce.
                add(&self.stats.events.listen_ignored, 1);
                log::debug!("guest {gid}: {t:?} {name:?} ignored ({change:?})");
            }
            Change::Full => {
                add(&self.stats.events.listen_refused, 1);
                if self.listen_limit.allow() {
                    log::warn!(
                        "guest {gid}: LISTEN {name:?} dropped: the device keeps at most \
                         {MAX_GUEST_LISTENERS} guest listener names"
                    );
                }
            }
        }
    }

    /// Forgets every announced name (deactivation).
    pub(super) fn clear_guest_listeners(&mut self) {
        self.guest_listeners.clear();
        self.stats.clear_guest_listeners();
    }

    /// The answer to a host program's `LIST`.
    pub(super) fn list_reply(&self) -> Vec<u8> {
        handshake::list_reply(self.guest_listeners.names())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_is_bounded_and_idempotent() {
        let mut s = GuestListeners::with_limit(2);
        assert_eq!(s.listen("b"), Change::Added);
        assert_eq!(s.listen("b"), Change::Duplicate);
        assert_eq!(s.listen("a"), Change::Added);
        assert_eq!(s.listen("c"), Change::Full);
        assert_eq!(s.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s.unlisten("c"), Change::Unknown);
        assert_eq!(s.unlisten("a"), Change::Removed);
        assert_eq!(s.listen("c"), Change::Added);
        assert_eq!(s.names().collect::<Vec<_>>(), ["b", "c"]);
        s.clear();
        assert_eq!(s.names().count(), 0);
        assert_eq!(GuestListeners::default().limit, MAX_GUEST_LISTENERS);
    }
}
