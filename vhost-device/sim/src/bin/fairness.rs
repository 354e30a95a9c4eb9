//! `kt-vhost-device-fairness`: channel fairness as a number (issue 11).
//! One `kt-vhost-device` (the real binary, a child process) and one
//! simulated guest on real vhost-user with 1,000 channels open: 999 quiet
//! ones doing 64 B round trips through a host echo service, one after the
//! other over all 999, and one more channel that floods. Prints one row
//! per case: the quiet channels' round-trip p50/p99 while nothing else
//! moves (idle), while a host program floods its channel towards the guest
//! (which keeps reading it), and while the guest floods its channel
//! towards a host sink (keeping its tx ring topped up); the p99 over the
//! idle p99, and the flood's rate. Target (issue 11): p99 under flood
//! within 2x idle. `--rx-share 1,8` runs every case once per value of
//! the daemon's `--rx-share` (1: a channel may fill the whole rx ring),
//! side by side in one run; `--tx-share 1,8` does the same for the guest
//! side's tx share, which kt-sim's driver models as the guest driver's
//! `tx_share` parameter does it (the flood keeps at most 1/N of the tx
//! ring's descriptors while the quiet channels' round trips go on).
//!
//! The host services are single epoll threads (one for the echo, one for
//! the sink), as a real service with a thousand clients would be; the
//! flood source is one thread writing as fast as the daemon takes.
//!
//! This is the simulated-guest version of the benchmark: the guest is
//! kt-sim's driver, not `kerntransport.ko` in a VM (that one is
//! `kt bench --fairness` in the guest, `scripts/bench-fairness.sh`).
//!
//! Run it optimized: `scripts/bench-fairness.sh --sim` (builds the release
//! binaries and runs this).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kt_sim::{DaemonProc, Driver, DriverOptions, TempDir};
use kt_vhost_device::seqpacket::SeqListener;

/// Quiet channels' round trips next to one flooding channel.
#[derive(Debug, Parser)]
#[command(name = "kt-vhost-device-fairness", version)]
struct Args {
    /// Channels open in all (one of them floods in the flood cases).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    channels: u32,
    /// Round trips measured per case (after a 10 % warm-up).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    round_trips: u32,
    /// Size of each flood message in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    flood_size: usize,
    /// Receive window the guest grants each channel (credit bytes): how
    /// much of one channel's data may wait in the guest, rx ring included.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    window: u32,
    /// The daemon's --busy-poll-us.
    #[arg(long, value_name = "US", default_value_t = 0)]
    busy_poll_us: u32,
    /// The daemon's --rx-share, or several (comma-separated) to run every
    /// case with each [default: the daemon's].
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',')]
    rx_share: Vec<u32>,
    /// The guest's tx share, or several (comma-separated): in the
    /// guest->host case the flood keeps at most 1/N of the tx ring's
    /// descriptors in use (at least 8), as the guest driver's `tx_share`
    /// does while other channels send; 1: the whole ring [default: 1].
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=64))]
    tx_share: Vec<u32>,
    /// The daemon binary (default: kt-vhost-device next to this program,
    /// or $KT_VHOST_DEVICE).
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum FairError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("open {0}: refused with {1}")]
    Refused(&'static str, kt_proto::ErrorCode),
    #[error("{0}")]
    Usage(String),
}

/// What floods while the quiet channels' round trips are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flood {
    None,
    /// A host program towards the guest on this channel.
    HostToGuest(u32),
    /// The guest towards a host sink on this channel.
    GuestToHost(u32),
}

struct Row {
    case: &'static str,
    p50_us: f64,
    p99_us: f64,
    /// Flood messages per second during the case.
    flood_rate: f64,
}

fn daemon_path(a: &Args) -> Result<PathBuf, FairError> {
    kt_sim::host::daemon_binary(a.daemon.as_deref()).map_err(|e| FairError::Usage(e.to_string()))
}

/// The flood source on `path`: every connection it accepts gets `size`-byte
/// messages as fast as the daemon takes them, until `stop` or the
/// connection fails.
fn spawn_flood(path: &Path, size: usize, stop: Arc<AtomicBool>) -> Result<(), FairError> {
    let listener = SeqListener::bind(path)?;
    std::thread::spawn(move || {
        let msg = vec![0xf1u8; size];
        while !stop.load(Ordering::Relaxed) {
            if !listener
                .readable(Some(Duration::from_millis(100)))
                .unwrap_or(false)
            {
                continue;
            }
            let Ok(c) = listener.accept() else { continue };
            while !stop.load(Ordering::Relaxed) {
                match c.try_send(&msg) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = c.writable(Some(Duration::from_millis(100)));
                    }
                    Err(_) => break,
                }
            }
        }
    });
    Ok(())
}

/// Sets its flag when dropped (also on an early return).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Opens a channel to `name`, trying again while the service's accept
/// backlog is full (`KT_ERR_CONNREFUSED`), as a program would.
fn open(d: &mut Driver, name: &'static str) -> Result<u32, FairError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match d.open(name)? {
            Ok(id) => return Ok(id),
            Err(kt_proto::ErrorCode::ConnRefused) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(FairError::Refused(name, e)),
        }
    }
}

/// Reads what the flood brought (returning its credit); returns how many.
fn drain(d: &mut Driver, id: u32) -> Result<u64, FairError> {
    let mut n = 0;
    while d.try_recv(id)?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Tops the tx ring up with flood messages as far as credit and free
/// descriptors allow, keeping `cap` descriptors or fewer in use; returns
/// how many it queued.
fn top_up(d: &mut Driver, id: u32, msg: &[u8], cap: usize) -> Result<u64, FairError> {
    let mut n = 0;
    let size = usize::from(d.rings[1].size);
    while d.rings[1].free_count() > 0
        && size - d.rings[1].free_count() < cap
        && d.try_send(id, msg)?
    {
        n += 1;
    }
    d.flush()?;
    Ok(n)
}

/// `count` round trips of 64 B over `quiet` in turn, with `flood` going
/// on; returns the sorted samples of the last `count - count / 11` and
/// the flood messages moved per second.
fn round_trips(
    d: &mut Driver,
    quiet: &[u32],
    count: u32,
    flood: Flood,
    flood_msg: &[u8],
    tx_share: u32,
) -> Result<(Vec<Duration>, f64), FairError> {
    let size = usize::from(d.rings[1].size);
    let cap = if tx_share <= 1 {
        size
    } else {
        (size / tx_share as usize).max(8)
    };
    let msg = [0xa5u8; 64];
    let warmup = count / 10;
    let mut samples = Vec::with_capacity(count as usize);
    let mut moved = 0u64;
    let pump = |d: &mut Driver| -> Result<u64, FairError> {
        match flood {
            Flood::None => Ok(0),
            Flood::HostToGuest(id) => drain(d, id),
            Flood::GuestToHost(id) => top_up(d, id, flood_msg, cap),
        }
    };
    // The flood gets going before anything is measured.
    let start = Instant::now();
    while flood != Flood::None && start.elapsed() < Duration::from_millis(200) {
        pump(d)?;
        d.poll(Duration::from_millis(1))?;
    }
    let t0 = Instant::now();
    for k in 0..(warmup + count) as usize {
        let id = quiet[k % quiet.len()];
        let t = Instant::now();
        moved += pump(d)?;
        d.send(id, &msg)?;
        loop {
            if let Some(r) = d.try_recv(id)? {
                if r.len() != msg.len() {
                    return Err(FairError::Usage(format!(
                        "a {}-byte echo of a 64-byte message",
                        r.len()
                    )));
                }
                break;
            }
            d.poll(Duration::from_millis(1))?;
            moved += pump(d)?;
        }
        if k >= warmup as usize {
            samples.push(t.elapsed());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    samples.sort();
    Ok((samples, moved as f64 / secs.max(1e-9)))
}

fn percentile_us(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

fn run(a: &Args, rx_share: Option<u32>, tx_share: u32) -> Result<Vec<Row>, FairError> {
    if a.channels < 2 {
        return Err(FairError::Usage("--channels must be at least 2".into()));
    }
    if a.flood_size == 0 || a.flood_size > 65536 {
        return Err(FairError::Usage("--flood-size must be 1..=65536".into()));
    }
    if (a.window as usize) < a.flood_size.max(64) {
        return Err(FairError::Usage(
            "--window must hold at least one message".into(),
        ));
    }
    let bin = daemon_path(a)?;
    let dir = TempDir::new("fairness")?;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    kt_sim::host::spawn_epoll_service(&dir.join("echo.sock"), true, stop.clone())?;
    kt_sim::host::spawn_epoll_service(&dir.join("sink.sock"), false, stop.clone())?;
    spawn_flood(&dir.join("flood.sock"), a.flood_size, stop.clone())?;
    let mut policy = String::new();
    for name in ["echo", "sink", "flood"] {
        policy.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nsocket = \"{}\"\n",
            dir.join(&format!("{name}.sock")).display()
        ));
    }
    std::fs::write(dir.join("policy.toml"), policy)?;
    let sock = dir.join("vhost.sock");
    let mut args: Vec<String> = vec![
        "--socket-path".into(),
        sock.display().to_string(),
        "--policy".into(),
        dir.join("policy.toml").display().to_string(),
        "--max-channels".into(),
        (a.channels + 8).to_string(),
        "--busy-poll-us".into(),
        a.busy_poll_us.to_string(),
        "--log-level".into(),
        "error".into(),
    ];
    if let Some(n) = rx_share {
        args.extend(["--rx-share".into(), n.to_string()]);
    }
    let _daemon = DaemonProc::spawn(&bin, &sock, &args)?;
    let mut d = Driver::connect(
        &sock,
        DriverOptions {
            buf_alloc: a.window,
            ..DriverOptions::default()
        },
    )?;
    let quiet = (1..a.channels)
        .map(|_| open(&mut d, "echo"))
        .collect::<Result<Vec<u32>, FairError>>()?;
    let flood_msg = vec![0x5au8; a.flood_size];
    let mut rows = Vec::new();
    let (idle, _) = round_trips(
        &mut d,
        &quiet,
        a.round_trips,
        Flood::None,
        &flood_msg,
        tx_share,
    )?;
    rows.push(Row {
        case: "idle",
        p50_us: percentile_us(&idle, 50),
        p99_us: percentile_us(&idle, 99),
        flood_rate: 0.0,
    });
    let id = open(&mut d, "flood")?;
    let (s, rate) = round_trips(
        &mut d,
        &quiet,
        a.round_trips,
        Flood::HostToGuest(id),
        &flood_msg,
        tx_share,
    )?;
    rows.push(Row {
        case: "host->guest flood",
        p50_us: percentile_us(&s, 50),
        p99_us: percentile_us(&s, 99),
        flood_rate: rate,
    });
    d.close(id)?;
    let id = open(&mut d, "sink")?;
    let (s, rate) = round_trips(
        &mut d,
        &quiet,
        a.round_trips,
        Flood::GuestToHost(id),
        &flood_msg,
        tx_share,
    )?;
    rows.push(Row {
        case: "guest->host flood",
        p50_us: percentile_us(&s, 50),
        p99_us: percentile_us(&s, 99),
        flood_rate: rate,
    });
    if !d.errors.is_empty() {
        return Err(FairError::Usage(format!(
            "the simulated driver saw protocol errors: {:?}",
            d.errors
        )));
    }
    Ok(rows)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let shares: Vec<Option<u32>> = if a.rx_share.is_empty() {
        vec![None]
    } else {
        a.rx_share.iter().map(|n| Some(*n)).collect()
    };
    let tx_shares = if a.tx_share.is_empty() {
        vec![1]
    } else {
        a.tx_share.clone()
    };
    let mut runs = Vec::new();
    for share in &shares {
        for tx in &tx_shares {
            match run(&a, *share, *tx) {
                Ok(r) => runs.push((*share, *tx, r)),
                Err(e) => {
                    eprintln!("kt-vhost-device-fairness: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    println!(
        "one kt-vhost-device, one simulated guest, {} channels: {} quiet ones doing 64 B round \
         trips through a host echo in turn ({} per case), one flooding ({} B messages); \
         window {} B per channel; busy poll {} us",
        a.channels,
        a.channels - 1,
        a.round_trips,
        a.flood_size,
        a.window,
        a.busy_poll_us
    );
    println!(
        "{:<12} {:<20} {:>10} {:>10} {:>11} {:>14}",
        "rx/tx share", "case", "p50 us", "p99 us", "p99/idle", "flood msgs/s"
    );
    for (share, tx, rows) in &runs {
        let label = format!(
            "{}/{tx}",
            share.map_or_else(|| "default".to_owned(), |n| n.to_string())
        );
        let idle = rows.first().map_or(0.0, |r| r.p99_us);
        let mut met = true;
        for r in rows {
            let ratio = r.p99_us / idle.max(1e-9);
            println!(
                "{:<12} {:<20} {:>10.1} {:>10.1} {:>11.2} {:>14.0}",
                label, r.case, r.p50_us, r.p99_us, ratio, r.flood_rate
            );
            met &= ratio <= 2.0;
        }
        println!(
            "target (issue 11), rx/tx share {label}: the quiet channels' p99 round trip under a \
             flood within 2x idle: {}",
            if met { "met" } else { "NOT met" }
        );
    }
    ExitCode::SUCCESS
}
