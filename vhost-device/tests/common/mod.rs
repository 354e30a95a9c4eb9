//! Shared integration-test fixture: a temporary directory with a policy
//! file, host services, and the real daemon binary as a child process
//! (killed when the fixture drops).

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test binary uses a different part of the fixture.
#![allow(dead_code)]

use std::path::PathBuf;

use kt_sim::host::{Behaviour, Service};
use kt_sim::{DaemonProc, Driver, DriverOptions, TempDir};
use kt_vhost_device::seqpacket::SeqListener;

pub struct Fixture {
    pub dir: TempDir,
    pub daemon: DaemonProc,
    pub echo: Service,
    pub sink: Service,
    pub sock: PathBuf,
    pub listen: PathBuf,
    pub control: PathBuf,
    pub args: Vec<String>,
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kt-vhost-device"))
}

impl Fixture {
    /// Starts services and the daemon with `extra` flags.
    pub fn new(tag: &str, extra: &[&str]) -> Fixture {
        let dir = TempDir::new(tag).expect("temp dir");
        let echo = Service::spawn(&dir.join("echo.sock"), Behaviour::Echo).expect("echo");
        let sink = Service::spawn(&dir.join("sink.sock"), Behaviour::Sink).expect("sink");
        let policy = dir.join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[[service]]\nname = \"echo\"\nsocket = \"{}\"\n\n\
                 [[service]]\nname = \"sink\"\nsocket = \"{}\"\n\n\
                 [[service]]\nname = \"down\"\nsocket = \"{}\"\n\n\
                 [[service]]\nname = \"limited\"\nsocket = \"{}\"\nmax_channels = 1\n\n\
                 [[service]]\nname = \"manual\"\nsocket = \"{}\"\n",
                dir.join("echo.sock").display(),
                dir.join("sink.sock").display(),
                dir.join("nobody.sock").display(),
                dir.join("echo.sock").display(),
                dir.join("manual.sock").display(),
            ),
        )
        .expect("policy");
        let sock = dir.join("vhost.sock");
        let listen = dir.join("listen.sock");
        let control = dir.join("control.sock");
        let mut args: Vec<String> = vec![
            "--socket-path".into(),
            sock.display().to_string(),
            "--policy".into(),
            policy.display().to_string(),
            "--listen".into(),
            listen.display().to_string(),
            "--control".into(),
            control.display().to_string(),
            "--guest-id".into(),
            "7".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = DaemonProc::spawn(&bin(), &sock, &args).expect("daemon");
        Fixture {
            dir,
            daemon,
            echo,
            sink,
            sock,
            listen,
            control,
            args,
        }
    }

    pub fn driver(&self) -> Driver {
        self.driver_with(DriverOptions::default())
    }

    pub fn driver_with(&self, opts: DriverOptions) -> Driver {
        Driver::connect(&self.sock, opts).expect("driver connect")
    }

    /// Kills the daemon and starts a fresh one with the same flags.
    pub fn restart_daemon(&mut self) {
        self.daemon.kill();
        self.daemon = DaemonProc::spawn(&bin(), &self.sock, &self.args).expect("daemon restart");
    }

    /// Listens on the `manual` service's socket; the test accepts and
    /// drives each connection itself.
    pub fn manual_service(&self) -> SeqListener {
        SeqListener::bind(&self.dir.join("manual.sock")).expect("manual service")
    }

    /// The counters of the fixture's one VM.
    ///
    /// The daemon binds a VM's vhost-user socket (so a driver connects)
    /// a moment before the control socket lists the VM: a query in between
    /// sees no VM and is asked again.
    pub fn stats(&self) -> kt_vhost_device::stats::StatsSnapshot {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut all = kt_vhost_device::control::query(&self.control).expect("stats");
            if all.vms.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            assert_eq!(all.vms.len(), 1, "one VM expected: {all:?}");
            return all.vms.remove(0);
        }
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Size of message `i` (mostly small, some up to `max`).
pub fn message_size(i: u64, max: usize) -> usize {
    let mut s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let r = xorshift(&mut s);
    let size = match r % 64 {
        0 => (xorshift(&mut s) as usize) % (max + 1),
        1..=15 => (xorshift(&mut s) as usize) % 4097,
        _ => (xorshift(&mut s) as usize) % 257,
    };
    size.max(16)
}

fn checksum(body: &[u8]) -> u32 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut words = body.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x100_0000_01b3);
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// Deterministic message `i` of a stream: 8-byte index, 4-byte length,
/// 4-byte checksum of the body, pseudo-random body.
pub fn message(i: u64, max: usize) -> Vec<u8> {
    let size = message_size(i, max);
    let mut m = vec![0u8; size];
    let mut s = i.wrapping_add(0x2545_f491_4f6c_dd1d) | 1;
    for w in m[16..].chunks_mut(8) {
        let v = xorshift(&mut s).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
    m[..8].copy_from_slice(&i.to_le_bytes());
    m[8..12].copy_from_slice(&(size as u32).to_le_bytes());
    let sum = checksum(&m[16..]);
    m[12..16].copy_from_slice(&sum.to_le_bytes());
    m
}

/// Checks a message produced by [`message`] (index, length, checksum);
/// returns its index.
pub fn check_message(m: &[u8], max: usize) -> Result<u64, String> {
    if m.len() < 16 {
        return Err(format!("message of {} bytes", m.len()));
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&m[r]);
        u64::from_le_bytes(b)
    };
    let i = word(0..8);
    if word(8..12) as usize != m.len() || m.len() != message_size(i, max) {
        return Err(format!(
            "message {i}: {} bytes, expected {}",
            m.len(),
            message_size(i, max)
        ));
    }
    if word(12..16) as u32 != checksum(&m[16..]) {
        return Err(format!("message {i}: checksum mismatch"));
    }
    Ok(i)
}

/// Reads one `kt.services` listing from channel `id`.
pub fn listing(d: &mut Driver, id: u32) -> Vec<String> {
    let mut r = kt_proto::listing::Reader::default();
    loop {
        let m = d.recv(id).unwrap();
        if let Some(names) = r.push(&m).unwrap() {
            return names;
        }
    }
}
