//! `kt-vhost-device-bench`: drives the daemon (in this process, on its own
//! threads) through the simulated guest driver and prints messages/s and
//! MB/s for 64 B, 4 KiB and 64 KiB messages in both directions, next to
//! this machine's large-buffer `memcpy` bandwidth (a 64 MiB copy, far
//! beyond the caches: what moving bytes through memory costs, not a
//! cache-hot copy of one message), and the CPU time the whole process
//! (daemon, simulated guest, host services) spent per message, which a
//! loaded machine disturbs less than the wall-clock rates.
//!
//! With `--pairs N` (2..=16) it measures multiqueue instead: aggregate
//! 64 B messages/s, each direction, through one queue pair (one guest
//! thread, N channels) and through N pairs (N guest threads, one pair and
//! one channel each; the daemon's N workers), side by side with the ratio.
//!
//! Run it optimized: `cargo run --release -p kt-sim --bin
//! kt-vhost-device-bench`.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use kt_sim::host::{Behaviour, Service};
use kt_sim::{Driver, DriverOptions, TempDir};
use kt_vhost_device::args::{LogLevel, RunArgs, SeccompMode};
use kt_vhost_device::config::Config;

// The --pairs measurement (a directory without main.rs: no bin of its own).
#[path = "bench_mq/mod.rs"]
mod mq;
use mq::{multiqueue, print_multiqueue, Multiqueue};

/// Throughput of kt-vhost-device through a simulated guest driver.
#[derive(Debug, Parser)]
#[command(name = "kt-vhost-device-bench", version)]
struct Args {
    /// Multiplies the message counts (default counts take a few seconds).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    scale: f64,
    /// tx chain layout of the simulated driver: single, split, indirect.
    #[arg(long, value_name = "SHAPE", default_value = "single")]
    shape: String,
    /// The daemon's --busy-poll-us.
    #[arg(long, value_name = "US", default_value_t = kt_vhost_device::config::DEFAULT_BUSY_POLL_US)]
    busy_poll_us: u32,
    /// The daemon's --vm-buffer (0: no VM-wide budget) [default: the
    /// daemon's].
    #[arg(long, value_name = "BYTES")]
    vm_buffer: Option<u32>,
    /// Round trips (64 B through an echo service) for the latency line.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    round_trips: u32,
    /// Measure multiqueue: 64 B messages/s through N queue pairs (one
    /// guest thread each) against one pair (2..=16; 1 = the usual table).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pairs: u16,
    /// With --pairs: rounds of (one pair, N pairs), alternating; the
    /// median and best of each are printed.
    #[arg(long, value_name = "R", default_value_t = 5)]
    rounds: u32,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(#[from] kt_vhost_device::config::ConfigError),
    #[error("open {0}: refused with {1}")]
    Refused(&'static str, kt_proto::ErrorCode),
    #[error("{0}")]
    Usage(String),
}

struct Case {
    size: usize,
    count: u64,
}

struct Row {
    dir: &'static str,
    size: usize,
    count: u64,
    secs: f64,
    /// CPU time of the whole process (daemon, simulated guest, host
    /// services), user + system.
    cpu_secs: f64,
}

/// CPU time (user + system) this process has used so far, all threads.
fn process_cpu_secs() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer we pass.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if r != 0 {
        return 0.0;
    }
    // SAFETY: getrusage succeeded, so the struct is initialised.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Bytes of the buffers the memcpy reference copies (well past any cache).
const MEMCPY_BYTES: usize = 64 << 20;

/// Large-buffer memcpy bandwidth in MB/s: the best of five copies of
/// [`MEMCPY_BYTES`] between two buffers touched beforehand (so no page
/// faults are timed). The best run is the machine's, the others carry the
/// load of other jobs.
fn memcpy_mbs() -> f64 {
    let src = vec![0x5au8; MEMCPY_BYTES];
    let mut dst = vec![1u8; MEMCPY_BYTES];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    MEMCPY_BYTES as f64 / best.max(1e-9) / 1e6
}

fn guest_to_host(d: &mut Driver, sink: &Service, c: &Case) -> Result<f64, BenchError> {
    let id = d
        .open("sink")?
        .map_err(|e| BenchError::Refused("sink", e))?;
    let msg = vec![0x5au8; c.size];
    let base = sink.msgs.load(Ordering::SeqCst);
    let t = Instant::now();
    let mut sent = 0;
    while sent < c.count {
        if d.try_send(id, &msg)? {
            sent += 1;
        } else {
            d.poll(Duration::from_millis(5))?;
        }
    }
    d.flush()?;
    while sink.msgs.load(Ordering::SeqCst) - base < c.count {
        d.poll(Duration::from_millis(1))?;
    }
    let secs = t.elapsed().as_secs_f64();
    d.close(id)?;
    Ok(secs)
}

fn host_to_guest(d: &mut Driver, name: &'static str, c: &Case) -> Result<f64, BenchError> {
    let t = Instant::now();
    let id = d.open(name)?.map_err(|e| BenchError::Refused(name, e))?;
    for _ in 0..c.count {
        let m = d.recv(id)?;
        black_box(&m);
    }
    let secs = t.elapsed().as_secs_f64();
    d.close(id)?;
    Ok(secs)
}

/// Round trips of 64 B messages through the echo service: sorted
/// latencies in microseconds (after a 10 % warm-up).
fn round_trips(d: &mut Driver, n: u32) -> Result<Vec<f64>, BenchError> {
    let id = d
        .open("echo")?
        .map_err(|e| BenchError::Refused("echo", e))?;
    let msg = [0x42u8; 64];
    let warm = n / 10;
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..warm + n {
        let t = Instant::now();
        d.send(id, &msg)?;
        d.flush()?;
        let back = d.recv(id)?;
        if back.len() != msg.len() {
            return Err(BenchError::Usage(format!(
                "echo returned {} bytes for {}",
                back.len(),
                msg.len()
            )));
        }
        if i >= warm {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    d.close(id)?;
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What a run measured.
enum Outcome {
    /// The usual table: rows, sorted round-trip latencies, CPU per round trip.
    Table(Vec<Row>, Vec<f64>, f64),
    /// `--pairs`: one pair against N.
    Multiqueue(Multiqueue),
}

fn run(a: &Args) -> Result<Outcome, BenchError> {
    let shape = match a.shape.as_str() {
        "single" => kt_sim::Shape::Single,
        "split" => kt_sim::Shape::Split,
        "indirect" => kt_sim::Shape::Indirect,
        other => {
            return Err(BenchError::Usage(format!(
                "--shape {other}: use single, split or indirect"
            )))
        }
    };
    if !(a.scale > 0.0 && a.scale <= 1000.0) {
        return Err(BenchError::Usage(format!(
            "--scale {}: must be in (0, 1000]",
            a.scale
        )));
    }
    let scaled = |n: f64| ((n * a.scale) as u64).max(10);
    let cases = [
        Case {
            size: 64,
            count: scaled(200_000.0),
        },
        Case {
            size: 4096,
            count: scaled(100_000.0),
        },
        Case {
            size: 65536,
            count: scaled(10_000.0),
        },
    ];
    let dir = TempDir::new("bench")?;
    let sink = Service::spawn(&dir.join("sink.sock"), Behaviour::Sink)?;
    let echo = Service::spawn(&dir.join("echo.sock"), Behaviour::Echo)?;
    let names = ["src-64", "src-4k", "src-64k"];
    let mut sources = Vec::new();
    let mut policy = format!(
        "[[service]]\nname = \"sink\"\nsocket = \"{}\"\n\
         [[service]]\nname = \"echo\"\nsocket = \"{}\"\n",
        sink.path.display(),
        echo.path.display()
    );
    for (name, c) in names.iter().zip(&cases) {
        let path = dir.join(&format!("{name}.sock"));
        sources.push(Service::spawn(
            &path,
            Behaviour::Source {
                count: c.count,
                size: c.size,
            },
        )?);
        policy.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nsocket = \"{}\"\n",
            path.display()
        ));
    }
    // --pairs: a source of 64 B messages, each connection its share.
    let mq_count = scaled(400_000.0);
    let pairs = a.pairs.clamp(1, kt_proto::consts::MAX_QUEUE_PAIRS);
    if pairs > 1 {
        let path = dir.join("src-mq.sock");
        sources.push(Service::spawn(
            &path,
            Behaviour::Source {
                count: mq_count / u64::from(pairs),
                size: 64,
            },
        )?);
        policy.push_str(&format!(
            "[[service]]\nname = \"src-mq\"\nsocket = \"{}\"\n",
            path.display()
        ));
    }
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy)?;
    let sock = dir.join("vhost.sock");
    let config = Config::try_from(RunArgs {
        config: None,
        vm_name: None,
        socket_path: Some(sock.clone()),
        policy: Some(policy_path),
        listen: None,
        control: None,
        max_msg_size: None,
        max_channels: None,
        rx_buf_size: None,
        channel_buffer: None,
        vm_buffer: a.vm_buffer,
        handshake_timeout: 10,
        open_timeout: 30,
        guest_id: 0,
        busy_poll_us: a.busy_poll_us,
        queue_pairs: Some(u32::from(pairs)),
        rx_share: None,
        log_level: LogLevel::Warn,
        // The daemon shares this process with the simulated guest, which
        // needs calls the daemon's allow-list refuses.
        seccomp: SeccompMode::Off,
    })?;
    std::thread::spawn(move || {
        if let Err(e) = kt_vhost_device::daemon::run(config) {
            eprintln!("kt-vhost-device-bench: daemon: {e}");
            std::process::exit(1);
        }
    });
    let opts = DriverOptions {
        shape,
        defer_kicks: true,
        buf_alloc: 1 << 20,
        ..DriverOptions::default()
    };
    if pairs > 1 {
        let mq = multiqueue(&sock, &opts, pairs, mq_count, a.rounds.max(1), &sink)?;
        return Ok(Outcome::Multiqueue(mq));
    }
    let mut d = Driver::connect(&sock, opts)?;
    let mut rows = Vec::new();
    for (name, c) in names.iter().zip(&cases) {
        let cpu = process_cpu_secs();
        let secs = guest_to_host(&mut d, &sink, c)?;
        rows.push(Row {
            dir: "guest->host",
            size: c.size,
            count: c.count,
            secs,
            cpu_secs: process_cpu_secs() - cpu,
        });
        let cpu = process_cpu_secs();
        let secs = host_to_guest(&mut d, name, c)?;
        rows.push(Row {
            dir: "host->guest",
            size: c.size,
            count: c.count,
            secs,
            cpu_secs: process_cpu_secs() - cpu,
        });
    }
    let cpu = process_cpu_secs();
    let lat = round_trips(&mut d, a.round_trips.max(1))?;
    let rt_cpu = (process_cpu_secs() - cpu) * 1e6 / f64::from(a.round_trips.max(1));
    if !d.errors.is_empty() {
        return Err(BenchError::Usage(format!(
            "driver saw protocol errors: {:?}",
            d.errors
        )));
    }
    Ok(Outcome::Table(rows, lat, rt_cpu))
}

fn size_name(s: usize) -> String {
    if s >= 1024 {
        format!("{} KiB", s / 1024)
    } else {
        format!("{s} B")
    }
}

fn main() -> ExitCode {
    let a = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            eprintln!(
                "kt-vhost-device-bench: {}",
                text.lines().next().unwrap_or("bad arguments")
            );
            return ExitCode::from(1);
        }
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .init();
    let memcpy = memcpy_mbs();
    let (rows, lat, rt_cpu) = match run(&a) {
        Ok(Outcome::Table(rows, lat, rt_cpu)) => (rows, lat, rt_cpu),
        Ok(Outcome::Multiqueue(m)) => {
            print_multiqueue(&m);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kt-vhost-device-bench: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "{:<12} {:>7} {:>9} {:>8} {:>12} {:>9} {:>14} {:>9} {:>11}",
        "direction",
        "size",
        "messages",
        "seconds",
        "msgs/s",
        "MB/s",
        "memcpy MB/s",
        "vs memcpy",
        "CPU us/msg"
    );
    let mc = memcpy;
    for r in rows {
        let bytes = r.size as f64 * r.count as f64;
        let mbs = bytes / r.secs / 1e6;
        println!(
            "{:<12} {:>7} {:>9} {:>8.3} {:>12.0} {:>9.1} {:>14.1} {:>8.3}% {:>11.2}",
            r.dir,
            size_name(r.size),
            r.count,
            r.secs,
            r.count as f64 / r.secs,
            mbs,
            mc,
            100.0 * mbs / mc,
            r.cpu_secs * 1e6 / r.count as f64
        );
    }
    println!(
        "round trip 64 B: p50 {:.1} us  p99 {:.1} us  ({} round trips, CPU {:.2} us each, --busy-poll-us {})",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len(),
        rt_cpu,
        a.busy_poll_us
    );
    ExitCode::SUCCESS
}
