//! The checked daemon configuration: `TryFrom<RunArgs> for Config` applies
//! defaults, range-checks every number and loads the policy, so `run` only
//! ever sees valid values.

use std::path::PathBuf;
use std::time::Duration;

use kt_proto::consts::{
    DEFAULT_MAX_CHANNELS, DEFAULT_MAX_MSG_SIZE, DEFAULT_RX_BUF_SIZE, MAX_MSG_SIZE_LIMIT,
    MAX_RX_BUF_SIZE, MIN_RX_BUF_SIZE, MSG_OVERHEAD,
};
use kt_proto::DeviceConfig;

use crate::args::RunArgs;
use crate::policy::{Policy, PolicyError};

/// Largest per-channel window accepted (bounds per-channel memory).
pub const MAX_CHANNEL_BUFFER: u32 = 64 << 20;
/// Largest `--handshake-timeout` and `--open-timeout` in seconds.
pub const MAX_TIMEOUT_SECS: u32 = 3600;
/// Largest `--max-channels` (device ids use bit 31, guest ids the rest).
pub const MAX_CHANNELS_LIMIT: u32 = 1 << 16;

/// A bad flag value or policy file.
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
    /// The policy file is bad.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Everything `run` needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// vhost-user socket path.
    pub socket_path: PathBuf,
    /// The policy.
    pub policy: Policy,
    /// Host → guest listening socket.
    pub listen: Option<PathBuf>,
    /// Control socket.
    pub control: Option<PathBuf>,
    /// Config space values.
    pub device: DeviceConfig,
    /// Per-channel guest → host window in credit bytes.
    pub channel_buffer: u32,
    /// Time a host connection has to send its `CONNECT` line.
    pub handshake_timeout: Duration,
    /// Time the guest has to answer a host-opened channel's `OPEN`.
    pub open_timeout: Duration,
    /// System-call filter mode.
    pub seccomp: crate::seccomp::SeccompMode,
    /// How long the worker polls for more work before it sleeps.
    pub busy_poll: Duration,
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

impl TryFrom<RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: RunArgs) -> Result<Config, ConfigError> {
        let socket_path = a.socket_path.ok_or(ConfigError::Missing("socket-path"))?;
        let policy_path = a.policy.ok_or(ConfigError::Missing("policy"))?;
        let max_msg_size = range(
            "max-msg-size",
            a.max_msg_size.unwrap_or(DEFAULT_MAX_MSG_SIZE),
            1,
            MAX_MSG_SIZE_LIMIT,
        )?;
        let max_channels = range(
            "max-channels",
            a.max_channels.unwrap_or(DEFAULT_MAX_CHANNELS),
            1,
            MAX_CHANNELS_LIMIT,
        )?;
        let rx_buf_size = range(
            "rx-buf-size",
            a.rx_buf_size.unwrap_or(DEFAULT_RX_BUF_SIZE),
            MIN_RX_BUF_SIZE,
            MAX_RX_BUF_SIZE,
        )?;
        let min_window = max_msg_size + MSG_OVERHEAD;
        let channel_buffer = range(
            "channel-buffer",
            a.channel_buffer.unwrap_or(4 * min_window),
            min_window,
            MAX_CHANNEL_BUFFER,
        )?;
        let handshake_timeout = range(
            "handshake-timeout",
            a.handshake_timeout,
            1,
            MAX_TIMEOUT_SECS,
        )?;
        let open_timeout = range("open-timeout", a.open_timeout, 1, MAX_TIMEOUT_SECS)?;
        let busy_poll_us = range("busy-poll-us", a.busy_poll_us, 0, MAX_BUSY_POLL_US)?;
        let policy = Policy::load(&policy_path)?;
        Ok(Config {
            socket_path,
            policy,
            listen: a.listen,
            control: a.control,
            device: DeviceConfig {
                max_msg_size,
                max_channels,
                rx_buf_size,
                guest_id: a.guest_id,
            },
            channel_buffer,
            handshake_timeout: Duration::from_secs(handshake_timeout.into()),
            open_timeout: Duration::from_secs(open_timeout.into()),
            seccomp: a.seccomp,
            busy_poll: Duration::from_micros(busy_poll_us.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::LogLevel;

    fn args(policy: &str) -> RunArgs {
        RunArgs {
            socket_path: Some("/tmp/x.sock".into()),
            policy: Some(policy.into()),
            listen: None,
            control: None,
            max_msg_size: None,
            max_channels: None,
            rx_buf_size: None,
            channel_buffer: None,
            handshake_timeout: 10,
            open_timeout: 30,
            guest_id: 3,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
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
        assert_eq!(c.device.max_msg_size, DEFAULT_MAX_MSG_SIZE);
        assert_eq!(c.channel_buffer, 4 * (DEFAULT_MAX_MSG_SIZE + 32));
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
        assert!(Config::try_from(args("/nonexistent.toml")).is_err());
        std::fs::remove_file(p).unwrap();
    }
}
