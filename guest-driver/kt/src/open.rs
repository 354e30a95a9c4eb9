//! Turns the channel options of a verb (NAME, --listen, --socket, global
//! --host/--device, --direct) into an open [`Channel`]: guest connect, guest
//! listen+accept, host connect through the device, host service, or a
//! direct connection to a host service.

use std::path::PathBuf;
use std::time::Duration;

use crate::channel::Channel;
use crate::cli::{ChannelArgs, Cli};
use crate::error::{Error, Result};
use crate::{framed, guest, host};

/// Options shared by every verb.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Guest device node.
    pub device: PathBuf,
    /// Host mode: the device's listening socket.
    pub host: Option<PathBuf>,
    /// Host mode: message limit.
    pub max_msg_size: usize,
}

impl Ctx {
    /// From the parsed command line.
    pub fn from_cli(cli: &Cli) -> Self {
        Self {
            device: cli.device.clone(),
            host: cli.host.clone(),
            max_msg_size: cli.max_msg_size,
        }
    }
}

/// `--timeout SECS` as a duration.
pub fn timeout(secs: Option<f64>) -> Result<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|e| Error::Usage(format!("--timeout {s}: {e}"))),
    }
}

/// A peer transport of the benchmark (not kerntransport).
enum Peer<'a> {
    Vsock(&'a str),
    Serial(&'a PathBuf),
}

/// Opens the channel a verb asked for.
pub fn open_channel(ctx: &Ctx, args: &ChannelArgs) -> Result<Channel> {
    let timeout = timeout(args.timeout)?;
    let need_name = || {
        args.name
            .as_deref()
            .ok_or_else(|| Error::Usage("a service NAME is required".into()))
    };
    let peer = match (&args.vsock, &args.serial) {
        (Some(addr), _) => Some(Peer::Vsock(addr)),
        (None, Some(path)) => Some(Peer::Serial(path)),
        (None, None) => None,
    };
    if peer.is_none() && args.write_chunk.is_some() {
        return Err(Error::Usage(
            "--write-chunk applies to --vsock and --serial only".into(),
        ));
    }
    if let Some(peer) = peer {
        if let Some(name) = &args.name {
            return Err(Error::Usage(format!(
                "NAME ({name}) is not used with --vsock or --serial"
            )));
        }
        if ctx.host.is_some() {
            return Err(Error::Usage(
                "--vsock/--serial are guest-side peer transports; they exclude --host".into(),
            ));
        }
        let chunk = args
            .write_chunk
            .map_or(0, |c| usize::try_from(c).unwrap_or(usize::MAX));
        let mut ch = match peer {
            Peer::Vsock(addr) => framed::connect_vsock(addr, ctx.max_msg_size, chunk)?,
            Peer::Serial(path) => framed::open_serial(path, ctx.max_msg_size, chunk)?,
        };
        if args.nonblock {
            ch.set_nonblocking(true)?;
        }
        ch.set_timeout(timeout);
        return Ok(ch);
    }
    if let Some(path) = &args.direct {
        if ctx.host.is_some() {
            return Err(Error::Usage(
                "--direct (a host service's socket) and --host (kt-vhost-device's socket) exclude each other"
                    .into(),
            ));
        }
        if let Some(name) = &args.name {
            return Err(Error::Usage(format!(
                "NAME ({name}) is not used with --direct: the socket is the service"
            )));
        }
        let mut ch = host::connect_direct(path, ctx.max_msg_size)?;
        if args.nonblock {
            ch.set_nonblocking(true)?;
        }
        ch.set_timeout(timeout);
        return Ok(ch);
    }
    let mut ch = match (&args.socket, &ctx.host) {
        (Some(_), Some(_)) => return Err(Error::Usage(
            "--socket (be a host service) and --host (reach a guest service) exclude each other"
                .into(),
        )),
        (Some(path), None) => {
            if let Some(name) = &args.name {
                return Err(Error::Usage(format!(
                    "NAME ({name}) is not used with --socket: kt-vhost-device's policy maps names to sockets"
                )));
            }
            let mut l = host::Listener::bind(path, ctx.max_msg_size)?;
            if !l.wait(timeout)? {
                return Err(Error::Timeout {
                    label: format!("{} (waiting for a connection)", path.display()),
                    secs: timeout.map_or(0.0, |t| t.as_secs_f64()),
                });
            }
            // The listener (and its socket file) goes away after this one
            // connection: one verb, one channel.
            l.accept()?
        }
        (None, Some(sock)) => {
            if args.listen {
                return Err(Error::Usage(
                    "--listen is guest-side; a host service uses --socket PATH".into(),
                ));
            }
            host::connect_service(sock, need_name()?, ctx.max_msg_size)?
        }
        (None, None) if args.listen => {
            let l = guest::listen(&ctx.device, need_name()?)?;
            if !l.wait(timeout)? {
                return Err(Error::Timeout {
                    label: format!("{} (waiting for the host to open a channel)", need_name()?),
                    secs: timeout.map_or(0.0, |t| t.as_secs_f64()),
                });
            }
            l.accept()?
        }
        (None, None) => guest::connect(&ctx.device, need_name()?)?,
    };
    if args.nonblock {
        ch.set_nonblocking(true)?;
    }
    ch.set_timeout(timeout);
    Ok(ch)
}
