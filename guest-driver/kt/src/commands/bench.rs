//! `kt bench`: ping-pong latency (p50/p99), throughput and message rate,
//! printed as a table. Against an echo peer (`--direction echo`) the
//! streamed messages come back, so streamed numbers are per direction with
//! both directions loaded. Against the bench peer (`kt serve --mode bench`,
//! protocol in [`crate::benchpeer`]) each stream goes one way only and is
//! timed until the receiver has its last message; the CPU this machine
//! (`/proc/stat`) and the peer's processes used is reported per message
//! and per MB; `--batch N` moves the message-rate phases' messages N per
//! system call (`KT_IOC_SENDV` / `KT_IOC_RECVV`). `--timeout` arms a watchdog: no progress for that long ends
//! the run with a "stalled" line saying how far it got.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::benchpeer::{self, PeerResult, Request};
use crate::channel::{Channel, Kind, NbStats, Recv};
use crate::cli::{BenchArgs, BenchDirection};
use crate::error::{Error, Result};
use crate::open::{open_channel, Ctx};
use crate::{out, signal};

/// Percentile `p` (0..=100) of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[idx]
}

fn expect_echo(ch: &Channel, buf: &mut [u8], nb: &mut NbStats, size: usize) -> Result<()> {
    match ch.recv(buf, nb)? {
        Recv::Msg(n) if n == size => Ok(()),
        Recv::Msg(n) => Err(Error::Bench(format!(
            "got a {n}-byte reply to a {size}-byte message — is the peer an echo service?"
        ))),
        Recv::Eof => Err(Error::PeerClosed {
            label: ch.label().to_string(),
        }),
    }
}

fn check_size(ch: &Channel, size: usize) -> Result<()> {
    if size > ch.max_msg_size() {
        return Err(Error::MsgSize {
            len: size,
            limit: ch.max_msg_size(),
        });
    }
    Ok(())
}

/// Round trips of `size`-byte messages; returns the sorted samples.
fn ping_pong(
    ch: &Channel,
    size: usize,
    iterations: u64,
    peer: bool,
    watch: &Watch,
) -> Result<Vec<Duration>> {
    let msg = vec![0xa5u8; size];
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    let warmup = (iterations / 10).min(100);
    watch.phase(format!("ping-pong, {size} B"), warmup + iterations);
    if peer {
        let req = Request::Echo {
            count: warmup + iterations,
        };
        ch.send(&req.encode(), &mut nb)?;
    }
    let mut samples = Vec::with_capacity(iterations as usize);
    for i in 0..warmup + iterations {
        let t = Instant::now();
        ch.send(&msg, &mut nb)?;
        expect_echo(ch, &mut buf, &mut nb, size)?;
        watch.tick();
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// Streams `count` messages of `size` bytes from a writer thread while this
/// thread reads the echoes; returns the time until the last echo.
fn stream(ch: &Channel, size: usize, count: u64, watch: &Watch) -> Result<Duration> {
    watch.phase(format!("echoed stream, {size} B messages"), count);
    let writer = ch.try_clone()?;
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    let start = Instant::now();
    let handle = signal::spawn_worker("kt-bench-tx", move || -> Result<()> {
        let msg = vec![0x5au8; size];
        let mut nb = NbStats::default();
        for _ in 0..count {
            writer.send(&msg, &mut nb)?;
        }
        Ok(())
    })
    .map_err(|e| Error::io("spawn bench writer", e))?;
    for _ in 0..count {
        expect_echo(ch, &mut buf, &mut nb, size)?;
        watch.tick();
    }
    let elapsed = start.elapsed();
    match handle.join() {
        Ok(r) => r?,
        Err(_) => return Err(Error::Bench("writer thread panicked".into())),
    }
    Ok(elapsed)
}

/// Progress of the run, for the `--timeout` watchdog.
#[derive(Debug, Default)]
struct Watch {
    /// Messages moved so far (all phases).
    ticks: AtomicU64,
    /// The current phase: name, its message count, its start, `ticks` then.
    phase: Mutex<Option<(String, u64, Instant, u64)>>,
}

impl Watch {
    fn phase(&self, name: String, total: u64) {
        let base = self.ticks.load(Ordering::Relaxed);
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((name, total, Instant::now(), base));
    }

    fn tick(&self) {
        self.ticks(1);
    }

    fn ticks(&self, n: u64) {
        self.ticks.fetch_add(n, Ordering::Relaxed);
    }

    /// Watches from a thread: no progress for `limit` ends the process
    /// with one "stalled" line on stdout and stderr (a stuck send or
    /// receive cannot be interrupted otherwise).
    fn arm(self: &Arc<Self>, limit: Duration) -> Result<()> {
        let w = Arc::clone(self);
        signal::spawn_worker("kt-bench-watch", move || {
            let (mut last, mut since) = (w.ticks.load(Ordering::Relaxed), Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(100).min(limit));
                let now = w.ticks.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, Instant::now());
                    continue;
                }
                if since.elapsed() < limit {
                    continue;
                }
                let phase = w.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let line = match phase {
                    Some((name, total, start, base)) => format!(
                        "stalled after {:.1} s: {name}: {} of {total} messages, then no progress for {:.0} s",
                        since.saturating_duration_since(start).as_secs_f64(),
                        last - base,
                        limit.as_secs_f64()
                    ),
                    None => format!("stalled: no progress for {:.0} s", limit.as_secs_f64()),
                };
                println!("{line}");
                eprintln!("kt: bench: {line}");
                std::process::exit(1);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::io("spawn bench watchdog", e))
    }
}

/// Which way a one-way phase goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    ToHost,
    FromHost,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::ToHost => "to host",
            Way::FromHost => "from host",
        }
    }
}

/// One one-way phase's figures.
struct OneWay {
    elapsed: Duration,
    msgs: u64,
    bytes: u64,
    local_cpu_us: u64,
    peer: PeerResult,
}

fn expect_result(ch: &Channel, buf: &mut [u8], nb: &mut NbStats) -> Result<PeerResult> {
    match ch.recv(buf, nb)? {
        Recv::Msg(n) => PeerResult::parse(&buf[..n]).map_err(Error::Bench),
        Recv::Eof => Err(Error::PeerClosed {
            label: ch.label().to_string(),
        }),
    }
}

fn wrong_size(n: usize, size: usize) -> Error {
    Error::Bench(format!(
        "got a {n}-byte message from the bench peer, expected {size}"
    ))
}

/// `count` messages of `size` bytes from the peer, `batch` (> 1) per
/// `KT_IOC_RECVV`, each checked to be one message of `size` bytes.
fn recv_batched(
    ch: &Channel,
    size: usize,
    count: u64,
    batch: usize,
    nb: &mut NbStats,
    watch: &Watch,
) -> Result<()> {
    // One byte more per slot than expected: a longer message is caught as
    // too long, not as truncated.
    let slot = size + 1;
    let mut area = vec![0u8; slot * batch];
    let mut lens = Vec::with_capacity(batch);
    let mut left = count;
    while left > 0 {
        let want = batch.min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut bufs: Vec<&mut [u8]> = area.chunks_mut(slot).take(want).collect();
        let n = match ch.recv_batch(&mut bufs, &mut lens, nb) {
            Ok(0) => {
                return Err(Error::PeerClosed {
                    label: ch.label().to_string(),
                })
            }
            Ok(n) => n,
            Err(Error::Truncated { len, .. }) => return Err(wrong_size(len, size)),
            Err(e) => return Err(e),
        };
        if let Some(&bad) = lens.iter().find(|&&l| l != size) {
            return Err(wrong_size(bad, size));
        }
        left -= n as u64;
        watch.ticks(n as u64);
    }
    Ok(())
}

/// `count` messages of `size` bytes one way, against the bench peer;
/// timed from the request to the receiver's last message. `batch` > 1
/// moves the guest's messages that many per system call.
fn one_way(
    ch: &Channel,
    way: Way,
    size: usize,
    count: u64,
    batch: usize,
    watch: &Watch,
) -> Result<OneWay> {
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    watch.phase(format!("{}, {size} B messages", way.label()), count);
    let cpu0 = benchpeer::system_cpu_us()?;
    let start = Instant::now();
    let (elapsed, peer) = match way {
        Way::ToHost => {
            ch.send(&Request::Sink { count, size }.encode(), &mut nb)?;
            let msg = vec![0x5au8; size];
            if batch > 1 {
                let msgs = vec![&msg[..]; batch];
                let mut left = count;
                while left > 0 {
                    let n = batch.min(usize::try_from(left).unwrap_or(usize::MAX));
                    ch.send_batch(&msgs[..n], &mut nb)?;
                    left -= n as u64;
                    watch.ticks(n as u64);
                }
            } else {
                for _ in 0..count {
                    ch.send(&msg, &mut nb)?;
                    watch.tick();
                }
            }
            let peer = expect_result(ch, &mut buf, &mut nb)?;
            (start.elapsed(), peer)
        }
        Way::FromHost if batch > 1 => {
            ch.send(&Request::Source { count, size }.encode(), &mut nb)?;
            recv_batched(ch, size, count, batch, &mut nb, watch)?;
            let elapsed = start.elapsed();
            ch.send(&benchpeer::done_message(), &mut nb)?;
            (elapsed, expect_result(ch, &mut buf, &mut nb)?)
        }
        Way::FromHost => {
            ch.send(&Request::Source { count, size }.encode(), &mut nb)?;
            for _ in 0..count {
                match ch.recv(&mut buf, &mut nb)? {
                    Recv::Msg(n) if n == size => {}
                    Recv::Msg(n) => return Err(wrong_size(n, size)),
                    Recv::Eof => {
                        return Err(Error::PeerClosed {
                            label: ch.label().to_string(),
                        })
                    }
                }
                watch.tick();
            }
            let elapsed = start.elapsed();
            ch.send(&benchpeer::done_message(), &mut nb)?;
            (elapsed, expect_result(ch, &mut buf, &mut nb)?)
        }
    };
    let local_cpu_us = benchpeer::system_cpu_us()?.saturating_sub(cpu0);
    if peer.msgs != count {
        return Err(Error::Bench(format!(
            "the bench peer moved {} messages, expected {count}",
            peer.msgs
        )));
    }
    Ok(OneWay {
        elapsed,
        msgs: count,
        bytes: count * size as u64,
        local_cpu_us,
        peer,
    })
}

fn micros(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn mb_s(bytes: u64, d: Duration) -> String {
    format!("{:.1} MB/s", bytes as f64 / d.as_secs_f64() / 1e6)
}

/// The rows of one one-way phase.
fn one_way_rows(way: Way, size: usize, r: &OneWay, rows: &mut Vec<Vec<String>>) {
    let what = format!("{} ({size} B messages)", way.label());
    let per_msg = |us: u64| format!("{:.2} us", us as f64 / r.msgs as f64);
    let per_mb = |us: u64| format!("{:.2} ms", us as f64 / 1e3 / (r.bytes as f64 / 1e6));
    rows.push(vec![
        format!("message rate, {what}"),
        format!("{:.0} msgs/s", r.msgs as f64 / r.elapsed.as_secs_f64()),
    ]);
    rows.push(vec![
        format!("throughput, {what}"),
        mb_s(r.bytes, r.elapsed),
    ]);
    rows.push(vec![
        format!("guest CPU per message, {what}"),
        per_msg(r.local_cpu_us),
    ]);
    rows.push(vec![
        format!("host CPU per message, {what}"),
        per_msg(r.peer.cpu_us),
    ]);
    rows.push(vec![
        format!("guest CPU per MB, {what}"),
        per_mb(r.local_cpu_us),
    ]);
    rows.push(vec![
        format!("host CPU per MB, {what}"),
        per_mb(r.peer.cpu_us),
    ]);
}

/// `kt bench`.
pub fn bench(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    if a.fairness > 0 {
        return fairness(ctx, a);
    }
    let mut ch = open_channel(ctx, &a.channel)?;
    // The watchdog, not a per-receive poll, enforces --timeout.
    ch.set_timeout(None);
    let watch = Arc::new(Watch::default());
    if let Some(limit) = crate::open::timeout(a.channel.timeout)? {
        watch.arm(limit)?;
    }
    let bulk_sizes = if a.bulk_size.is_empty() {
        vec![ch.max_msg_size().min(65536)]
    } else {
        a.bulk_size.clone()
    };
    for &s in [a.size, a.small_size].iter().chain(&bulk_sizes) {
        check_size(&ch, s)?;
    }
    if bulk_sizes.contains(&0) {
        return Err(Error::Usage("--bulk-size must be at least 1".into()));
    }
    if a.iterations == 0 && a.bulk_mb == 0 && a.small_count == 0 {
        return Err(Error::Usage(
            "nothing to measure: --iterations, --bulk-mb and --small-count are all 0".into(),
        ));
    }
    let bulk_count = |size: usize| (a.bulk_mb * 1_000_000).div_ceil(size as u64).max(1);
    let peer = a.direction != BenchDirection::Echo;
    let batch = usize::from(a.batch);
    if batch > 1 && (!peer || ch.kind() != Kind::Guest) {
        return Err(Error::Usage(
            "--batch needs a guest kerntransport channel to the bench peer (--direction to-host|from-host|both)".into(),
        ));
    }
    let mut rows = Vec::new();
    // Progress on stderr: a slow (emulated) guest takes a while per phase.
    if a.iterations > 0 {
        eprintln!("kt bench: ping-pong, {} x {} B", a.iterations, a.size);
        let lat = ping_pong(&ch, a.size, a.iterations, peer, &watch)?;
        rows.push(vec![
            format!("ping-pong latency p50 ({} B)", a.size),
            micros(percentile(&lat, 50)),
        ]);
        rows.push(vec![
            format!("ping-pong latency p99 ({} B)", a.size),
            micros(percentile(&lat, 99)),
        ]);
    }
    let ways: &[Way] = match a.direction {
        BenchDirection::Echo => &[],
        BenchDirection::ToHost => &[Way::ToHost],
        BenchDirection::FromHost => &[Way::FromHost],
        BenchDirection::Both => &[Way::ToHost, Way::FromHost],
    };
    if !peer {
        if a.bulk_mb > 0 {
            for &size in &bulk_sizes {
                let n = bulk_count(size);
                eprintln!("kt bench: streaming {n} x {size} B (echoed)");
                let t = stream(&ch, size, n, &watch)?;
                rows.push(vec![
                    format!("throughput, one way ({size} B messages)"),
                    mb_s(n * size as u64, t),
                ]);
            }
        }
        if a.small_count > 0 {
            eprintln!(
                "kt bench: streaming {} x {} B (echoed)",
                a.small_count, a.small_size
            );
            let t = stream(&ch, a.small_size, a.small_count, &watch)?;
            rows.push(vec![
                format!("message rate ({} B messages)", a.small_size),
                format!("{:.0} msgs/s", a.small_count as f64 / t.as_secs_f64()),
            ]);
        }
    }
    // (size, count, messages per system call): --batch is for the
    // message-rate phases only.
    let mut phases: Vec<(usize, u64, usize)> = Vec::new();
    if a.small_count > 0 {
        phases.push((a.small_size, a.small_count, batch));
    }
    if a.bulk_mb > 0 {
        phases.extend(bulk_sizes.iter().map(|&s| (s, bulk_count(s), 1)));
    }
    for &(size, count, per_call) in &phases {
        for &way in ways {
            eprintln!("kt bench: {count} x {size} B, {}", way.label());
            let r = one_way(&ch, way, size, count, per_call, &watch)?;
            one_way_rows(way, size, &r, &mut rows);
        }
    }
    let mode = if peer { "bench peer" } else { "echo peer" };
    out::line(format_args!(
        "kt bench: {} ({mode}), {} round trips, {} x {} B{}, {} MB of {:?} B messages",
        ch.label(),
        a.iterations,
        a.small_count,
        a.small_size,
        if batch > 1 {
            format!(" ({batch} per call)")
        } else {
            String::new()
        },
        a.bulk_mb,
        bulk_sizes
    ))?;
    out::line(format_args!(
        "{}",
        out::table(&["metric", "value"], &rows).trim_end()
    ))
}

/// Round trips of `size` bytes over `chans` in turn (one at a time);
/// returns the sorted samples after a 10 % warm-up (at most 100).
fn round_robin_trips(
    chans: &[Channel],
    size: usize,
    iterations: u64,
    watch: &Watch,
) -> Result<Vec<Duration>> {
    let msg = vec![0xa5u8; size];
    let mut buf = chans.first().map(Channel::recv_buffer).unwrap_or_default();
    let mut nb = NbStats::default();
    let warmup = (iterations / 10).min(100);
    let mut samples = Vec::with_capacity(iterations as usize);
    for (i, ch) in (0..warmup + iterations).zip(chans.iter().cycle()) {
        let t = Instant::now();
        ch.send(&msg, &mut nb)?;
        expect_echo(ch, &mut buf, &mut nb, size)?;
        watch.tick();
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    samples.sort();
    Ok(samples)
}

/// The flood of `kt bench --fairness`: a writer thread sends `size`-byte
/// messages on `ch` until `stop`, then one message of `size + 1` bytes
/// that ends it; a reader thread reads the echoes until that one.
/// Returns both threads, the reader's joining with the echoes it read.
type FloodThreads = (
    std::thread::JoinHandle<Result<()>>,
    std::thread::JoinHandle<Result<u64>>,
);

fn start_flood(ch: Channel, size: usize, stop: Arc<AtomicBool>) -> Result<FloodThreads> {
    let reader = ch.try_clone()?;
    let writer = std::thread::spawn(move || -> Result<()> {
        let msg = vec![0x5au8; size + 1];
        let mut nb = NbStats::default();
        while !stop.load(Ordering::Relaxed) {
            ch.send(&msg[..size], &mut nb)?;
        }
        ch.send(&msg, &mut nb)
    });
    let reader = std::thread::spawn(move || -> Result<u64> {
        let mut buf = reader.recv_buffer();
        let mut nb = NbStats::default();
        let mut n = 0u64;
        loop {
            match reader.recv(&mut buf, &mut nb)? {
                Recv::Msg(len) if len == size + 1 => return Ok(n),
                Recv::Msg(len) if len == size => n += 1,
                Recv::Msg(len) => return Err(wrong_size(len, size)),
                Recv::Eof => {
                    return Err(Error::PeerClosed {
                        label: reader.label().to_string(),
                    })
                }
            }
        }
    });
    Ok((writer, reader))
}

/// The flood of `kt bench --fairness N --flood-from NAME`: a reader thread
/// takes whatever the host source sends on `ch` until `stop`; joins with
/// the messages it read.
fn start_source_flood(ch: Channel, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || -> Result<u64> {
        let mut buf = ch.recv_buffer();
        let mut nb = NbStats::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match ch.recv(&mut buf, &mut nb)? {
                Recv::Msg(_) => n += 1,
                Recv::Eof => {
                    return Err(Error::PeerClosed {
                        label: ch.label().to_string(),
                    })
                }
            }
        }
        Ok(n)
    })
}

/// The flood of `kt bench --fairness N --flood-to NAME`: a writer thread
/// sends `size`-byte messages to the host sink on `ch` until `stop`; joins
/// with the messages it wrote.
fn start_sink_flood(
    ch: Channel,
    size: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || -> Result<u64> {
        let msg = vec![0x5au8; size];
        let mut nb = NbStats::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            ch.send(&msg, &mut nb)?;
            n += 1;
        }
        Ok(n)
    })
}

/// `kt bench --fairness N`: the quiet channels' round trips idle and next
/// to one flooding channel, all to the same echo peer.
fn fairness(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    let n = a.fairness;
    if n < 2 {
        return Err(Error::Usage(
            "--fairness needs at least 2 channels (one floods)".into(),
        ));
    }
    if a.direction != BenchDirection::Echo {
        return Err(Error::Usage(
            "--fairness measures against an echo peer (--direction echo)".into(),
        ));
    }
    if a.iterations == 0 || a.size == 0 || a.small_size == 0 {
        return Err(Error::Usage(
            "--fairness needs --iterations, --size and --small-size of at least 1".into(),
        ));
    }
    let watch = Arc::new(Watch::default());
    if let Some(limit) = crate::open::timeout(a.channel.timeout)? {
        watch.arm(limit)?;
    }
    eprintln!("kt bench: opening {n} channels");
    watch.phase(format!("opening {n} channels"), u64::from(n));
    let mut quiet = Vec::with_capacity(n as usize - 1);
    for _ in 1..n {
        let mut ch = open_channel(ctx, &a.channel)?;
        ch.set_timeout(None);
        check_size(&ch, a.size)?;
        quiet.push(ch);
        watch.tick();
    }
    let flood_args = match a.flood_from.as_ref().or(a.flood_to.as_ref()) {
        None => a.channel.clone(),
        Some(from) => {
            let mut c = a.channel.clone();
            if c.direct.is_some() {
                c.direct = Some(from.into());
            } else {
                c.name = Some(from.clone());
            }
            c
        }
    };
    let mut flood = open_channel(ctx, &flood_args)?;
    flood.set_timeout(None);
    // The echoed flood's end marker is one byte longer.
    check_size(&flood, a.small_size + 1)?;
    watch.tick();
    eprintln!(
        "kt bench: {} round trips over {} quiet channels, idle",
        a.iterations,
        quiet.len()
    );
    watch.phase("round trips, idle".into(), a.iterations);
    let idle = round_robin_trips(&quiet, a.size, a.iterations, &watch)?;
    eprintln!("kt bench: the same while one channel floods");
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let (writer, reader) = if a.flood_from.is_some() {
        (None, start_source_flood(flood, stop.clone()))
    } else if a.flood_to.is_some() {
        (None, start_sink_flood(flood, a.small_size, stop.clone()))
    } else {
        let (w, r) = start_flood(flood, a.small_size, stop.clone())?;
        (Some(w), r)
    };
    watch.phase("round trips, one channel flooding".into(), a.iterations);
    let busy = round_robin_trips(&quiet, a.size, a.iterations, &watch);
    stop.store(true, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    // A writer that failed sent no end marker: its error is the answer and
    // the reader is left behind (the process ends with it).
    if let Some(w) = writer {
        w.join()
            .map_err(|_| Error::Bench("the flood writer panicked".into()))??;
    }
    let moved = reader
        .join()
        .map_err(|_| Error::Bench("the flood thread panicked".into()))??;
    let busy = busy?;
    let (i99, b99) = (percentile(&idle, 99), percentile(&busy, 99));
    let ratio = b99.as_secs_f64() / i99.as_secs_f64().max(1e-9);
    let rows = vec![
        vec!["round trip p50, idle".into(), micros(percentile(&idle, 50))],
        vec!["round trip p99, idle".into(), micros(i99)],
        vec![
            "round trip p50, one channel flooding".into(),
            micros(percentile(&busy, 50)),
        ],
        vec!["round trip p99, one channel flooding".into(), micros(b99)],
        vec![
            "p99 flooding / idle (target <= 2x)".into(),
            format!(
                "{ratio:.2}x ({})",
                if ratio <= 2.0 { "met" } else { "NOT met" }
            ),
        ],
        vec![
            match (&a.flood_from, &a.flood_to) {
                (Some(from), _) => format!("flood rate (read from {from})"),
                (None, Some(to)) => format!("flood rate ({} B, written to {to})", a.small_size),
                (None, None) => format!("flood rate ({} B, echoed)", a.small_size),
            },
            format!("{:.0} msgs/s", moved as f64 / secs.max(1e-9)),
        ],
    ];
    out::line(format_args!(
        "kt bench: fairness, {n} channels to {}: {} round trips of {} B over the {} quiet ones, \
         idle and with one channel flooding",
        a.channel
            .name
            .clone()
            .or_else(|| a.channel.direct.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_else(|| quiet.first().map_or("?", Channel::label).to_string()),
        a.iterations,
        a.size,
        quiet.len()
    ))?;
    out::line(format_args!(
        "{}",
        out::table(&["metric", "value"], &rows).trim_end()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_sample() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&s, 50), Duration::from_micros(51));
        assert_eq!(percentile(&s, 99), Duration::from_micros(100));
        assert_eq!(percentile(&s[..1], 99), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
