//! The vhost-user frontend half of the simulation: connects to the daemon's
//! socket and performs what a VMM does to start (and stop) the device —
//! features, protocol features, config space, memory table, and per queue
//! size, addresses, base, call/kick eventfds and enable. With several
//! queue pairs the caller starts each pair's queues ([`start_queue`]).

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use kt_proto::consts::CONFIG_SIZE;
use kt_proto::DeviceConfig;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::ring::Ring;

fn vh(e: vhost::Error) -> io::Error {
    io::Error::other(e)
}

/// A started device connection.
pub struct Started {
    /// The frontend (dropping it disconnects).
    pub frontend: Frontend,
    /// Features acked.
    pub acked: u64,
    /// Config space as read.
    pub config: DeviceConfig,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("acked", &self.acked)
            .field("config", &self.config)
            .finish()
    }
}

/// Connects to `path`, retrying until `timeout` (the daemon may still be
/// starting).
pub fn connect(path: &Path, timeout: Duration) -> io::Result<Frontend> {
    connect_queues(path, timeout, kt_proto::consts::NUM_VQS)
}

/// [`connect`] for a frontend that may start `queues` queues.
pub fn connect_queues(path: &Path, timeout: Duration, queues: usize) -> io::Result<Frontend> {
    let start = Instant::now();
    loop {
        match Frontend::connect(path, queues as u64) {
            Ok(f) => return Ok(f),
            Err(e) if start.elapsed() < timeout => {
                log::trace!("connect {}: {e}; retrying", path.display());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(vh(e)),
        }
    }
}

fn host_addr(mem: &GuestMemoryMmap, gpa: u64) -> io::Result<u64> {
    mem.get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(io::Error::other)
}

/// Negotiates and starts all three queues from the avail indices `bases`.
pub fn start(
    mut fe: Frontend,
    mem: &GuestMemoryMmap,
    rings: &mut [Ring; 3],
    wanted: u64,
    bases: [u16; 3],
) -> io::Result<Started> {
    fe.set_owner().map_err(vh)?;
    let (acked, config) = start_queues(&mut fe, mem, rings, wanted, bases)?;
    Ok(Started {
        frontend: fe,
        acked,
        config,
    })
}

/// Feature negotiation, config, memory table and queue start on an owned
/// connection (also what a VMM repeats after a guest reboot).
pub fn start_queues(
    fe: &mut Frontend,
    mem: &GuestMemoryMmap,
    rings: &mut [Ring; 3],
    wanted: u64,
    bases: [u16; 3],
) -> io::Result<(u64, DeviceConfig)> {
    let (acked, config) = negotiate(fe, mem, wanted)?;
    for (q, r) in rings.iter_mut().enumerate() {
        start_queue(fe, mem, q, r, bases[q], acked)?;
    }
    Ok((acked, config))
}

/// Features (`wanted` as far as offered), protocol features, config space
/// (all 20 bytes) and the memory table; returns the acked features and the
/// config. The queues are started next ([`start_queue`]).
pub fn negotiate(
    fe: &mut Frontend,
    mem: &GuestMemoryMmap,
    wanted: u64,
) -> io::Result<(u64, DeviceConfig)> {
    let offered = fe.get_features().map_err(vh)?;
    let pf_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let acked = offered & (wanted | pf_bit);
    fe.set_features(acked).map_err(vh)?;
    if acked & pf_bit != 0 {
        let pf = fe.get_protocol_features().map_err(vh)?;
        // REPLY_ACK: queue enables are acked (`start_queue`).
        let want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        fe.set_protocol_features(pf & want).map_err(vh)?;
    }
    let (_, payload) = fe
        .get_config(
            0,
            CONFIG_SIZE as u32,
            VhostUserConfigFlags::empty(),
            &[0u8; CONFIG_SIZE],
        )
        .map_err(vh)?;
    let config = DeviceConfig::decode(&payload).map_err(io::Error::other)?;
    let region = mem
        .iter()
        .next()
        .ok_or_else(|| io::Error::other("no memory region"))?;
    let info = VhostUserMemoryRegionInfo::from_guest_region(region).map_err(vh)?;
    fe.set_mem_table(&[info]).map_err(vh)?;
    Ok((acked, config))
}

/// Starts queue `q` on ring `r` from avail index `base`: size, addresses,
/// base, call and kick eventfds, and enable (with protocol features).
pub fn start_queue(
    fe: &mut Frontend,
    mem: &GuestMemoryMmap,
    q: usize,
    r: &mut Ring,
    base: u16,
    acked: u64,
) -> io::Result<()> {
    r.event_idx = acked & (1 << kt_proto::consts::VIRTIO_RING_F_EVENT_IDX) != 0;
    fe.set_vring_num(q, r.size).map_err(vh)?;
    let addr = VringConfigData {
        queue_max_size: r.size,
        queue_size: r.size,
        flags: 0,
        desc_table_addr: host_addr(mem, r.desc)?,
        used_ring_addr: host_addr(mem, r.used)?,
        avail_ring_addr: host_addr(mem, r.avail)?,
        log_addr: None,
    };
    fe.set_vring_addr(q, &addr).map_err(vh)?;
    fe.set_vring_base(q, base).map_err(vh)?;
    fe.set_vring_call(q, &r.call).map_err(vh)?;
    fe.set_vring_kick(q, &r.kick).map_err(vh)?;
    if acked & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        // Acked, as QEMU asks: the backend has the queue enabled before the
        // first kick, so its first pass sees every queue ready (unacked,
        // a kick could be served before the enable and the device would
        // not count as active until a later pass).
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let r = fe.set_vring_enable(q, true);
        fe.set_hdr_flags(VhostUserHeaderFlag::empty());
        r.map_err(vh)?;
    }
    Ok(())
}

/// Stops the queues the way a VMM does before reset or shutdown
/// (GET_VRING_BASE per queue); returns the bases.
pub fn stop(fe: &mut Frontend) -> io::Result<[u32; 3]> {
    let mut b = [0u32; 3];
    for (q, v) in b.iter_mut().enumerate() {
        *v = fe.get_vring_base(q).map_err(vh)?;
    }
    Ok(b)
}
