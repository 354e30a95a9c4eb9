//! Command-line interface (clap derive). Owns flag names, help texts and
//! parsing into [`Cli`]; turning flags into a checked configuration is
//! `config.rs`'s job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::seccomp::SeccompMode;

/// kerntransport host backend: a vhost-user device daemon (virtio device 60)
/// that maps guest channels to host Unix SOCK_SEQPACKET sockets.
#[derive(Debug, Parser)]
#[command(
    name = "kt-vhost-device",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run` when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the device daemon (the default).
    Run(RunArgs),
    /// Print a running daemon's counters from its control socket.
    Stats(StatsArgs),
    /// Have a running daemon read its policy files (and its config file)
    /// again: new VMs start, removed ones stop, policies change for new
    /// OPENs. Same as SIGHUP, but prints what happened.
    Reload(ReloadArgs),
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation messages.
    Info,
    /// Per-channel events.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Flags of `kt-vhost-device run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Serve the VMs of this config file (TOML, one [[vm]] section per VM;
    /// see docs/vhost-device.md) instead of the one VM the flags describe.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "socket_path", "policy", "listen", "max_msg_size", "max_channels",
            "rx_buf_size", "channel_buffer", "vm_buffer", "guest_id", "vm_name",
            "handshake_timeout", "open_timeout", "busy_poll_us", "queue_pairs", "rx_share",
        ]
    )]
    pub config: Option<PathBuf>,
    /// Name of the VM in logs, stats and on the control socket
    /// (default: vm<guest-id>).
    #[arg(long, value_name = "NAME")]
    pub vm_name: Option<String>,
    /// vhost-user Unix socket to listen on for the VMM (frontend).
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    pub socket_path: Option<PathBuf>,
    /// Policy file (TOML) naming the host services a guest may open.
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    pub policy: Option<PathBuf>,
    /// SOCK_SEQPACKET socket where host programs connect to guest services
    /// ("CONNECT <name>" handshake). Also offers KT_F_GUEST_LISTEN.
    #[arg(long, value_name = "PATH")]
    pub listen: Option<PathBuf>,
    /// Unix socket for `kt-vhost-device stats`.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Largest message payload in bytes, either direction (config space).
    #[arg(long, value_name = "N")]
    pub max_msg_size: Option<u32>,
    /// Channels open at once, both directions together (config space). The
    /// open-file limit is raised to fit them (max-channels + 128), or the
    /// daemon refuses to start if the hard limit is lower.
    #[arg(long, value_name = "N")]
    pub max_channels: Option<u32>,
    /// rx buffer size the driver should post, 256..=65536 (config space).
    #[arg(long, value_name = "N")]
    pub rx_buf_size: Option<u32>,
    /// Per-channel receive window in credit bytes for guest → host data;
    /// bounds the memory held per channel (default 4 × (max-msg-size + 32)).
    #[arg(long, value_name = "BYTES")]
    pub channel_buffer: Option<u32>,
    /// The VM's budget in credit bytes on guest → host data the daemon
    /// holds, shared by all its channels (their windows add up to at most
    /// this; each still gets max-msg-size + 32). 0: no VM-wide limit
    /// (default 1572864).
    #[arg(long, value_name = "BYTES")]
    pub vm_buffer: Option<u32>,
    /// Seconds a host connection on --listen may take to send its
    /// "CONNECT <name>" line; then it gets "ERR 110" and is closed.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u32,
    /// Seconds the guest may take to accept or refuse a host connection
    /// (OPEN_OK/OPEN_ERR); then the host program gets "ERR 110".
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub open_timeout: u32,
    /// Guest id reported in config space, logs and stats.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub guest_id: u32,
    /// Microseconds the worker keeps polling the tx ring and the host
    /// sockets after its last work before it sleeps (0..=1000, 0 = off);
    /// only while a channel is open.
    #[arg(long, value_name = "US", default_value_t = crate::config::DEFAULT_BUSY_POLL_US)]
    pub busy_poll_us: u32,
    /// rx/tx queue pairs served, 1..=16 (default 1). Above 1 the device
    /// offers KT_F_MULTIQUEUE and each pair gets its own worker thread.
    #[arg(long, value_name = "N")]
    pub queue_pairs: Option<u32>,
    /// While channels compete for a pair's rx ring, one channel may hold
    /// at most 1/N of its buffers that the guest has not consumed yet, so
    /// a flooding channel cannot queue a ring's worth ahead of the others'
    /// messages; 1..=64, 1 = no limit (default 8).
    #[arg(long, value_name = "N")]
    pub rx_share: Option<u32>,
    /// Log level (RUST_LOG overrides it).
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// System-call filter installed once the sockets are bound: `enforce`
    /// refuses calls outside the daemon's allow-list with EPERM, `log` only
    /// has the kernel log them, `off` installs none.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SeccompMode::Enforce)]
    pub seccomp: SeccompMode,
}

/// Flags of `kt-vhost-device stats`.
#[derive(Clone, Debug, Args)]
pub struct StatsArgs {
    /// The daemon's control socket (its --control).
    #[arg(long, value_name = "PATH")]
    pub control: PathBuf,
    /// Output format: a table, one JSON object, or the Prometheus text
    /// exposition format (for node-exporter's textfile collector).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = StatsFormat::Table)]
    pub format: StatsFormat,
    /// Same as --format json (kept for scripts).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Only this VM (by name).
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
}

/// Flags of `kt-vhost-device reload`.
#[derive(Clone, Debug, Args)]
pub struct ReloadArgs {
    /// The daemon's control socket (its --control).
    #[arg(long, value_name = "PATH")]
    pub control: PathBuf,
}

/// What `kt-vhost-device stats` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// A human-readable table.
    Table,
    /// One JSON object (`StatsSnapshot`).
    Json,
    /// Prometheus text exposition format 0.0.4, metrics `kt_device_*`.
    Prometheus,
}

impl StatsArgs {
    /// The format asked for, `--json` counting as `--format json`.
    pub fn format(&self) -> StatsFormat {
        if self.json {
            StatsFormat::Json
        } else {
            self.format
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_is_the_default() {
        let c = Cli::try_parse_from(["kt", "--socket-path", "/s", "--policy", "/p"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.run.socket_path, Some(PathBuf::from("/s")));
        let c =
            Cli::try_parse_from(["kt", "run", "--socket-path", "/s", "--policy", "/p"]).unwrap();
        assert!(matches!(c.command, Some(Command::Run(_))));
        let c = Cli::try_parse_from(["kt", "stats", "--control", "/c", "--json"]).unwrap();
        let Some(Command::Stats(a)) = c.command else {
            panic!("not stats: {c:?}");
        };
        assert_eq!(a.format(), StatsFormat::Json);
        for (args, want) in [
            (&["kt", "stats", "--control", "/c"][..], StatsFormat::Table),
            (
                &["kt", "stats", "--control", "/c", "--format", "json"][..],
                StatsFormat::Json,
            ),
            (
                &["kt", "stats", "--control", "/c", "--format", "prometheus"][..],
                StatsFormat::Prometheus,
            ),
        ] {
            let Some(Command::Stats(a)) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not stats: {args:?}");
            };
            assert_eq!(a.format(), want, "{args:?}");
        }
    }

    #[test]
    fn a_config_file_replaces_the_vm_flags() {
        let c = Cli::try_parse_from(["kt", "--config", "/etc/kt.toml"]).unwrap();
        assert_eq!(c.run.config, Some(PathBuf::from("/etc/kt.toml")));
        let c = Cli::try_parse_from(["kt", "run", "--config", "/c", "--control", "/s"]).unwrap();
        assert!(matches!(c.command, Some(Command::Run(_))));
        for bad in [
            &["kt", "--config", "/c", "--socket-path", "/s"][..],
            &["kt", "--config", "/c", "--policy", "/p"][..],
            &["kt", "--config", "/c", "--guest-id", "2"][..],
            &["kt"][..],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let c = Cli::try_parse_from(["kt", "reload", "--control", "/c"]).unwrap();
        assert!(matches!(c.command, Some(Command::Reload(_))));
    }

    #[test]
    fn missing_and_bad_flags_fail() {
        assert!(Cli::try_parse_from(["kt", "--policy", "/p"]).is_err());
        assert!(Cli::try_parse_from([
            "kt",
            "--socket-path",
            "/s",
            "--policy",
            "/p",
            "--max-msg-size",
            "x"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["kt", "stats"]).is_err());
        for bad in [
            &["kt", "stats", "--control", "/c", "--format", "xml"][..],
            &[
                "kt",
                "stats",
                "--control",
                "/c",
                "--json",
                "--format",
                "prometheus",
            ][..],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from([
            "kt",
            "--socket-path",
            "/s",
            "--policy",
            "/p",
            "--log-level",
            "loud"
        ])
        .is_err());
    }
}
