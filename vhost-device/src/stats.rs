//! Device and per-channel counters, shared between the worker thread (which
//! bumps them) and the control socket (which reads them), plus the snapshot
//! format the `stats` command prints as a table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Traffic counters kept per channel and summed per device.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages guest → host.
    pub msgs_to_host: AtomicU64,
    /// Payload bytes guest → host.
    pub bytes_to_host: AtomicU64,
    /// Messages host → guest.
    pub msgs_to_guest: AtomicU64,
    /// Payload bytes host → guest.
    pub bytes_to_guest: AtomicU64,
    /// Times host input waited because the guest granted too little credit.
    pub credit_stalls: AtomicU64,
    /// Malformed input seen (from the guest, or oversized host messages).
    pub malformed: AtomicU64,
}

/// A plain copy of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    /// Messages guest → host.
    pub msgs_to_host: u64,
    /// Payload bytes guest → host.
    pub bytes_to_host: u64,
    /// Messages host → guest.
    pub msgs_to_guest: u64,
    /// Payload bytes host → guest.
    pub bytes_to_guest: u64,
    /// Credit stalls.
    pub credit_stalls: u64,
    /// Malformed input.
    pub malformed: u64,
}

impl Counters {
    fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            msgs_to_host: self.msgs_to_host.load(Relaxed),
            bytes_to_host: self.bytes_to_host.load(Relaxed),
            msgs_to_guest: self.msgs_to_guest.load(Relaxed),
            bytes_to_guest: self.bytes_to_guest.load(Relaxed),
            credit_stalls: self.credit_stalls.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
        }
    }
}

/// Device-level events that have no per-channel meaning.
#[derive(Debug, Default)]
pub struct DeviceEvents {
    /// Frontend connections accepted.
    pub frontends: AtomicU64,
    /// Channels opened (both directions).
    pub opened: AtomicU64,
    /// OPENs refused (policy, limits, host service down).
    pub open_refused: AtomicU64,
    /// Transport resets sent.
    pub resets: AtomicU64,
    /// Host connections on the listening socket.
    pub host_connects: AtomicU64,
}

/// Which side opened a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Opener {
    /// The guest opened it (guest → host service).
    Guest,
    /// A host program opened it through the listening socket.
    Host,
}

#[derive(Debug)]
struct ChannelEntry {
    service: String,
    opener: Opener,
    counters: Arc<Counters>,
}

/// Everything the control socket reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sums over all channels, plus malformed input for unknown channels.
    pub device: Counters,
    /// Device-level events.
    pub events: DeviceEvents,
    /// Whether a driver is currently live on the queues.
    pub active: AtomicBool,
    guest_id: u32,
    channels: Mutex<BTreeMap<u32, ChannelEntry>>,
}

/// One channel in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    /// Channel id.
    pub id: u32,
    /// Service name.
    pub service: String,
    /// Which side opened it.
    pub opener: Opener,
    /// Its counters.
    #[serde(flatten)]
    pub counters: CountersSnapshot,
}

/// What `kt-vhost-device stats --json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Host-assigned guest id.
    pub guest_id: u32,
    /// Whether a driver is live.
    pub active: bool,
    /// Frontend connections so far.
    pub frontends: u64,
    /// Channels opened so far.
    pub opened: u64,
    /// OPENs refused so far.
    pub open_refused: u64,
    /// Transport resets sent.
    pub resets: u64,
    /// Host connections on the listening socket.
    pub host_connects: u64,
    /// Device totals.
    pub device: CountersSnapshot,
    /// Open channels.
    pub channels: Vec<ChannelSnapshot>,
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

impl Stats {
    /// Empty counters for guest `guest_id`.
    pub fn new(guest_id: u32) -> Stats {
        Stats {
            guest_id,
            ..Stats::default()
        }
    }

    /// Registers a channel and returns its counters.
    pub fn open_channel(&self, id: u32, service: &str, opener: Opener) -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        let entry = ChannelEntry {
            service: service.to_owned(),
            opener,
            counters: counters.clone(),
        };
        if let Ok(mut m) = self.channels.lock() {
            m.insert(id, entry);
        }
        counters
    }

    /// Forgets a closed channel.
    pub fn close_channel(&self, id: u32) {
        if let Ok(mut m) = self.channels.lock() {
            m.remove(&id);
        }
    }

    /// Forgets every channel.
    pub fn clear_channels(&self) {
        if let Ok(mut m) = self.channels.lock() {
            m.clear();
        }
    }

    /// A consistent-enough copy for printing.
    pub fn snapshot(&self) -> StatsSnapshot {
        let channels = self
            .channels
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(id, e)| ChannelSnapshot {
                        id: *id,
                        service: e.service.clone(),
                        opener: e.opener,
                        counters: e.counters.snapshot(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        StatsSnapshot {
            guest_id: self.guest_id,
            active: self.active.load(Relaxed),
            frontends: self.events.frontends.load(Relaxed),
            opened: self.events.opened.load(Relaxed),
            open_refused: self.events.open_refused.load(Relaxed),
            resets: self.events.resets.load(Relaxed),
            host_connects: self.events.host_connects.load(Relaxed),
            device: self.device.snapshot(),
            channels,
        }
    }
}

impl StatsSnapshot {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "guest {}  {}  frontends {}  opened {}  refused {}  resets {}  host connects {}",
            self.guest_id,
            if self.active { "active" } else { "inactive" },
            self.frontends,
            self.opened,
            self.open_refused,
            self.resets,
            self.host_connects
        );
        let _ = writeln!(
            s,
            "{:<12} {:<20} {:>6} {:>12} {:>14} {:>12} {:>14} {:>8} {:>9}",
            "channel",
            "service",
            "opener",
            "msgs->host",
            "bytes->host",
            "msgs->guest",
            "bytes->guest",
            "stalls",
            "malformed"
        );
        let row = |s: &mut String, id: &str, svc: &str, op: &str, c: &CountersSnapshot| {
            let _ = writeln!(
                s,
                "{:<12} {:<20} {:>6} {:>12} {:>14} {:>12} {:>14} {:>8} {:>9}",
                id,
                svc,
                op,
                c.msgs_to_host,
                c.bytes_to_host,
                c.msgs_to_guest,
                c.bytes_to_guest,
                c.credit_stalls,
                c.malformed
            );
        };
        for c in &self.channels {
            let op = match c.opener {
                Opener::Guest => "guest",
                Opener::Host => "host",
            };
            row(&mut s, &format!("{:#x}", c.id), &c.service, op, &c.counters);
        }
        row(&mut s, "total", "", "", &self.device);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_table() {
        let st = Stats::new(7);
        let c = st.open_channel(3, "echo", Opener::Guest);
        add(&c.msgs_to_host, 2);
        add(&st.device.msgs_to_host, 2);
        let s = st.snapshot();
        assert_eq!(s.channels.len(), 1);
        assert_eq!(s.channels[0].counters.msgs_to_host, 2);
        let t = s.table();
        assert!(t.contains("echo"), "{t}");
        assert!(t.lines().last().unwrap().starts_with("total"), "{t}");
        let json = serde_json::to_string(&s).unwrap();
        let back: StatsSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        st.close_channel(3);
        assert!(st.snapshot().channels.is_empty());
    }
}
