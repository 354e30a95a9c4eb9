//! Device and per-channel counters, shared between the worker thread (which
//! bumps them) and the control socket (which reads them), plus the snapshot
//! formats the `stats` command prints: a table, JSON, or the Prometheus text
//! exposition format (0.0.4) for node-exporter's textfile collector.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use kt_prom::Writer;

use crate::budget::VmBuffer;
use serde::{Deserialize, Serialize};

mod prometheus;

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

impl CountersSnapshot {
    /// The sum of two snapshots.
    pub fn plus(&self, o: &CountersSnapshot) -> CountersSnapshot {
        CountersSnapshot {
            msgs_to_host: self.msgs_to_host + o.msgs_to_host,
            bytes_to_host: self.bytes_to_host + o.bytes_to_host,
            msgs_to_guest: self.msgs_to_guest + o.msgs_to_guest,
            bytes_to_guest: self.bytes_to_guest + o.bytes_to_guest,
            credit_stalls: self.credit_stalls + o.credit_stalls,
            malformed: self.malformed + o.malformed,
        }
    }
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
    /// Descriptors host peers passed (`SCM_RIGHTS`), closed on receipt.
    pub passed_fds_closed: AtomicU64,
    /// Host connections refused with `ERR 24` because the daemon was out
    /// of file descriptors.
    pub fd_limit_refusals: AtomicU64,
    /// Host connections closed with `ERR 110`: no `CONNECT` line in time.
    pub handshake_timeouts: AtomicU64,
    /// Host connections failed with `ERR 110`: the guest did not answer
    /// the `OPEN` in time.
    pub open_timeouts: AtomicU64,
    /// Guest `LISTEN`s of a name already recorded and `UNLISTEN`s of one
    /// not recorded (harmless around a reset).
    pub listen_ignored: AtomicU64,
    /// Guest `LISTEN`s dropped because the device kept the most names it
    /// keeps (`MAX_GUEST_LISTENERS`).
    pub listen_refused: AtomicU64,
}

/// One pair's totals on cache lines of their own (no false sharing
/// between the pairs' worker threads).
#[derive(Debug, Default)]
#[repr(align(128))]
struct PairCounters(Counters);

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
    pair: u16,
    service: String,
    opener: Opener,
    counters: Arc<Counters>,
    /// A slot held for an OPEN still being connected
    /// ([`Stats::reserve_channel`]), not yet a channel.
    reserved: bool,
}

/// Everything the control socket reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sums over all channels, plus malformed input for unknown channels;
    /// with totals per pair ([`Stats::with_pairs`]) only what no pair
    /// counted (count through [`Stats::totals`]; the snapshot adds up).
    pub device: Counters,
    /// Device-level events.
    pub events: DeviceEvents,
    /// Whether a driver is currently live on the queues.
    pub active: AtomicBool,
    vm: String,
    guest_id: u32,
    channels: Mutex<BTreeMap<u32, ChannelEntry>>,
    guest_listeners: Mutex<BTreeSet<String>>,
    /// Totals per queue pair (closed channels included); one entry per
    /// pair the device serves ([`Stats::with_pairs`]), empty for one pair.
    /// With them, the pairs' traffic is counted here only and `device`
    /// keeps the rest: each worker thread writes its own cache lines.
    pairs: Vec<PairCounters>,
    /// The VM's budget on held guest data ([`Stats::with_buffer`]).
    buffer: Option<Arc<VmBuffer>>,
}

/// One channel in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    /// Channel id.
    pub id: u32,
    /// The queue pair it lives on (SPEC §1.4; 0 without multiqueue).
    #[serde(default)]
    pub pair: u16,
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
    /// The VM's name (`--vm-name`, or its section of the config file).
    #[serde(default)]
    pub vm: String,
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
    /// Descriptors host peers passed, closed on receipt.
    #[serde(default)]
    pub passed_fds_closed: u64,
    /// Host connections refused because the daemon was out of descriptors.
    #[serde(default)]
    pub fd_limit_refusals: u64,
    /// Host connections that sent no `CONNECT` line in time.
    #[serde(default)]
    pub handshake_timeouts: u64,
    /// Host connections the guest did not answer in time.
    #[serde(default)]
    pub open_timeouts: u64,
    /// Names the guest's listeners serve, as the driver announced them
    /// (`KT_F_LISTEN_NOTIFY`), in byte order.
    #[serde(default)]
    pub guest_listeners: Vec<String>,
    /// Guest `LISTEN`/`UNLISTEN`s that changed nothing (duplicates).
    #[serde(default)]
    pub listen_ignored: u64,
    /// Guest `LISTEN`s dropped over the device's bound on names.
    #[serde(default)]
    pub listen_refused: u64,
    /// Device totals.
    pub device: CountersSnapshot,
    /// Open channels.
    pub channels: Vec<ChannelSnapshot>,
    /// Totals per queue pair, closed channels included (one entry per
    /// pair with `--queue-pairs` above 1, else none).
    #[serde(default)]
    pub pairs: Vec<CountersSnapshot>,
    /// Credit bytes of guest data the device holds for host sockets that
    /// have not taken it yet (all channels, all pairs).
    #[serde(default)]
    pub buffered: u64,
    /// Sum of the windows granted to the guest's channels.
    #[serde(default)]
    pub buffer_granted: u64,
    /// The VM's budget on them (`--vm-buffer`; 0: none).
    #[serde(default)]
    pub vm_buffer: u64,
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

impl Stats {
    /// Empty counters for guest `guest_id`, in a VM named `vm<guest_id>`.
    pub fn new(guest_id: u32) -> Stats {
        Stats::for_vm(&format!("vm{guest_id}"), guest_id)
    }

    /// Empty counters for the VM `vm` with guest id `guest_id`.
    pub fn for_vm(vm: &str, guest_id: u32) -> Stats {
        Stats {
            vm: vm.to_owned(),
            guest_id,
            ..Stats::default()
        }
    }

    /// These counters for a device of `pairs` queue pairs: with more than
    /// one, totals are kept per pair too ([`Stats::pair`]).
    pub fn with_pairs(mut self, pairs: u16) -> Stats {
        self.pairs = if pairs > 1 {
            (0..pairs).map(|_| PairCounters::default()).collect()
        } else {
            Vec::new()
        };
        self
    }

    /// These counters for a VM whose engines share the budget `buffer`.
    pub fn with_buffer(mut self, buffer: Arc<VmBuffer>) -> Stats {
        self.buffer = Some(buffer);
        self
    }

    /// The VM's budget; without one ([`Stats::with_buffer`]), a new
    /// unlimited one that gives every channel `channel_buffer` (messages
    /// cost up to `min_window`).
    pub fn buffer(&self, channel_buffer: u32, min_window: u32) -> Arc<VmBuffer> {
        self.buffer
            .clone()
            .unwrap_or_else(|| Arc::new(VmBuffer::unlimited(channel_buffer, min_window)))
    }

    /// The totals of queue pair `pair`, if kept.
    pub fn pair(&self, pair: u16) -> Option<&Counters> {
        self.pairs.get(usize::from(pair)).map(|p| &p.0)
    }

    /// Where the device-level counts of pair `pair` go: its own totals
    /// when kept, else `device`. The snapshot's `device` is the sum.
    pub fn totals(&self, pair: u16) -> &Counters {
        self.pair(pair).unwrap_or(&self.device)
    }

    /// Registers a channel of pair 0 and returns its counters.
    pub fn open_channel(&self, id: u32, service: &str, opener: Opener) -> Arc<Counters> {
        self.open_channel_on(0, id, service, opener)
    }

    /// Registers a channel of queue pair `pair` and returns its counters.
    pub fn open_channel_on(
        &self,
        pair: u16,
        id: u32,
        service: &str,
        opener: Opener,
    ) -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        let entry = ChannelEntry {
            pair,
            service: service.to_owned(),
            opener,
            counters: counters.clone(),
            reserved: false,
        };
        if let Ok(mut m) = self.channels.lock() {
            m.insert(id, entry);
        }
        counters
    }

    /// Holds a place for channel `id` of `service` on `pair` while its
    /// OPEN is served, unless `limit` channels of `service` (reserved or
    /// open, on any pair) exist already: the check and the hold are one
    /// step, so engines of several pairs cannot both take the last one.
    /// [`Stats::open_channel_on`] turns it into the channel;
    /// [`Stats::drop_reservation`] gives it up.
    pub fn reserve_channel(&self, pair: u16, id: u32, service: &str, limit: u32) -> bool {
        let Ok(mut m) = self.channels.lock() else {
            return false;
        };
        let n = m.values().filter(|e| e.service == service).count();
        if n >= limit as usize {
            return false;
        }
        m.insert(
            id,
            ChannelEntry {
                pair,
                service: service.to_owned(),
                opener: Opener::Guest,
                counters: Arc::new(Counters::default()),
                reserved: true,
            },
        );
        true
    }

    /// Gives up the place [`Stats::reserve_channel`] held for `id` on
    /// `pair` (the OPEN was refused); a channel's entry is left alone.
    pub fn drop_reservation(&self, pair: u16, id: u32) {
        if let Ok(mut m) = self.channels.lock() {
            if m.get(&id).is_some_and(|e| e.reserved && e.pair == pair) {
                m.remove(&id);
            }
        }
    }

    /// Forgets a closed channel.
    pub fn close_channel(&self, id: u32) {
        if let Ok(mut m) = self.channels.lock() {
            m.remove(&id);
        }
    }

    /// Channels of `service` open on any pair.
    pub fn open_channels_of(&self, service: &str) -> usize {
        self.channels
            .lock()
            .map(|m| m.values().filter(|e| e.service == service).count())
            .unwrap_or(0)
    }

    /// Forgets every channel.
    pub fn clear_channels(&self) {
        if let Ok(mut m) = self.channels.lock() {
            m.clear();
        }
    }

    /// The guest announced a listener on `name`.
    pub fn guest_listener_added(&self, name: &str) {
        if let Ok(mut s) = self.guest_listeners.lock() {
            s.insert(name.to_owned());
        }
    }

    /// The guest's listener on `name` went away.
    pub fn guest_listener_removed(&self, name: &str) {
        if let Ok(mut s) = self.guest_listeners.lock() {
            s.remove(name);
        }
    }

    /// Forgets every guest listener (the device was deactivated).
    pub fn clear_guest_listeners(&self) {
        if let Ok(mut s) = self.guest_listeners.lock() {
            s.clear();
        }
    }

    /// A consistent-enough copy for printing.
    pub fn snapshot(&self) -> StatsSnapshot {
        let channels = self
            .channels
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| !e.reserved)
                    .map(|(id, e)| ChannelSnapshot {
                        id: *id,
                        pair: e.pair,
                        service: e.service.clone(),
                        opener: e.opener,
                        counters: e.counters.snapshot(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        StatsSnapshot {
            vm: self.vm.clone(),
            guest_id: self.guest_id,
            active: self.active.load(Relaxed),
            frontends: self.events.frontends.load(Relaxed),
            opened: self.events.opened.load(Relaxed),
            open_refused: self.events.open_refused.load(Relaxed),
            resets: self.events.resets.load(Relaxed),
            host_connects: self.events.host_connects.load(Relaxed),
            passed_fds_closed: self.events.passed_fds_closed.load(Relaxed),
            fd_limit_refusals: self.events.fd_limit_refusals.load(Relaxed),
            handshake_timeouts: self.events.handshake_timeouts.load(Relaxed),
            open_timeouts: self.events.open_timeouts.load(Relaxed),
            guest_listeners: self
                .guest_listeners
                .lock()
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            listen_ignored: self.events.listen_ignored.load(Relaxed),
            listen_refused: self.events.listen_refused.load(Relaxed),
            device: self
                .pairs
                .iter()
                .fold(self.device.snapshot(), |sum, p| sum.plus(&p.0.snapshot())),
            channels,
            pairs: self.pairs.iter().map(|p| p.0.snapshot()).collect(),
            buffered: self.buffer.as_ref().map_or(0, |b| b.held()),
            buffer_granted: self.buffer.as_ref().map_or(0, |b| b.granted()),
            vm_buffer: self.buffer.as_ref().and_then(|b| b.limit()).unwrap_or(0),
        }
    }
}

impl StatsSnapshot {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "vm {}  guest {}  {}  frontends {}  opened {}  refused {}  resets {}  host connects {}",
            self.vm,
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
            "host peers: passed fds closed {}  fd-limit refusals {}  handshake timeouts {}  \
             open timeouts {}",
            self.passed_fds_closed,
            self.fd_limit_refusals,
            self.handshake_timeouts,
            self.open_timeouts
        );
        let _ = writeln!(
            s,
            "guest data held: {} bytes  windows granted {}  vm-buffer {}",
            self.buffered,
            self.buffer_granted,
            if self.vm_buffer == 0 {
                "-".to_owned()
            } else {
                self.vm_buffer.to_string()
            }
        );
        let _ = writeln!(
            s,
            "guest listeners ({}): {}",
            self.guest_listeners.len(),
            if self.guest_listeners.is_empty() {
                "-".to_owned()
            } else {
                self.guest_listeners.join(" ")
            }
        );
        let _ = writeln!(
            s,
            "{:<12} {:>4} {:<20} {:>6} {:>12} {:>14} {:>12} {:>14} {:>8} {:>9}",
            "channel",
            "pair",
            "service",
            "opener",
            "msgs->host",
            "bytes->host",
            "msgs->guest",
            "bytes->guest",
            "stalls",
            "malformed"
        );
        let row =
            |s: &mut String, id: &str, pair: &str, svc: &str, op: &str, c: &CountersSnapshot| {
                let _ = writeln!(
                    s,
                    "{:<12} {:>4} {:<20} {:>6} {:>12} {:>14} {:>12} {:>14} {:>8} {:>9}",
                    id,
                    pair,
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
            let pair = c.pair.to_string();
            row(
                &mut s,
                &format!("{:#x}", c.id),
                &pair,
                &c.service,
                op,
                &c.counters,
            );
        }
        row(&mut s, "total", "", "", "", &self.device);
        let open = self.per_pair();
        for (p, c) in self.pairs.iter().enumerate() {
            let n = u16::try_from(p)
                .ok()
                .and_then(|p| open.get(&p))
                .map_or(0, |(n, _)| *n);
            let label = format!("pair {p}");
            row(&mut s, &label, "", &format!("{n} open"), "", c);
        }
        s
    }

    /// The open channels by queue pair: how many, and their counters
    /// summed (channels already closed are not in it).
    pub fn per_pair(&self) -> BTreeMap<u16, (usize, CountersSnapshot)> {
        let mut m: BTreeMap<u16, (usize, CountersSnapshot)> = BTreeMap::new();
        for c in &self.channels {
            let (n, sum) = m.entry(c.pair).or_default();
            *n += 1;
            *sum = sum.plus(&c.counters);
        }
        m
    }
}

/// What the control socket's `stats` answers: every VM the daemon serves,
/// in the order of its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonSnapshot {
    /// One entry per VM.
    pub vms: Vec<StatsSnapshot>,
}

impl DaemonSnapshot {
    /// The VM named `name`.
    pub fn vm(&self, name: &str) -> Option<&StatsSnapshot> {
        self.vms.iter().find(|v| v.vm == name)
    }

    /// Every VM's table, an empty line between them.
    pub fn table(&self) -> String {
        if self.vms.is_empty() {
            return "no VMs configured\n".to_owned();
        }
        let tables: Vec<String> = self.vms.iter().map(StatsSnapshot::table).collect();
        tables.join("\n")
    }

    /// Every VM's counters in one exposition (each family once).
    pub fn prometheus(&self) -> String {
        let mut w = Writer::default();
        for v in &self.vms {
            v.write_prometheus(&mut w);
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests;
