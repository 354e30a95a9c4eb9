//! `kt bench`: ping-pong latency (p50/p99), streamed throughput and
//! small-message rate against an echo peer, printed as a table. The echo
//! peer carries every message back, so streamed numbers are per direction
//! with both directions loaded.

use std::time::{Duration, Instant};

use crate::channel::{Channel, NbStats, Recv};
use crate::cli::BenchArgs;
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
fn ping_pong(ch: &Channel, size: usize, iterations: u64) -> Result<Vec<Duration>> {
    let msg = vec![0xa5u8; size];
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    let warmup = (iterations / 10).min(100);
    let mut samples = Vec::with_capacity(iterations as usize);
    for i in 0..warmup + iterations {
        let t = Instant::now();
        ch.send(&msg, &mut nb)?;
        expect_echo(ch, &mut buf, &mut nb, size)?;
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// Streams `count` messages of `size` bytes from a writer thread while this
/// thread reads the echoes; returns the time until the last echo.
fn stream(ch: &Channel, size: usize, count: u64) -> Result<Duration> {
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
    }
    let elapsed = start.elapsed();
    match handle.join() {
        Ok(r) => r?,
        Err(_) => return Err(Error::Bench("writer thread panicked".into())),
    }
    Ok(elapsed)
}

fn micros(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

/// `kt bench`.
pub fn bench(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    let ch = open_channel(ctx, &a.channel)?;
    let bulk_size = a.bulk_size.unwrap_or(ch.max_msg_size().min(65536));
    for s in [a.size, bulk_size, a.small_size] {
        check_size(&ch, s)?;
    }
    if a.iterations == 0 || bulk_size == 0 || a.small_count == 0 {
        return Err(Error::Usage(
            "--iterations, --bulk-size and --small-count must be at least 1".into(),
        ));
    }
    let bulk_count = (a.bulk_mb * 1_000_000).div_ceil(bulk_size as u64).max(1);
    // Progress on stderr: a slow (emulated) guest takes a while per phase.
    eprintln!("kt bench: ping-pong, {} x {} B", a.iterations, a.size);
    let lat = ping_pong(&ch, a.size, a.iterations)?;
    eprintln!("kt bench: streaming {bulk_count} x {bulk_size} B");
    let bulk_time = stream(&ch, bulk_size, bulk_count)?;
    eprintln!("kt bench: streaming {} x {} B", a.small_count, a.small_size);
    let small_time = stream(&ch, a.small_size, a.small_count)?;

    let mb_s = (bulk_count * bulk_size as u64) as f64 / bulk_time.as_secs_f64() / 1e6;
    let rate = a.small_count as f64 / small_time.as_secs_f64();
    let rows = vec![
        vec![
            format!("ping-pong latency p50 ({} B)", a.size),
            micros(percentile(&lat, 50)),
        ],
        vec![
            format!("ping-pong latency p99 ({} B)", a.size),
            micros(percentile(&lat, 99)),
        ],
        vec![
            format!("throughput, one way ({bulk_size} B messages)"),
            format!("{mb_s:.1} MB/s"),
        ],
        vec![
            format!("message rate ({} B messages)", a.small_size),
            format!("{rate:.0} msgs/s"),
        ],
    ];
    out::line(format_args!(
        "kt bench: {} (echo peer), {} round trips, {bulk_count} x {bulk_size} B, {} x {} B",
        ch.label(),
        a.iterations,
        a.small_count,
        a.small_size
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
