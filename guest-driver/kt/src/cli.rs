//! Command-line syntax of `kt` (clap derive). Only parsing and `--help`
//! text live here; the verbs are in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::guest::DEFAULT_DEVICE;

/// kerntransport message tool. Guest mode (default) uses /dev/kerntransport;
/// host mode (--host, or --socket on `serve`, `gen`, `verify`, ...) uses
/// kt-vhost-device's Unix SOCK_SEQPACKET sockets. Same verbs on both ends.
#[derive(Debug, Parser)]
#[command(name = "kt", version)]
pub struct Cli {
    /// Guest mode: the kerntransport character device.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_DEVICE)]
    pub device: PathBuf,

    /// Host mode: reach guest services through kt-vhost-device's listening
    /// socket at this path (SPEC §9 `CONNECT <name>` handshake).
    #[arg(long, global = true, value_name = "LISTEN_SOCKET")]
    pub host: Option<PathBuf>,

    /// Host mode: the device's max_msg_size (host programs cannot query it);
    /// larger messages are refused before they are sent.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = 65536)]
    pub max_msg_size: usize,

    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send messages: one per TEXT argument, one per --file, or one per
    /// stdin line.
    Send(SendArgs),
    /// Print the messages of one channel (optionally echo them back).
    Recv(RecvArgs),
    /// Guest: listen on NAME and print (or echo) the messages of every
    /// channel the host opens to it.
    Listen(ListenArgs),
    /// Interactive: stdin lines go out as messages, received messages are
    /// printed.
    Connect(ConnectArgs),
    /// Host: run a host service on a SOCK_SEQPACKET socket; each connection
    /// from kt-vhost-device is one guest channel.
    Serve(ServeArgs),
    /// Send N verifiable test messages (checked by `kt verify`).
    Gen(GenArgs),
    /// Receive N test messages and check order, sizes and checksums.
    Verify(VerifyArgs),
    /// Measure latency, throughput and message rate against an echo service.
    Bench(BenchArgs),
    /// Keep channels to an echo service busy with verified traffic,
    /// reopening each after every failure; print sent / delivered / refused
    /// / lost / reordered / duplicated.
    Soak(SoakArgs),
    /// Print the driver's sysfs attributes as a table.
    Stats(StatsArgs),
    /// Guest: print KT_IOC_INFO (message limit, guest id, channel state).
    Info(InfoArgs),
    /// Guest: print the services the host policy lets this guest open (the
    /// device's kt.services listing), one per line; or, with --wait NAME,
    /// wait until NAME is among them. Host (--host): print the names the
    /// guest's listeners serve (LIST).
    List(ListArgs),
}

/// How a verb gets its channel.
#[derive(Debug, Args, Clone)]
pub struct ChannelArgs {
    /// Service name. Guest: the host service to connect to (or, with
    /// --listen, the name to listen on). Host (--host): the guest service.
    /// Not used with --socket or --direct.
    #[arg(
        value_name = "NAME",
        required_unless_present_any = ["socket", "direct", "vsock", "serial"]
    )]
    pub name: Option<String>,

    /// Guest: listen on NAME and use the first channel the host opens,
    /// instead of connecting.
    #[arg(long, conflicts_with = "socket")]
    pub listen: bool,

    /// Host: act as the host service: listen on a SOCK_SEQPACKET socket at
    /// PATH and use the first connection kt-vhost-device makes (one guest
    /// channel).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Host: connect straight to a host service's socket at PATH, as
    /// kt-vhost-device does for each guest channel (no handshake). Tests
    /// host services without a VM.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["socket", "listen"])]
    pub direct: Option<PathBuf>,

    /// Use O_NONBLOCK: on EAGAIN wait in poll() and retry, and report how
    /// often that happened.
    #[arg(long)]
    pub nonblock: bool,

    /// Fail when nothing arrives (or, with --socket, nobody connects) for
    /// this many seconds. Default: wait forever.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,

    /// Guest, peer transport (benchmarks): an AF_VSOCK SOCK_STREAM
    /// connection to CID:PORT instead of kerntransport; messages carry a
    /// u32 little-endian length prefix. No NAME.
    #[arg(long, value_name = "CID:PORT", conflicts_with_all = ["socket", "direct", "listen", "serial"])]
    pub vsock: Option<String>,

    /// Guest, peer transport (benchmarks): a virtio-serial port (e.g.
    /// /dev/virtio-ports/kt.bench) instead of kerntransport; a byte stream,
    /// so messages carry a u32 little-endian length prefix. No NAME.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["socket", "direct", "listen"])]
    pub serial: Option<PathBuf>,

    /// With --vsock/--serial: write at most BYTES per send()/write() call
    /// (a frame then takes several calls). Works around vsock backends that
    /// cannot take a TX packet split over several descriptors (Linux sends
    /// packets above 32 KiB that way).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub write_chunk: Option<u64>,
}

/// Size and seed of a test stream; gen and verify must agree.
#[derive(Debug, Args, Clone, Copy)]
pub struct StreamArgs {
    /// Smallest message in bytes (at least 1).
    #[arg(long, value_name = "BYTES", default_value_t = 1)]
    pub min_size: usize,

    /// Largest message in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub max_size: usize,

    /// Seed of the size and payload generator.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
}

/// `kt send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Channel to send on.
    #[command(flatten)]
    pub channel: ChannelArgs,

    /// Messages, one per argument (with --socket or --direct every
    /// positional is TEXT).
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,

    /// Send the contents of FILE as one message (repeatable).
    #[arg(long, value_name = "FILE")]
    pub file: Vec<PathBuf>,
}

/// Output options of the verbs that print messages.
#[derive(Debug, Args, Clone, Copy)]
pub struct PrintArgs {
    /// Print messages as hex instead of raw bytes.
    #[arg(long)]
    pub hex: bool,

    /// Do not print messages.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `kt recv`.
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Channel to read.
    #[command(flatten)]
    pub channel: ChannelArgs,

    /// Stop after N messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Answer each message with the same bytes.
    #[arg(long)]
    pub echo: bool,

    /// Output options.
    #[command(flatten)]
    pub print: PrintArgs,
}

/// `kt listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Service name to listen on.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Exit after N messages (over all channels).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Exit after N channels have been served to their end.
    #[arg(long, value_name = "N")]
    pub channels: Option<u64>,

    /// Answer each message with the same bytes.
    #[arg(long)]
    pub echo: bool,

    /// Output options.
    #[command(flatten)]
    pub print: PrintArgs,
}

/// `kt connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Channel to use.
    #[command(flatten)]
    pub channel: ChannelArgs,

    /// Exit after receiving N messages (and keep running after stdin ends
    /// until then); without it, exit when stdin ends or the channel closes.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Output options.
    #[command(flatten)]
    pub print: PrintArgs,
}

/// What `kt serve` does with each channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServeMode {
    /// Send every message back.
    Echo,
    /// Read and discard; print a per-channel summary when it closes.
    Sink,
    /// Send --count test messages (as `kt gen`), then close.
    Source,
    /// Print every message.
    Print,
    /// The peer of `kt bench --direction to-host|from-host|both`: per
    /// request, echo (round trips), sink (guest to host) or source (host to
    /// guest) a batch and report what it moved and the CPU it used.
    Bench,
}

/// `kt serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Path of the listening socket (the path kt-vhost-device's policy names).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,

    /// Listen on a Unix SOCK_STREAM socket instead, each connection
    /// carrying u32 little-endian length-prefixed messages: the host end of
    /// a peer transport for benchmarks (vhost-device-vsock's
    /// `<uds-path>_<port>` socket, QEMU's virtio-serial chardev socket).
    #[arg(long)]
    pub framed: bool,

    /// What to do with each channel.
    #[arg(long, value_enum, default_value_t = ServeMode::Echo)]
    pub mode: ServeMode,

    /// Source mode: messages to send on each channel.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub count: u64,

    /// Exit after N channels have been served to their end.
    #[arg(long, value_name = "N")]
    pub channels: Option<u64>,

    /// Source mode: the test stream.
    #[command(flatten)]
    pub stream: StreamArgs,

    /// Output options (print mode).
    #[command(flatten)]
    pub print: PrintArgs,

    /// Bench mode: also count the CPU time of the processes whose PIDs FILE
    /// lists (whitespace-separated, read at each request; e.g. the VMM and
    /// the device backend). This process is always counted.
    #[arg(long, value_name = "FILE")]
    pub cpu_pids: Option<PathBuf>,
}

/// What `kt bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchDirection {
    /// Against an echo service: round trips, and streams echoed back
    /// (both directions loaded at once).
    Echo,
    /// Against `kt serve --mode bench`: round trips, then each stream
    /// guest to host only (the peer sinks and reports).
    ToHost,
    /// Against `kt serve --mode bench`: round trips, then each stream host
    /// to guest only (the peer sources, this side receives and counts).
    FromHost,
    /// Against `kt serve --mode bench`: `to-host` then `from-host`, one
    /// direction at a time.
    Both,
}

/// `kt gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Channel to send on.
    #[command(flatten)]
    pub channel: ChannelArgs,

    /// Number of messages.
    #[arg(long, value_name = "N")]
    pub count: u64,

    /// The test stream.
    #[command(flatten)]
    pub stream: StreamArgs,
}

/// `kt verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Channel to read.
    #[command(flatten)]
    pub channel: ChannelArgs,

    /// Number of messages expected.
    #[arg(long, value_name = "N")]
    pub count: u64,

    /// The test stream (same values as the sender's).
    #[command(flatten)]
    pub stream: StreamArgs,

    /// Keep checking after the first problem and report all of them.
    #[arg(long)]
    pub keep_going: bool,
}

/// `kt soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// The echo service. Guest: a host service (`kt serve --mode echo`);
    /// host (--host): a guest service (`k.echo`, `kt listen NAME --echo`).
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Channels kept busy at once, each by its own thread.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub channels: u32,

    /// Messages to send over all channels and streams; then drain and exit.
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// Smallest message in bytes (at least 1).
    #[arg(long, value_name = "BYTES", default_value_t = 1)]
    pub min_size: usize,

    /// Largest message in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    pub max_size: usize,

    /// Each channel carries streams of a random length in
    /// MIN..=MAX messages, a new channel per stream.
    #[arg(long, value_name = "MIN", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub min_stream: u64,

    /// See --min-stream.
    #[arg(long, value_name = "MAX", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stream: u64,

    /// Bytes a channel may have in flight (sent, echo not yet back); at
    /// least --max-size. Keep it under the channel's credit window so the
    /// echo service never blocks on us.
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    pub window: usize,

    /// Seed of the streams (default: from the clock and the PID, printed).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// No echo and no error for this long with messages in flight is a
    /// stall: they count as lost, and the channel is reopened.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub stall_secs: f64,

    /// Keep trying to reopen a channel for this long (the service, the
    /// driver or kt-vhost-device may be restarting) before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub retry_secs: f64,

    /// Print a `KT-SOAK-PROGRESS` line this often (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub report_secs: f64,

    /// Label of the printed lines (default: NAME).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,

    /// Host: connect straight to the echo service's socket at PATH (no
    /// kt-vhost-device, NAME only labels the run): soaks a host service.
    #[arg(long, value_name = "PATH")]
    pub direct: Option<PathBuf>,
}

/// `kt bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Channel to an echo service (`kt serve --mode echo`,
    /// `kt listen NAME --echo`, or a kernel echo service), or with
    /// --direction to-host|from-host|both to `kt serve --mode bench`.
    #[command(flatten)]
    pub channel: ChannelArgs,

    /// What to measure: echoed streams, or one direction at a time against
    /// a bench peer (throughput and rate to the receiver's last message,
    /// CPU per message and per MB of both ends).
    #[arg(long, value_enum, default_value_t = BenchDirection::Echo)]
    pub direction: BenchDirection,

    /// Ping-pong round trips measured (0: none).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub iterations: u64,

    /// Ping-pong message size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub size: usize,

    /// Throughput message size in bytes (default: the channel's limit, at
    /// most 65536); repeat for several sizes, each measured in turn.
    #[arg(long, value_name = "BYTES")]
    pub bulk_size: Vec<usize>,

    /// Throughput: megabytes to stream per size (0: no throughput phase).
    #[arg(long, value_name = "MB", default_value_t = 16)]
    pub bulk_mb: u64,

    /// Message-rate message size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    pub small_size: usize,

    /// Message-rate: messages to stream (0: no message-rate phase).
    #[arg(long, value_name = "N", default_value_t = 20000)]
    pub small_count: u64,

    /// Guest kerntransport against the bench peer: move the message-rate
    /// phases' messages N per system call (KT_IOC_SENDV / KT_IOC_RECVV, at
    /// most 64); 1 is one write()/read() per message.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub batch: u16,

    /// Channel fairness instead of the phases above: open N channels to the
    /// echo peer, measure --iterations round trips of --size bytes over
    /// N-1 of them in turn, first idle, then while the N-th floods
    /// (--small-size messages sent and their echoes read as fast as they
    /// go, one thread each); print p50/p99 of both, p99 flooding / idle
    /// (target: at most 2x) and the flood's rate. Echo peer only.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fairness: u32,

    /// With --fairness: open the flooding channel to NAME instead (with
    /// --direct: the socket path NAME), a host source (`kt serve --mode
    /// source`), and only read it: a host -> guest flood.
    #[arg(long, value_name = "NAME", requires = "fairness")]
    pub flood_from: Option<String>,

    /// With --fairness: open the flooding channel to NAME instead (with
    /// --direct: the socket path NAME), a host sink (`kt serve --mode
    /// sink`), and only write to it: a guest -> host flood.
    #[arg(
        long,
        value_name = "NAME",
        requires = "fairness",
        conflicts_with = "flood_from"
    )]
    pub flood_to: Option<String>,
}

/// `kt stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The driver's sysfs directory (one entry per bound virtio device).
    #[arg(long, value_name = "DIR", default_value = crate::stats::DEFAULT_ROOT)]
    pub sysfs: PathBuf,
    /// Output format: a table of every attribute, or the driver's counters
    /// in the Prometheus text exposition format (metrics kt_guest_*).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = StatsFormat::Table)]
    pub format: StatsFormat,
}

/// What `kt stats` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// `device attribute value` rows.
    Table,
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
}

/// `kt info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Connect to this host service first and show the channel's info.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
}

/// `kt list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print nothing; keep the kt.services channel open until a listing
    /// names NAME (exit 0), e.g. after the host reloads its policy.
    #[arg(long, value_name = "NAME")]
    pub wait: Option<String>,

    /// Give up (exit 1) after SECS. Default: 10 for a listing, no limit
    /// with --wait.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

/// Parses the command line; clap's own message is folded into one line.
/// `Ok(Err(text))` is help or version output to print with exit 0.
pub fn parse<I, T>(args: I) -> Result<Result<Cli, String>, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(Ok(cli)),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Ok(Err(e.render().to_string()))
            }
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                Err("a subcommand is required; see `kt --help`".to_string())
            }
            _ => Err(one_line(&e.render().to_string())),
        },
    }
}

/// Folds clap's multi-line error into one line: drops the usage and "For
/// more information" parts and the `error: ` prefix.
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let t = line.trim();
        if t.starts_with("Usage:") || t.starts_with("For more information") {
            break;
        }
        if !t.is_empty() {
            parts.push(t.strip_prefix("error: ").unwrap_or(t));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(args: &[&str]) -> String {
        let mut v = vec!["kt"];
        v.extend_from_slice(args);
        parse(v).unwrap_err()
    }

    fn ok(args: &[&str]) -> Cli {
        let mut v = vec!["kt"];
        v.extend_from_slice(args);
        parse(v).unwrap().unwrap()
    }

    #[test]
    fn parses_the_verbs() {
        let c = ok(&["send", "echo", "a", "b"]);
        match c.command {
            Command::Send(s) => {
                assert_eq!(s.channel.name.as_deref(), Some("echo"));
                assert_eq!(s.texts, ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        let c = ok(&["--host", "/run/kt.sock", "gen", "svc", "--count", "5"]);
        assert_eq!(
            c.host.as_deref(),
            Some(std::path::Path::new("/run/kt.sock"))
        );
        let c = ok(&[
            "gen",
            "--socket",
            "/tmp/s",
            "--count",
            "5",
            "--max-size",
            "9",
        ]);
        match c.command {
            Command::Gen(g) => {
                assert!(g.channel.name.is_none());
                assert_eq!((g.count, g.stream.max_size, g.stream.min_size), (5, 9, 1));
            }
            other => panic!("{other:?}"),
        }
        let c = ok(&["serve", "--socket", "/tmp/s", "--mode", "sink"]);
        assert!(matches!(
            c.command,
            Command::Serve(ServeArgs {
                mode: ServeMode::Sink,
                ..
            })
        ));
        let c = ok(&["verify", "svc", "--listen", "--count", "1", "--nonblock"]);
        assert!(matches!(
            c.command,
            Command::Verify(VerifyArgs {
                channel: ChannelArgs {
                    listen: true,
                    nonblock: true,
                    ..
                },
                ..
            })
        ));
        assert!(matches!(
            ok(&["stats"]).command,
            Command::Stats(StatsArgs {
                format: StatsFormat::Table,
                ..
            })
        ));
        assert!(matches!(
            ok(&["stats", "--format", "prometheus"]).command,
            Command::Stats(StatsArgs {
                format: StatsFormat::Prometheus,
                ..
            })
        ));
        assert!(matches!(ok(&["info"]).command, Command::Info(_)));
        assert!(matches!(
            ok(&["list"]).command,
            Command::List(ListArgs {
                wait: None,
                timeout: None
            })
        ));
        match ok(&["list", "--wait", "new", "--timeout", "2.5"]).command {
            Command::List(l) => {
                assert_eq!(l.wait.as_deref(), Some("new"));
                assert_eq!(l.timeout, Some(2.5));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok(&["listen", "svc", "--echo"]).command,
            Command::Listen(ListenArgs { echo: true, .. })
        ));
    }

    #[test]
    fn usage_errors_are_one_line() {
        for (args, want) in [
            (&["gen", "svc"][..], "--count"),
            (&["send"][..], "<NAME>"),
            (&["bogus"][..], "unrecognized subcommand 'bogus'"),
            (&["serve", "--mode", "echo"][..], "--socket"),
            (
                &["serve", "--socket", "x", "--mode", "fast"][..],
                "invalid value 'fast'",
            ),
            (
                &["gen", "svc", "--count", "many"][..],
                "invalid value 'many'",
            ),
            (
                &["recv", "svc", "--listen", "--socket", "p"][..],
                "cannot be used with",
            ),
            (&[][..], "subcommand"),
        ] {
            let e = err(args);
            assert!(!e.contains('\n'), "{args:?}: multi-line: {e}");
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.starts_with("error:"), "{e}");
        }
    }

    #[test]
    fn help_is_not_an_error() {
        let help = parse(["kt", "--help"]).unwrap().unwrap_err();
        assert!(help.contains("gen"));
        assert!(help.contains("verify"));
        assert!(help.contains("list"));
    }
}
