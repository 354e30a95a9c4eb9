//! `kt-vmm-bench`: boots the same kernel and initramfs under kt-vmm and
//! under QEMU (KVM accelerated, same memory and vCPUs, guest RAM in a memfd
//! for both) and prints a table: time from launch to the guest init's
//! marker line, and VMM memory overhead (resident memory beyond guest RAM:
//! the process's Rss minus the Rss of its memfd guest-RAM mappings, read
//! from /proc/PID/smaps when the marker appears), with kt-vmm/QEMU ratios.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;

/// Compare kt-vmm with QEMU: boot time to the guest's init and VMM memory overhead.
#[derive(Parser, Debug)]
#[command(name = "kt-vmm-bench", version)]
struct Args {
    /// Guest kernel (bzImage).
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// Guest initramfs; its init must print `--marker` as soon as it runs.
    #[arg(long, value_name = "FILE")]
    initrd: PathBuf,
    /// Guest command line (the same for every VMM).
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=-1 quiet kt.bench")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    mem_mib: u32,
    /// vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u8,
    /// Boots per VMM (the table shows medians).
    #[arg(long, default_value_t = 3, value_name = "N")]
    runs: usize,
    /// Serial line that marks "init reached".
    #[arg(long, default_value = "KT-GUEST: init reached", value_name = "TEXT")]
    marker: String,
    /// kt-vmm binary.
    #[arg(long, default_value = "kt-vmm", value_name = "PATH")]
    kt_vmm: PathBuf,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64", value_name = "PATH")]
    qemu: PathBuf,
    /// QEMU firmware directory (`-L`).
    #[arg(long, default_value = "/usr/share/qemu", value_name = "DIR")]
    qemu_firmware: PathBuf,
    /// Seconds one boot may take before it counts as failed (a VMM that
    /// times out is not booted again: its row says so).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    timeout: u64,
    /// Seconds the whole bench may take: boots that would start after it is
    /// spent are not run, and the table is printed in time. The default fits
    /// the KVM runner VM's 600 s limit (`images/runner/run.sh`).
    #[arg(long, default_value_t = 480, value_name = "SECONDS")]
    budget: u64,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("{0}: no marker within {1} s")]
    Timeout(String, u64),
    #[error("{0} exited before the marker")]
    NoMarker(String),
    #[error("{0}: cannot read /proc/{1}/smaps")]
    Proc(String, u32, #[source] std::io::Error),
}

/// One measured boot.
#[derive(Debug, Clone, Copy)]
struct Sample {
    boot: Duration,
    /// Launch to the guest kernel's clock starting: VMM setup, firmware,
    /// kernel decompression (boot minus the uptime the marker line reports).
    before_kernel: Option<Duration>,
    overhead_kib: u64,
}

/// The guest uptime in a marker line such as `... after 3.08s uptime`.
fn uptime_in(line: &str) -> Option<Duration> {
    let secs: f64 = line
        .split_whitespace()
        .filter_map(|w| w.strip_suffix('s'))
        .find_map(|w| w.parse().ok())?;
    Duration::try_from_secs_f64(secs).ok()
}

struct Vmm {
    name: &'static str,
    argv: Vec<String>,
}

fn vmms(a: &Args) -> Vec<Vmm> {
    let s = |p: &PathBuf| p.display().to_string();
    let mem = format!("{}M", a.mem_mib);
    let kt = vec![
        s(&a.kt_vmm),
        "--kernel".into(),
        s(&a.kernel),
        "--initrd".into(),
        s(&a.initrd),
        "--cmdline".into(),
        a.cmdline.clone(),
        "--mem".into(),
        mem.clone(),
        "--cpus".into(),
        a.cpus.to_string(),
    ];
    let qemu = |machine: &str, extra: &[&str]| {
        let mut v = vec![
            s(&a.qemu),
            "-accel".into(),
            "kvm".into(),
            "-cpu".into(),
            "max".into(),
            "-M".into(),
            machine.into(),
            "-m".into(),
            mem.clone(),
            "-smp".into(),
            a.cpus.to_string(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-nographic".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-serial".into(),
            "stdio".into(),
            "-no-reboot".into(),
            "-L".into(),
            s(&a.qemu_firmware),
            "-kernel".into(),
            s(&a.kernel),
            "-initrd".into(),
            s(&a.initrd),
            "-append".into(),
            a.cmdline.clone(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    vec![
        Vmm {
            name: "kt-vmm",
            argv: kt,
        },
        Vmm {
            name: "qemu (pc)",
            argv: qemu("pc,memory-backend=mem", &[]),
        },
        Vmm {
            name: "qemu (microvm)",
            argv: qemu(
                "microvm,memory-backend=mem,acpi=on",
                &["-bios", "bios-microvm.bin"],
            ),
        },
    ]
}

/// Kills the child on every path out.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mappings at least this large backed by a memfd count as guest RAM.
const GUEST_RAM_MIN_KIB: u64 = 16 * 1024;

fn kib(v: &str) -> u64 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// (total Rss, Rss of memfd guest-RAM mappings) in KiB from smaps text.
fn rss_split(smaps: &str) -> (u64, u64) {
    let (mut total, mut guest) = (0, 0);
    let (mut in_memfd, mut size) = (false, 0);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: range perms offset dev inode [path].
            let path = line.split_whitespace().nth(5).unwrap_or("");
            in_memfd = path.starts_with("/memfd:");
            size = 0;
        } else if let Some(v) = line.strip_prefix("Size:") {
            size = kib(v);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss = kib(v);
            total += rss;
            if in_memfd && size >= GUEST_RAM_MIN_KIB {
                guest += rss;
            }
        }
    }
    (total, guest)
}

fn boot_once(v: &Vmm, marker: &str, timeout: Duration) -> Result<Sample, Error> {
    let start = Instant::now();
    let child = Command::new(&v.argv[0])
        .args(&v.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Spawn(v.name.into(), e))?;
    let mut guard = Guard(child);
    let pid = guard.0.id();
    let stdout = guard
        .0
        .stdout
        .take()
        .ok_or_else(|| Error::NoMarker(v.name.into()))?;
    let (tx, rx) = mpsc::channel();
    let marker_owned = marker.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(&marker_owned) && tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let (seen, line) = match rx.recv_timeout(timeout) {
        Ok(t) => t,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(Error::Timeout(v.name.into(), timeout.as_secs()))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::NoMarker(v.name.into())),
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| Error::Proc(v.name.into(), pid, e))?;
    let (rss, guest) = rss_split(&smaps);
    let boot = seen - start;
    Ok(Sample {
        boot,
        before_kernel: uptime_in(&line).and_then(|u| boot.checked_sub(u)),
        overhead_kib: rss.saturating_sub(guest),
    })
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let a = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return;
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!(
                "kt-vmm-bench: {}",
                msg.lines().next().unwrap_or("bad arguments")
            );
            std::process::exit(1);
        }
    };
    if a.runs == 0 {
        eprintln!("kt-vmm-bench: --runs must be at least 1");
        std::process::exit(1);
    }
    let deadline = Instant::now() + Duration::from_secs(a.budget);
    let mut rows = Vec::new();
    for v in vmms(&a) {
        let row = bench_vmm(&a, &v, deadline);
        rows.push((v.name, row));
    }
    print_table(&a, &rows);
    if rows.iter().any(|r| r.1.is_err()) {
        std::process::exit(1);
    }
}

/// Boots `v` up to `--runs` times within the per-boot timeout and the
/// bench's deadline; the medians, or why there are none.
fn bench_vmm(a: &Args, v: &Vmm, deadline: Instant) -> Result<Medians, String> {
    let mut samples = Vec::new();
    let mut failure = None;
    for run in 1..=a.runs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(1) {
            failure = Some(format!(
                "bench budget of {} s spent before run {run} of {}",
                a.budget, a.runs
            ));
            break;
        }
        let timeout = Duration::from_secs(a.timeout).min(left);
        match boot_once(v, &a.marker, timeout) {
            Ok(s) => {
                eprintln!(
                    "kt-vmm-bench: {} run {run}: {} ms ({} ms before the kernel clock), overhead {} KiB",
                    v.name,
                    s.boot.as_millis(),
                    s.before_kernel.map_or(0, |d| d.as_millis()),
                    s.overhead_kib
                );
                samples.push(s);
            }
            Err(e) => {
                let why = kt_vmm::error_chain(&e);
                eprintln!("kt-vmm-bench: {} run {run}: {why}", v.name);
                let timed_out = matches!(e, Error::Timeout(..));
                failure = Some(format!("run {run} of {}: {why}", a.runs));
                if timed_out {
                    // It will not boot faster next time: spend the budget
                    // on the other VMMs.
                    if run < a.runs {
                        eprintln!(
                            "kt-vmm-bench: {}: remaining {} run(s) skipped after a timeout",
                            v.name,
                            a.runs - run
                        );
                    }
                    break;
                }
            }
        }
    }
    if samples.is_empty() {
        return Err(failure.unwrap_or_else(|| "no run".into()));
    }
    Ok(Medians {
        boot: median(samples.iter().map(|s| s.boot).collect()),
        before_kernel: median(
            samples
                .iter()
                .map(|s| s.before_kernel.unwrap_or_default())
                .collect(),
        ),
        overhead_kib: median(samples.iter().map(|s| s.overhead_kib).collect()),
        runs: samples.len(),
        failure,
    })
}

/// A VMM's row: medians over the boots that reached the marker.
#[derive(Debug)]
struct Medians {
    boot: Duration,
    before_kernel: Duration,
    overhead_kib: u64,
    /// Boots that reached the marker.
    runs: usize,
    /// Why the other boots did not, if any failed.
    failure: Option<String>,
}

type Row<'a> = (&'a str, Result<Medians, String>);

fn print_table(a: &Args, rows: &[Row]) {
    println!(
        "\nboot to init and VMM memory overhead: {} vCPU(s), {} MiB, median of up to {} run(s)",
        a.cpus, a.mem_mib, a.runs
    );
    println!(
        "{:<16} {:>10} {:>18} {:>15} {:>12} {:>14} {:>14} {:>6}",
        "VMM",
        "boot (ms)",
        "pre-kernel (ms)",
        "overhead (MiB)",
        "boot ratio",
        "pre-k. ratio",
        "memory ratio",
        "runs"
    );
    let kt = rows.first().and_then(|r| r.1.as_ref().ok());
    let mut notes = Vec::new();
    for (name, m) in rows {
        match m {
            Ok(m) => {
                let ratio = |f: &dyn Fn(&Medians) -> f64| match kt {
                    Some(k) => format!("{:.2}", f(k) / f(m).max(1e-3)),
                    None => "-".into(),
                };
                println!(
                    "{:<16} {:>10} {:>18} {:>15.2} {:>12} {:>14} {:>14} {:>6}",
                    name,
                    m.boot.as_millis(),
                    m.before_kernel.as_millis(),
                    m.overhead_kib as f64 / 1024.0,
                    ratio(&|x| x.boot.as_secs_f64()),
                    ratio(&|x| x.before_kernel.as_secs_f64()),
                    ratio(&|x| x.overhead_kib as f64),
                    m.runs
                );
                if let Some(f) = &m.failure {
                    notes.push(format!("{name}: {f}"));
                }
            }
            Err(why) => println!("{name:<16} {:>10}  {why}", "failed"),
        }
    }
    for n in notes {
        println!("note: {n}");
    }
    println!("ratios are kt-vmm / this row; pre-kernel = launch to the guest kernel clock");
    println!("targets: kt-vmm boot <= 0.50 x QEMU, kt-vmm overhead <= 5 MiB");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0-55e0 r-xp 00000000 00:02 12 /usr/bin/kt-vmm
Size:                 64 kB
Rss:                  40 kB
7f00-7f80 rw-s 00000000 00:01 99 /memfd:kt-vmm-guest-ram (deleted)
Size:             524288 kB
Rss:               30000 kB
7f90-7f91 rw-s 00000000 00:01 98 /memfd:small (deleted)
Size:                  4 kB
Rss:                   4 kB
7fa0-7fb0 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 100 kB
";

    #[test]
    fn uptime_is_read_from_the_marker() {
        let u = uptime_in("KT-GUEST: init reached after 3.08s uptime");
        assert_eq!(u, Some(Duration::from_millis(3080)));
        assert_eq!(uptime_in("KT-GUEST: init reached"), None);
    }

    fn args(extra: &[&str]) -> Args {
        let base = ["kt-vmm-bench", "--kernel", "k", "--initrd", "i"];
        Args::parse_from(base.iter().chain(extra))
    }

    fn sh(script: &str) -> Vmm {
        Vmm {
            name: "fake",
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[test]
    fn a_vmm_that_prints_the_marker_is_measured_every_run() {
        let a = args(&["--runs", "2"]);
        let m = bench_vmm(&a, &sh("echo 'KT-GUEST: init reached'; sleep 5"), far())
            .expect("both boots reach the marker");
        assert_eq!(m.runs, 2);
        assert!(m.failure.is_none());
    }

    #[test]
    fn a_timeout_ends_that_vmm_row_with_the_reason() {
        let a = args(&["--runs", "3", "--timeout", "1"]);
        let why = bench_vmm(&a, &sh("sleep 30"), far()).expect_err("never boots");
        assert!(why.starts_with("run 1 of 3:"), "{why}");
        assert!(why.contains("no marker within 1 s"), "{why}");
    }

    #[test]
    fn a_vmm_that_exits_early_is_reported_and_retried() {
        let a = args(&["--runs", "2"]);
        let why = bench_vmm(&a, &sh("exit 3"), far()).expect_err("never boots");
        assert!(why.starts_with("run 2 of 2:"), "{why}");
        assert!(why.contains("exited before the marker"), "{why}");
    }

    #[test]
    fn no_boot_starts_once_the_budget_is_spent() {
        let a = args(&["--runs", "3"]);
        let spent = Instant::now();
        let why =
            bench_vmm(&a, &sh("echo 'KT-GUEST: init reached'"), spent).expect_err("no time left");
        assert!(
            why.contains("budget of 480 s spent before run 1 of 3"),
            "{why}"
        );
    }

    #[test]
    fn guest_ram_is_the_large_memfd_mappings() {
        assert_eq!(rss_split(SMAPS), (30144, 30000));
    }
}
