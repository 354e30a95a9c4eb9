//! `kt-vhost-device-bench --pairs N`: aggregate 64 B messages/s each
//! direction through one queue pair (one guest thread, N channels) and
//! through N pairs (N guest threads, one pair and channel each), in
//! alternating rounds, with the process's CPU time per message. Owns the
//! measurement and its output; the daemon and services are `bench.rs`'s.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kt_sim::host::Service;
use kt_sim::{connect_pairs, Driver, DriverOptions};

use super::{percentile, process_cpu_secs, BenchError};

/// Messages one channel sends before the next channel's turn.
const SEND_TURN: u64 = 64;

/// `--pairs`: messages/s of each direction with one pair and with N.
pub struct Multiqueue {
    pairs: u16,
    count: u64,
    /// Per round with one pair: guest->host and host->guest messages/s,
    /// then the process's CPU microseconds per message of each.
    one: Vec<[f64; 4]>,
    /// The same with `pairs` pairs.
    many: Vec<[f64; 4]>,
    /// CPU seconds of each vhost-user worker thread (in start order) over
    /// the one-pair rounds, then over the N-pair rounds.
    workers: [Vec<f64>; 2],
    /// Seconds measured (both directions) over the one-pair rounds, then
    /// over the N-pair rounds.
    timed: [f64; 2],
}

/// CPU seconds (user + system) of this process's `vring_worker` threads
/// (the daemon's, one per queue pair), in thread id order.
fn worker_cpu() -> Vec<f64> {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut found: Vec<(u64, f64)> = dir
        .filter_map(|t| {
            let path = t.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            if comm.trim() != "vring_worker" {
                return None;
            }
            let tid = path.file_name()?.to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // Fields after the parenthesised name: utime and stime are
            // the 12th and 13th.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some((tid, ticks / hz))
        })
        .collect();
    found.sort_by_key(|(tid, _)| *tid);
    found.into_iter().map(|(_, s)| s).collect()
}

/// Sends `per_chan` 64 B messages on each of `chans` new sink channels of
/// `d`, round-robin in turns of up to [`SEND_TURN`] messages (as
/// programs writing streams interleave; one message per turn would break
/// the device's `sendmmsg` bursts and favour the run with one channel per
/// pair).
fn send_sinks(d: &mut Driver, chans: usize, per_chan: u64) -> Result<(), BenchError> {
    let ids = (0..chans)
        .map(|_| d.open("sink")?.map_err(|e| BenchError::Refused("sink", e)))
        .collect::<Result<Vec<u32>, BenchError>>()?;
    let msg = [0x5au8; 64];
    let mut sent = vec![0u64; chans];
    while sent.iter().any(|n| *n < per_chan) {
        let mut any = false;
        for (i, id) in ids.iter().enumerate() {
            let mut turn = 0;
            while turn < SEND_TURN && sent[i] < per_chan && d.try_send(*id, &msg)? {
                sent[i] += 1;
                turn += 1;
                any = true;
            }
        }
        if !any {
            d.poll(Duration::from_millis(5))?;
        }
    }
    d.flush()?;
    Ok(())
}

/// Receives `per_chan` messages on each of `chans` new `src-mq` channels.
fn recv_sources(d: &mut Driver, chans: usize, per_chan: u64) -> Result<(), BenchError> {
    let ids = (0..chans)
        .map(|_| {
            d.open("src-mq")?
                .map_err(|e| BenchError::Refused("src-mq", e))
        })
        .collect::<Result<Vec<u32>, BenchError>>()?;
    let mut got = vec![0u64; chans];
    while got.iter().any(|n| *n < per_chan) {
        let mut any = false;
        for (i, id) in ids.iter().enumerate() {
            while got[i] < per_chan {
                let Some(m) = d.try_recv(*id)? else {
                    break;
                };
                black_box(&m);
                got[i] += 1;
                any = true;
            }
        }
        if !any {
            d.poll(Duration::from_millis(5))?;
        }
    }
    Ok(())
}

/// Runs `work` on every driver, each on its own thread, all started
/// together; returns the seconds until all finished and `done` held.
fn timed_on_threads(
    drivers: Vec<Driver>,
    work: impl Fn(&mut Driver) -> Result<(), BenchError> + Send + Sync + Copy + 'static,
    done: impl Fn() -> bool,
) -> Result<(Vec<Driver>, f64), BenchError> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(drivers.len() + 1));
    let threads: Vec<_> = drivers
        .into_iter()
        .map(|mut d| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                work(&mut d).map(|()| d)
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    let mut back = Vec::new();
    for th in threads {
        let d = th
            .join()
            .map_err(|_| BenchError::Usage("a guest thread panicked".into()))??;
        back.push(d);
    }
    while !done() {
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((back, t.elapsed().as_secs_f64()))
}

/// One pair (one guest thread, `pairs` channels) against `pairs` pairs
/// (one guest thread and one channel each), `count` 64 B messages in all
/// each direction.
pub fn multiqueue(
    sock: &std::path::Path,
    opts: &DriverOptions,
    pairs: u16,
    count: u64,
    rounds: u32,
    sink: &Service,
) -> Result<Multiqueue, BenchError> {
    let mq = DriverOptions {
        features: opts.features | (1 << kt_proto::consts::F_MULTIQUEUE),
        ..opts.clone()
    };
    let chans = usize::from(pairs);
    let per_chan = count / u64::from(pairs);
    let mut rates = [Vec::new(), Vec::new()];
    let mut workers: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut timed = [0.0; 2];
    // The runs alternate (1, N, 1, N, ...) so a load swing on the shared
    // machine hits both sides alike.
    for (slot, n) in (0..rounds).flat_map(|_| [(0, 1), (1, pairs)]) {
        let drivers = connect_pairs(sock, mq.clone(), n)?;
        let cpu_before = worker_cpu();
        if drivers.len() != usize::from(n) {
            return Err(BenchError::Usage(format!(
                "{} of {n} pairs started",
                drivers.len()
            )));
        }
        let per_driver = chans / drivers.len();
        let base = sink.msgs.load(Ordering::SeqCst);
        let total = per_chan * chans as u64;
        let work = move |d: &mut Driver| send_sinks(d, per_driver, per_chan);
        let cpu = process_cpu_secs();
        let (drivers, secs) = timed_on_threads(drivers, work, || {
            sink.msgs.load(Ordering::SeqCst) - base >= total
        })?;
        let g2h = total as f64 / secs;
        timed[slot] += secs;
        let g2h_cpu = (process_cpu_secs() - cpu) * 1e6 / total as f64;
        let work = move |d: &mut Driver| recv_sources(d, per_driver, per_chan);
        let cpu = process_cpu_secs();
        let (drivers, secs) = timed_on_threads(drivers, work, || true)?;
        let h2g_cpu = (process_cpu_secs() - cpu) * 1e6 / total as f64;
        timed[slot] += secs;
        rates[slot].push([g2h, total as f64 / secs, g2h_cpu, h2g_cpu]);
        for d in &drivers {
            if !d.errors.is_empty() {
                return Err(BenchError::Usage(format!(
                    "pair {}: protocol errors: {:?}",
                    d.pair, d.errors
                )));
            }
        }
        // Dropping pair 0's driver disconnects; the next run connects anew.
        let after = worker_cpu();
        if after.len() == cpu_before.len() {
            let w = &mut workers[slot];
            w.resize(after.len(), 0.0);
            for (w, (a, b)) in w.iter_mut().zip(after.iter().zip(&cpu_before)) {
                *w += a - b;
            }
        }
        drop(drivers);
    }
    Ok(Multiqueue {
        pairs,
        count: per_chan * chans as u64,
        many: rates[1].clone(),
        workers,
        timed,
        one: std::mem::take(&mut rates[0]),
    })
}

/// The median and the best of `v`.
fn median_best(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let best = v.last().copied().unwrap_or(0.0);
    (percentile(&v, 0.5), best)
}

pub fn print_multiqueue(m: &Multiqueue) {
    println!(
        "multiqueue, 64 B messages, {} per run each direction over {} channel(s), {} round(s) \
         of 1 pair (one guest thread) and {} pairs (one guest thread each), alternating",
        m.count,
        m.pairs,
        m.one.len(),
        m.pairs
    );
    println!(
        "{:<12} {:>24} {:>24} {:>16} {:>16}",
        "direction",
        "1 pair msgs/s med|best",
        format!("{} pairs msgs/s med|best", m.pairs),
        "ratio med|best",
        "CPU us/msg 1|N"
    );
    for (i, dir) in ["guest->host", "host->guest"].into_iter().enumerate() {
        let (o_med, o_best) = median_best(m.one.iter().map(|r| r[i]).collect());
        let (n_med, n_best) = median_best(m.many.iter().map(|r| r[i]).collect());
        let (o_cpu, _) = median_best(m.one.iter().map(|r| r[i + 2]).collect());
        let (n_cpu, _) = median_best(m.many.iter().map(|r| r[i + 2]).collect());
        println!(
            "{:<12} {:>11.0} | {:>10.0} {:>11.0} | {:>10.0} {:>7.2}x | {:.2}x {:>8.2} | {:.2}",
            dir,
            o_med,
            o_best,
            n_med,
            n_best,
            n_med / o_med.max(1e-9),
            n_best / o_best.max(1e-9),
            o_cpu,
            n_cpu
        );
    }
    let ratios: Vec<String> = m
        .one
        .iter()
        .zip(&m.many)
        .map(|(o, n)| format!("{:.2}/{:.2}", n[0] / o[0].max(1e-9), n[1] / o[1].max(1e-9)))
        .collect();
    println!("per round (guest->host/host->guest): {}", ratios.join("  "));
    let busy = |slot: usize| -> String {
        let t = m.timed[slot].max(1e-9);
        let w: Vec<String> = m.workers[slot]
            .iter()
            .map(|s| format!("{:.0}%", 100.0 * s / t))
            .collect();
        w.join(" ")
    };
    println!(
        "daemon worker threads busy (CPU time / measured time): 1 pair: {}; {} pairs: {}",
        busy(0),
        m.pairs,
        busy(1)
    );
}
