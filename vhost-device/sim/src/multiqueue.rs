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
/// pair 0's queues only; [`reattach_pairs`] resumes them all.
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

/// The backend was restarted while this guest kept running (a VMM with
/// `reconnect`): connects to the new daemon at `path` and resumes every
/// pair's queues where their used rings are, as [`Driver::reattach`] does
/// for one pair. `drivers` are [`connect_pairs`]' drivers, pair 0 first.
/// The device answers with `RESET` on pair 0's event queue; only pair 0's
/// driver sees it (forgetting the other pairs' channels is the caller's).
pub fn reattach_pairs(drivers: &mut [Driver], path: &Path) -> io::Result<()> {
    for d in drivers.iter_mut() {
        d.process()?;
        for r in &mut d.rings {
            r.new_eventfds()?;
        }
    }
    let Some(first) = drivers.first() else {
        return Ok(());
    };
    let pairs = u16::try_from(drivers.len()).map_err(io::Error::other)?;
    let (mem, opts) = (first.mem.clone(), first.opts.clone());
    let mut fe = frontend::connect_queues(path, opts.timeout, num_vqs(pairs))?;
    fe.set_owner().map_err(io::Error::other)?;
    let (acked, config) = frontend::negotiate(&mut fe, &mem, opts.features)?;
    for d in drivers.iter_mut() {
        let k = d.pair;
        let queues = if k == 0 {
            vec![0, 1, 2]
        } else {
            vec![usize::from(vq_rx(k)), usize::from(vq_tx(k))]
        };
        for (r, q) in d.rings.iter_mut().zip(queues) {
            let base = r.last_used();
            frontend::start_queue(&mut fe, &mem, q, r, base, acked)?;
        }
    }
    let mut fe = Some(fe);
    for d in drivers.iter_mut() {
        let conn = if d.pair == 0 { fe.take() } else { None };
        d.started(acked, config, conn);
        d.rings[0].force_kick()?;
        if d.pair == 0 {
            d.rings[2].force_kick()?;
        }
    }
    Ok(())
}
