//! Shared integration-test fixture: a temporary directory with a policy
//! file, host services, and the real daemon binary as a child process
//! (killed when the fixture drops).

#![allow(dead_code)]

use std::path::PathBuf;

use kt_vhost_device::sim::host::{Behaviour, Service};
use kt_vhost_device::sim::{DaemonProc, Driver, DriverOptions, TempDir};

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
                 [[service]]\nname = \"limited\"\nsocket = \"{}\"\nmax_channels = 1\n",
                dir.join("echo.sock").display(),
                dir.join("sink.sock").display(),
                dir.join("nobody.sock").display(),
                dir.join("echo.sock").display(),
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

    pub fn stats(&self) -> kt_vhost_device::stats::StatsSnapshot {
        kt_vhost_device::control::query(&self.control).expect("stats")
    }
}

/// Deterministic message `i` of a stream: 8-byte index, 4-byte checksum,
/// pseudo-random body; size from the same generator.
pub fn message(i: u64, max: usize) -> Vec<u8> {
    let mut s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let r = next();
    // Mostly small, some up to `max`.
    let size = match r % 16 {
        0 => (next() as usize) % (max + 1),
        1..=3 => (next() as usize) % 4097,
        _ => (next() as usize) % 257,
    }
    .max(12);
    let mut m = Vec::with_capacity(size);
    m.extend_from_slice(&i.to_le_bytes());
    m.extend_from_slice(&[0; 4]);
    while m.len() < size {
        m.extend_from_slice(&next().to_le_bytes());
    }
    m.truncate(size);
    let sum = m[12..].iter().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(*b)));
    m[8..12].copy_from_slice(&sum.to_le_bytes());
    m
}

/// Checks a message produced by [`message`]; returns its index.
pub fn check_message(m: &[u8]) -> Result<u64, String> {
    if m.len() < 12 {
        return Err(format!("message of {} bytes", m.len()));
    }
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&m[..8]);
    let i = u64::from_le_bytes(idx);
    let sum = m[12..].iter().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(*b)));
    let mut want = [0u8; 4];
    want.copy_from_slice(&m[8..12]);
    if u32::from_le_bytes(want) != sum {
        return Err(format!("message {i}: checksum mismatch"));
    }
    Ok(i)
}
