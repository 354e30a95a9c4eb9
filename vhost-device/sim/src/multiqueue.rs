//! A simulated guest with several queue pairs (SPEC §1.4): one memfd
//! region holding every pair's rings and buffers, one vhost-user
//! connection, and one [`Driver`] per pair, each free to run on its own
//! thread. The drivers share nothing but guest memory; a channel opened
//! through pair k's driver lives on pair k. Owns the start-up only; what
//! a pair does afterwards is `driver.rs`.

use std::io;
use std::path::Path;

use kt_proto::consts::{num_vqs, vq_rx, vq_tx, F_MULTIQUEUE, MAX_QUEUE_PAIRS};
use vhost::VhostBackend;

use crate::driver::{Driver, DriverOptions};
use crate::frontend;
use crate::memory::memfd_memory;

/// Connects to the daemon at `path` and starts up to `pairs` queue pairs:
/// as many as the device allows when `opts.features` has
/// `KT_F_MULTIQUEUE` and the device offers it (`max_queue_pairs`), else
/// pair 0 alone, exactly as [`Driver::connect`]. Returns one driver per
/// pair started, pair 0 first; dropping pair 0's driver disconnects.
/// `reboot`, `reattach` and `shutdown` of pair 0's driver restart or stop
/// pair 0's queues only; the multi-pair tests do not use them.
pub fn connect_pairs(path: &Path, opts: DriverOptions, pairs: u16) -> io::Result<Vec<Driver>> {
    let pairs = pairs.clamp(1, MAX_QUEUE_PAIRS);
    let mut layouts = Vec::new();
    let mut end = 0;
    for _ in 0..pairs {
        let l = Driver::layout_at(end, &opts);
        end = l.end();
        layouts.push(l);
    }
    let mem = memfd_memory(end)?;
    let mut fe = frontend::connect_queues(path, opts.timeout, num_vqs(pairs))?;
    fe.set_owner().map_err(io::Error::other)?;
    let (acked, config) = frontend::negotiate(&mut fe, &mem, opts.features)?;
    let n = if acked & (1 << F_MULTIQUEUE) != 0 {
        pairs.min(config.max_queue_pairs).max(1)
    } else {
        1
    };
    let mut drivers = Vec::new();
    for (k, layout) in (0..n).zip(layouts) {
        let mut d = Driver::build(mem.clone(), layout, opts.clone(), k)?;
        if k == 0 {
            for (q, r) in d.rings.iter_mut().enumerate() {
                frontend::start_queue(&mut fe, &mem, q, r, 0, acked)?;
            }
        } else {
            let [rx, tx, _] = &mut d.rings;
            frontend::start_queue(&mut fe, &mem, usize::from(vq_rx(k)), rx, 0, acked)?;
            frontend::start_queue(&mut fe, &mem, usize::from(vq_tx(k)), tx, 0, acked)?;
        }
        drivers.push(d);
    }
    let mut fe = Some(fe);
    for d in &mut drivers {
        let conn = if d.pair == 0 { fe.take() } else { None };
        d.started(acked, config, conn);
        d.post_all()?;
    }
    Ok(drivers)
}
