//! `kt gen` and `kt verify`: the test traffic verbs (format in
//! `crate::traffic`), on any kind of channel.

use crate::channel::{Channel, NbStats, Recv};
use crate::cli::{GenArgs, StreamArgs, VerifyArgs};
use crate::error::{Error, Result};
use crate::open::{open_channel, Ctx};
use crate::out;
use crate::traffic::{Outcome, Params, Verifier};

/// Checked stream parameters from the command line.
pub fn stream_params(s: &StreamArgs) -> Result<Params> {
    Ok(Params::new(s.seed, s.min_size, s.max_size)?)
}

/// Sends messages `0..count` of the stream; returns (bytes, EAGAIN stats).
pub fn send_stream(ch: &Channel, params: &Params, count: u64) -> Result<(u64, NbStats)> {
    if params.max_size() > ch.max_msg_size() {
        return Err(Error::MsgSize {
            len: params.max_size(),
            limit: ch.max_msg_size(),
        });
    }
    let mut nb = NbStats::default();
    let mut msg = Vec::with_capacity(params.max_size());
    let mut bytes = 0u64;
    for seq in 0..count {
        params.fill(seq, &mut msg);
        ch.send(&msg, &mut nb)?;
        bytes += msg.len() as u64;
    }
    Ok((bytes, nb))
}

/// `kt gen`.
pub fn gen(ctx: &Ctx, a: &GenArgs) -> Result<()> {
    let params = stream_params(&a.stream)?;
    let ch = open_channel(ctx, &a.channel)?;
    let (bytes, nb) = send_stream(&ch, &params, a.count)?;
    if a.channel.nonblock {
        out::line(format_args!(
            "sent {} messages, {bytes} bytes, {} EAGAIN",
            a.count, nb.send_eagain
        ))
    } else {
        out::line(format_args!("sent {} messages, {bytes} bytes", a.count))
    }
}

/// `kt verify`.
pub fn verify(ctx: &Ctx, a: &VerifyArgs) -> Result<()> {
    let params = stream_params(&a.stream)?;
    let ch = open_channel(ctx, &a.channel)?;
    let mut v = Verifier::new(params);
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    let mut first_problem: Option<Outcome> = None;
    let mut ended_early = false;
    while v.next_seq() < a.count {
        let n = match ch.recv(&mut buf, &mut nb)? {
            Recv::Msg(n) => n,
            Recv::Eof => {
                ended_early = true;
                break;
            }
        };
        let outcome = v.check(&buf[..n]);
        if outcome == Outcome::Ok {
            continue;
        }
        if a.keep_going {
            eprintln!("kt: verify: {outcome}");
        }
        first_problem.get_or_insert(outcome);
        if !a.keep_going {
            break;
        }
    }
    let received = v.next_seq();
    if ended_early {
        v.finish(a.count);
    }
    let counts = v.counts();
    if a.channel.nonblock {
        out::line(format_args!("{counts}, {} EAGAIN", nb.recv_eagain))?;
    } else {
        out::line(format_args!("{counts}"))?;
    }
    if let Some(p) = first_problem {
        return Err(Error::Verify(if a.keep_going {
            format!("failed; first problem: {p}")
        } else {
            p.to_string()
        }));
    }
    if ended_early {
        return Err(Error::Ended {
            label: ch.label().to_string(),
            got: received,
            want: a.count,
        });
    }
    Ok(())
}
