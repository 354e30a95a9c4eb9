//! Plain message verbs: `send`, `recv`, `listen` (guest) and the
//! interactive `connect`.

use std::io::Write;
use std::sync::Arc;

use crate::channel::NbStats;
use crate::cli::{ConnectArgs, ListenArgs, PrintArgs, RecvArgs, SendArgs};
use crate::error::{Error, Result};
use crate::input::Lines;
use crate::open::{open_channel, Ctx};
use crate::serving::{accept_loop, pump, Budget, Handler, PumpMode};
use crate::{guest, out, signal};

fn print_mode(p: &PrintArgs) -> Option<bool> {
    (!p.quiet).then_some(p.hex)
}

/// `kt send`.
pub fn send(ctx: &Ctx, mut a: SendArgs) -> Result<()> {
    if a.channel.socket.is_some() || a.channel.direct.is_some() {
        // No NAME with --socket/--direct: the first positional is a message.
        if let Some(first) = a.channel.name.take() {
            a.texts.insert(0, first);
        }
    }
    let ch = open_channel(ctx, &a.channel)?;
    let mut nb = NbStats::default();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut put = |m: &[u8]| -> Result<()> {
        ch.send(m, &mut nb)?;
        count += 1;
        bytes += m.len() as u64;
        Ok(())
    };
    for t in &a.texts {
        put(t.as_bytes())?;
    }
    for f in &a.file {
        let data = std::fs::read(f).map_err(|e| Error::io(f.display().to_string(), e))?;
        put(&data)?;
    }
    if a.texts.is_empty() && a.file.is_empty() {
        let mut lines = Lines::new();
        while let Some(line) = lines.next_line()? {
            put(&line)?;
        }
    }
    if a.channel.nonblock {
        out::line(format_args!(
            "sent {count} messages, {bytes} bytes, {} EAGAIN",
            nb.send_eagain
        ))?;
    }
    Ok(())
}

/// `kt recv`.
pub fn recv(ctx: &Ctx, a: &RecvArgs) -> Result<()> {
    let ch = open_channel(ctx, &a.channel)?;
    let mode = PumpMode {
        print: print_mode(&a.print),
        echo: a.echo,
    };
    let got = pump(&ch, mode, &Budget::new(a.count))?;
    match a.count {
        Some(want) if got.msgs < want => Err(Error::Ended {
            label: ch.label().to_string(),
            got: got.msgs,
            want,
        }),
        _ => Ok(()),
    }
}

/// `kt listen` (guest only).
pub fn listen(ctx: &Ctx, a: &ListenArgs) -> Result<()> {
    if ctx.host.is_some() {
        return Err(Error::Usage(
            "listen is guest-side; on the host run `kt serve --socket PATH`".into(),
        ));
    }
    let mut l = guest::listen(&ctx.device, &a.name)?;
    let budget = Arc::new(Budget::new(a.count));
    let mode = PumpMode {
        print: print_mode(&a.print),
        echo: a.echo,
    };
    let b = Arc::clone(&budget);
    let handler: Handler = Arc::new(move |ch| pump(&ch, mode, &b).map(|_| ()));
    accept_loop(&mut l, a.channels, &budget, handler)
}

/// `kt connect`: stdin lines out, received messages printed. A worker
/// prints and ends the process when the channel ends (or after --count
/// messages); the main thread reads stdin, so SIGINT reaches it.
pub fn connect(ctx: &Ctx, a: &ConnectArgs) -> Result<()> {
    let ch = open_channel(ctx, &a.channel)?;
    let reader = ch.try_clone()?;
    let mode = PumpMode {
        print: print_mode(&a.print),
        echo: false,
    };
    let count = a.count;
    let worker = signal::spawn_worker("kt-recv", move || {
        let code = match pump(&reader, mode, &Budget::new(count)) {
            Ok(got) => match count {
                Some(want) if got.msgs < want => {
                    let e = Error::Ended {
                        label: reader.label().to_string(),
                        got: got.msgs,
                        want,
                    };
                    eprintln!("kt: {e}");
                    1
                }
                _ => 0,
            },
            Err(e) => {
                eprintln!("kt: {e}");
                1
            }
        };
        // Best effort: the process ends either way.
        let _ = std::io::stdout().flush();
        std::process::exit(code)
    })
    .map_err(|e| Error::io("spawn receive thread", e))?;
    let mut nb = NbStats::default();
    let mut lines = Lines::new();
    while let Some(line) = lines.next_line()? {
        ch.send(&line, &mut nb)?;
    }
    if count.is_some() {
        // The worker ends the process once the count is reached.
        if worker.join().is_err() {
            return Err(Error::io(
                "receive thread",
                std::io::Error::other("panicked"),
            ));
        }
    }
    Ok(())
}
