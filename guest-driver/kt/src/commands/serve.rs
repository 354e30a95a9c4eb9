//! `kt serve`: a host service on a SOCK_SEQPACKET socket. kt-vhost-device
//! connects once per guest channel; each connection is handled on its own
//! thread in the chosen mode (echo, sink, source, print, bench).

use std::sync::Arc;

use crate::cli::{ServeArgs, ServeMode};
use crate::commands::traffic::{send_stream, stream_params};
use crate::error::Result;
use crate::host::Listener;
use crate::open::Ctx;
use crate::out;
use crate::serving::{accept_loop, pump, Budget, Handler, PumpMode};

/// `kt serve`.
pub fn serve(ctx: &Ctx, a: &ServeArgs) -> Result<()> {
    let params = stream_params(&a.stream)?;
    let mut listener = if a.framed {
        Listener::bind_stream(&a.socket, ctx.max_msg_size)?
    } else {
        Listener::bind(&a.socket, ctx.max_msg_size)?
    };
    let budget = Arc::new(Budget::new(None));
    let b = Arc::clone(&budget);
    let (mode, count, print) = (a.mode, a.count, a.print);
    let cpu_pids = a.cpu_pids.clone();
    let handler: Handler = Arc::new(move |ch| match mode {
        ServeMode::Echo => pump(
            &ch,
            PumpMode {
                print: None,
                echo: true,
            },
            &b,
        )
        .map(|_| ()),
        ServeMode::Print => {
            let print = (!print.quiet).then_some(print.hex);
            pump(&ch, PumpMode { print, echo: false }, &b).map(|_| ())
        }
        ServeMode::Sink => {
            let got = pump(&ch, PumpMode::default(), &b)?;
            out::line(format_args!(
                "{}: received {} messages, {} bytes",
                ch.label(),
                got.msgs,
                got.bytes
            ))
        }
        ServeMode::Source => {
            let (bytes, _) = send_stream(&ch, &params, count)?;
            out::line(format_args!(
                "{}: sent {count} messages, {bytes} bytes",
                ch.label()
            ))
        }
        ServeMode::Bench => crate::benchpeer::serve(&ch, cpu_pids.as_deref()),
    });
    accept_loop(&mut listener, a.channels, &budget, handler)
}
