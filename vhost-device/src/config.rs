//! The checked daemon configuration: `TryFrom<RunArgs> for Config` applies
//! defaults, range-checks every number and loads the policies, so `run`
//! only ever sees valid values. One VM comes from the flags; several come
//! from a config file (`conffile.rs`), whose sections go through the same
//! checks ([`VmSettings::check`]).

use std::path::PathBuf;
use std::time::Duration;

use kt_proto::consts::{
    DEFAULT_MAX_CHANNELS, DEFAULT_MAX_MSG_SIZE, DEFAULT_RX_BUF_SIZE, MAX_MSG_SIZE_LIMIT,
    MAX_QUEUE_PAIRS, MAX_RX_BUF_SIZE, MIN_RX_BUF_SIZE, MSG_OVERHEAD,
};
use kt_proto::DeviceConfig;

use crate::args::RunArgs;
use crate::policy::{Policy, PolicyError};

/// Largest per-channel window accepted (bounds per-channel memory).
pub const MAX_CHANNEL_BUFFER: u32 = 64 << 20;
/// Default `--vm-buffer`: the VM's budget on held guest → host data
/// (raised to one largest message when `max_msg_size` is above it).
pub const DEFAULT_VM_BUFFER: u32 = 1536 << 10;
/// Largest `--handshake-timeout` and `--open-timeout` in seconds.
pub const MAX_TIMEOUT_SECS: u32 = 3600;
/// Largest `--max-channels` (device ids use bit 31, guest ids the rest).
pub const MAX_CHANNELS_LIMIT: u32 = 1 << 16;
/// Default of `--handshake-timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u32 = 10;
/// Default of `--queue-pairs`: one pair, the device of a driver without
/// `KT_F_MULTIQUEUE` (no feature bit offered, three queues).
pub const DEFAULT_QUEUE_PAIRS: u32 = 1;
/// Default of `--rx-share`: a channel may hold 1/8 of a contended rx ring.
pub const DEFAULT_RX_SHARE: u32 = 8;
/// Largest `--rx-share`: 1/64 of the ring.
pub const MAX_RX_SHARE: u32 = 64;
/// Default of `--open-timeout`.
pub const DEFAULT_OPEN_TIMEOUT_SECS: u32 = 30;

/// A bad flag value, config file or policy file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required flag is missing.
    #[error("missing required flag --{0}")]
    Missing(&'static str),
    /// A number out of range.
    #[error("--{flag} {value}: {why}")]
    Range {
        /// Flag name.
        flag: &'static str,
        /// Given value.
        value: u32,
        /// The allowed range.
        why: String,
    },
    /// A VM name that cannot name a VM.
    #[error("VM name {0:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    VmName(String),
    /// The policy file is bad.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The config file is bad.
    #[error(transparent)]
    File(#[from] crate::conffile::ConfFileError),
}

/// The settings of one VM as given (flags or a config file section),
/// before checking: `None` takes the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmSettings {
    /// VM name (logs, stats, control socket).
    pub name: Option<String>,
    /// vhost-user socket path.
    pub socket_path: Option<PathBuf>,
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// Host → guest listening socket.
    pub listen: Option<PathBuf>,
    /// Config space `max_msg_size`.
    pub max_msg_size: Option<u32>,
    /// Config space `max_channels`.
    pub max_channels: Option<u32>,
    /// Config space `rx_buf_size`.
    pub rx_buf_size: Option<u32>,
    /// Per-channel guest → host window.
    pub channel_buffer: Option<u32>,
    /// The VM's budget on held guest → host data (0: none).
    pub vm_buffer: Option<u32>,
    /// Seconds for a host connection's `CONNECT` line.
    pub handshake_timeout: Option<u32>,
    /// Seconds for the guest's answer to a host `OPEN`.
    pub open_timeout: Option<u32>,
    /// Config space `guest_id`.
    pub guest_id: Option<u32>,
    /// Busy-poll time in microseconds.
    pub busy_poll_us: Option<u32>,
    /// rx/tx queue pairs (config space `max_queue_pairs`).
    pub queue_pairs: Option<u32>,
    /// Divisor of a channel's share of a contended rx ring.
    pub rx_share: Option<u32>,
}

/// One VM, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Name in logs, stats and on the control socket.
    pub name: String,
    /// vhost-user socket path.
    pub socket_path: PathBuf,
    /// Where the policy was read from (reloads read it again).
    pub policy_path: PathBuf,
    /// The policy.
    pub policy: Policy,
    /// Host → guest listening socket.
    pub listen: Option<PathBuf>,
    /// Config space values.
    pub device: DeviceConfig,
    /// Per-channel guest → host window in credit bytes.
    pub channel_buffer: u32,
    /// The sum of the windows of all the VM's channels, in credit bytes
    /// (0: no VM-wide limit); each still gets one largest message.
    pub vm_buffer: u32,
    /// Time a host connection has to send its `CONNECT` line.
    pub handshake_timeout: Duration,
    /// Time the guest has to answer a host-opened channel's `OPEN`.
    pub open_timeout: Duration,
    /// How long the worker polls for more work before it sleeps.
    pub busy_poll: Duration,
    /// A channel holds at most 1/`rx_share` of a contended rx ring.
    pub rx_share: u16,
}

impl VmConfig {
    /// Whether `other` differs only in its policy (a reload can apply it
    /// to a running VM; anything else needs the VM removed and added).
    pub fn same_but_policy(&self, other: &VmConfig) -> bool {
        let strip = |c: &VmConfig| VmConfig {
            policy: Policy::default(),
            ..c.clone()
        };
        strip(self) == strip(other)
    }

    /// The socket paths this VM binds.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.socket_path).chain(self.listen.as_ref())
    }
}

/// Where the VMs came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// One VM from the command-line flags.
    Flags,
    /// The VMs of this config file (reloads read it again).
    File {
        /// The file.
        path: PathBuf,
        /// `--control`, used when the file names no control socket.
        control_flag: Option<PathBuf>,
    },
}

/// Everything `run` needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The VMs to serve (at least one unless a config file lists none).
    pub vms: Vec<VmConfig>,
    /// Control socket.
    pub control: Option<PathBuf>,
    /// System-call filter mode.
    pub seccomp: crate::seccomp::SeccompMode,
    /// Where the VMs came from.
    pub source: Source,
}

/// Default of `--busy-poll-us`.
pub const DEFAULT_BUSY_POLL_US: u32 = 0;
/// Largest `--busy-poll-us`.
pub const MAX_BUSY_POLL_US: u32 = 1000;

fn range(flag: &'static str, value: u32, lo: u32, hi: u32) -> Result<u32, ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Range {
            flag,
            value,
            why: format!("must be between {lo} and {hi}"),
        })
    }
}

/// Whether `name` can name a VM: 1..=64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_vm_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl VmSettings {
    /// Applies defaults, checks every value and loads the policy.
    pub fn check(self) -> Result<VmConfig, ConfigError> {
        let socket_path = self
            .socket_path
            .ok_or(ConfigError::Missing("socket-path"))?;
        let policy_path = self.policy.ok_or(ConfigError::Missing("policy"))?;
        let guest_id = self.guest_id.unwrap_or(0);
        let name = self.name.unwrap_or_else(|| format!("vm{guest_id}"));
        if !valid_vm_name(&name) {
            return Err(ConfigError::VmName(name));
        }
        let max_msg_size = range(
            "max-msg-size",
            self.max_msg_size.unwrap_or(DEFAULT_MAX_MSG_SIZE),
            1,
            MAX_MSG_SIZE_LIMIT,
        )?;
        let max_channels = range(
            "max-channels",
            self.max_channels.unwrap_or(DEFAULT_MAX_CHANNELS),
            1,
            MAX_CHANNELS_LIMIT,
        )?;
        let rx_buf_size = range(
            "rx-buf-size",
            self.rx_buf_size.unwrap_or(DEFAULT_RX_BUF_SIZE),
            MIN_RX_BUF_SIZE,
            MAX_RX_BUF_SIZE,
        )?;
        let min_window = max_msg_size + MSG_OVERHEAD;
        let channel_buffer = range(
            "channel-buffer",
            self.channel_buffer.unwrap_or(4 * min_window),
            min_window,
            MAX_CHANNEL_BUFFER,
        )?;
        let vm_buffer = match self.vm_buffer {
            Some(0) => 0,
            Some(v) => range("vm-buffer", v, min_window, u32::MAX)?,
            None => DEFAULT_VM_BUFFER.max(min_window),
        };
        let handshake_timeout = range(
            "handshake-timeout",
            self.handshake_timeout
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            1,
            MAX_TIMEOUT_SECS,
        )?;
        let open_timeout = range(
            "open-timeout",
            self.open_timeout.unwrap_or(DEFAULT_OPEN_TIMEOUT_SECS),
            1,
            MAX_TIMEOUT_SECS,
        )?;
        let busy_poll_us = range(
            "busy-poll-us",
            self.busy_poll_us.unwrap_or(DEFAULT_BUSY_POLL_US),
            0,
            MAX_BUSY_POLL_US,
        )?;
        let queue_pairs = range(
            "queue-pairs",
            self.queue_pairs.unwrap_or(DEFAULT_QUEUE_PAIRS),
            1,
            u32::from(MAX_QUEUE_PAIRS),
        )?;
        let rx_share = range(
            "rx-share",
            self.rx_share.unwrap_or(DEFAULT_RX_SHARE),
            1,
            MAX_RX_SHARE,
        )?;
        let policy = Policy::load(&policy_path)?;
        Ok(VmConfig {
            name,
            socket_path,
            policy_path,
            policy,
            listen: self.listen,
            device: DeviceConfig {
                max_msg_size,
                max_channels,
                rx_buf_size,
                guest_id,
                // In range (checked above).
                max_queue_pairs: queue_pairs as u16,
            },
            channel_buffer,
            vm_buffer,
            handshake_timeout: Duration::from_secs(handshake_timeout.into()),
            open_timeout: Duration::from_secs(open_timeout.into()),
            busy_poll: Duration::from_micros(busy_poll_us.into()),
            // In range (checked above).
            rx_share: rx_share as u16,
        })
    }
}

impl TryFrom<RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: RunArgs) -> Result<Config, ConfigError> {
        if let Some(file) = a.config {
            let f = crate::conffile::load(&file)?;
            return Ok(Config {
                vms: f.vms,
                control: f.control.or_else(|| a.control.clone()),
                seccomp: a.seccomp,
                source: Source::File {
                    path: file,
                    control_flag: a.control,
                },
            });
        }
        let vm = VmSettings {
            name: a.vm_name,
            socket_path: a.socket_path,
            policy: a.policy,
            listen: a.listen,
            max_msg_size: a.max_msg_size,
            max_channels: a.max_channels,
            rx_buf_size: a.rx_buf_size,
            channel_buffer: a.channel_buffer,
            vm_buffer: a.vm_buffer,
            handshake_timeout: Some(a.handshake_timeout),
            open_timeout: Some(a.open_timeout),
            guest_id: Some(a.guest_id),
            busy_poll_us: Some(a.busy_poll_us),
            queue_pairs: a.queue_pairs,
            rx_share: a.rx_share,
        }
        .check()?;
        Ok(Config {
            vms: vec![vm],
            control: a.control,
            seccomp: a.seccomp,
            source: Source::Flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::LogLevel;

    fn args(policy: &str) -> RunArgs {
        RunArgs {
            config: None,
            vm_name: None,
            socket_path: Some("/tmp/x.sock".into()),
            policy: Some(policy.into()),
            listen: None,
            control: None,
            max_msg_size: None,
            max_channels: None,
            rx_buf_size: None,
            channel_buffer: None,
            vm_buffer: None,
            handshake_timeout: 10,
            open_timeout: 30,
            guest_id: 3,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            queue_pairs: None,
            rx_share: None,
            log_level: LogLevel::Info,
            seccomp: crate::seccomp::SeccompMode::Enforce,
        }
    }

    fn policy_file() -> PathBuf {
        let p = std::env::temp_dir().join(format!("kt-cfg-{}.toml", std::process::id()));
        std::fs::write(&p, "[[service]]\nname = \"echo\"\nsocket = \"/tmp/e\"\n").unwrap();
        p
    }

    #[test]
    fn defaults_and_ranges() {
        let p = policy_file();
        let c = Config::try_from(args(p.to_str().unwrap())).unwrap();
        assert_eq!(c.source, Source::Flags);
        let c = c.vms[0].clone();
        assert_eq!(c.name, "vm3");
        assert_eq!(c.device.max_msg_size, DEFAULT_MAX_MSG_SIZE);
        assert_eq!(c.channel_buffer, 4 * (DEFAULT_MAX_MSG_SIZE + 32));
        assert_eq!(c.vm_buffer, DEFAULT_VM_BUFFER);
        assert_eq!(c.device.guest_id, 3);
        let mut a = args(p.to_str().unwrap());
        a.max_msg_size = Some(0);
        let e = Config::try_from(a).unwrap_err().to_string();
        assert_eq!(e, "--max-msg-size 0: must be between 1 and 1048576");
        let mut a = args(p.to_str().unwrap());
        a.channel_buffer = Some(100);
        assert!(Config::try_from(a)
            .unwrap_err()
            .to_string()
            .starts_with("--channel-buffer 100"));
        let mut a = args(p.to_str().unwrap());
        a.rx_buf_size = Some(100);
        assert!(Config::try_from(a).is_err());
        let mut a = args(p.to_str().unwrap());
        a.vm_buffer = Some(1000);
        assert_eq!(
            Config::try_from(a).unwrap_err().to_string(),
            "--vm-buffer 1000: must be between 65568 and 4294967295"
        );
        let mut a = args(p.to_str().unwrap());
        a.vm_buffer = Some(0);
        assert_eq!(Config::try_from(a).unwrap().vms[0].vm_buffer, 0);
        let mut a = args(p.to_str().unwrap());
        a.max_msg_size = Some(1 << 20);
        let big = Config::try_from(a).unwrap().vms[0].vm_buffer;
        assert!(big >= (1 << 20) + 32, "the default fits one message");
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.open_timeout, Duration::from_secs(30));
        let mut a = args(p.to_str().unwrap());
        a.handshake_timeout = 0;
        let e = Config::try_from(a).unwrap_err().to_string();
        assert_eq!(e, "--handshake-timeout 0: must be between 1 and 3600");
        let mut a = args(p.to_str().unwrap());
        a.open_timeout = 3601;
        let e = Config::try_from(a).unwrap_err().to_string();
        assert_eq!(e, "--open-timeout 3601: must be between 1 and 3600");
        assert_eq!(
            c.busy_poll,
            Duration::from_micros(DEFAULT_BUSY_POLL_US.into())
        );
        let mut a = args(p.to_str().unwrap());
        a.busy_poll_us = 1001;
        let e = Config::try_from(a).unwrap_err().to_string();
        assert_eq!(e, "--busy-poll-us 1001: must be between 0 and 1000");
        assert_eq!(c.device.max_queue_pairs, 1);
        let mut a = args(p.to_str().unwrap());
        a.queue_pairs = Some(16);
        let c16 = Config::try_from(a).unwrap();
        assert_eq!(c16.vms[0].device.max_queue_pairs, 16);
        for bad in [0, 17] {
            let mut a = args(p.to_str().unwrap());
            a.queue_pairs = Some(bad);
            let e = Config::try_from(a).unwrap_err().to_string();
            assert_eq!(e, format!("--queue-pairs {bad}: must be between 1 and 16"));
        }
        assert_eq!(c.rx_share, DEFAULT_RX_SHARE as u16);
        let mut a = args(p.to_str().unwrap());
        a.rx_share = Some(1);
        assert_eq!(Config::try_from(a).unwrap().vms[0].rx_share, 1);
        for bad in [0, 65] {
            let mut a = args(p.to_str().unwrap());
            a.rx_share = Some(bad);
            let e = Config::try_from(a).unwrap_err().to_string();
            assert_eq!(e, format!("--rx-share {bad}: must be between 1 and 64"));
        }
        assert!(Config::try_from(args("/nonexistent.toml")).is_err());
        std::fs::remove_file(p).unwrap();
    }
}
