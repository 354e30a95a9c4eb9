//! `kt soak`: keeps `--channels` channels to an echo service busy with
//! verified streams (the `kt gen` format, a new seed per stream), each
//! stream on a channel of its own; when a channel fails it is reopened (for
//! up to `--retry-secs`, while the service, the driver or kt-vhost-device
//! restart) and the next stream begins. Every message is settled in the
//! ledger of [`crate::soak`]; progress and the final totals are printed as
//! `KT-SOAK-PROGRESS` / `KT-SOAK` lines. Exits 1 if anything was lost,
//! reordered, duplicated or damaged, or a stream stalled.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::channel::{Channel, NbStats, Recv};
use crate::cli::SoakArgs;
use crate::error::{Error, Result};
use crate::open::Ctx;
use crate::soak::{stream_len, stream_seed, End, Tally};
use crate::traffic::{Params, Verifier};
use crate::{guest, host, out, signal};

/// Most messages one channel has in flight, whatever their size.
const MAX_IN_FLIGHT: usize = 64;
/// First pause between reopen attempts; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// The checked run parameters shared by the workers.
#[derive(Debug)]
struct Plan {
    name: String,
    seed: u64,
    min_size: usize,
    max_size: usize,
    min_stream: u64,
    max_stream: u64,
    window: usize,
    stall: Duration,
    retry: Duration,
    direct: Option<PathBuf>,
}

/// State shared by the workers and the reporting thread.
#[derive(Debug)]
struct Shared {
    /// Messages not yet claimed by a stream.
    budget: AtomicU64,
    totals: Mutex<Tally>,
    /// First error that ended a worker, if any.
    fatal: Mutex<Option<String>>,
}

impl Shared {
    /// Claims up to `want` messages of the budget; 0 when it is spent.
    fn claim(&self, want: u64) -> u64 {
        let mut cur = self.budget.load(Ordering::Relaxed);
        loop {
            let take = want.min(cur);
            if take == 0 {
                return 0;
            }
            match self.budget.compare_exchange_weak(
                cur,
                cur - take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => cur = now,
            }
        }
    }

    fn totals(&self) -> Tally {
        *self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn secs(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| Error::Usage(format!("{what} {s}: {e}")))
}

fn plan(ctx: &Ctx, a: &SoakArgs) -> Result<Plan> {
    if a.direct.is_some() && ctx.host.is_some() {
        return Err(Error::Usage(
            "--direct (a host service's socket) and --host (kt-vhost-device's socket) exclude each other"
                .into(),
        ));
    }
    Params::new(0, a.min_size, a.max_size)?;
    if a.min_stream > a.max_stream {
        return Err(Error::Usage(format!(
            "--min-stream {} is larger than --max-stream {}",
            a.min_stream, a.max_stream
        )));
    }
    if a.window < a.max_size {
        return Err(Error::Usage(format!(
            "--window {} is smaller than --max-size {}: a message would never fit",
            a.window, a.max_size
        )));
    }
    let seed = a.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    });
    Ok(Plan {
        name: a.name.clone(),
        seed,
        min_size: a.min_size,
        max_size: a.max_size,
        min_stream: a.min_stream,
        max_stream: a.max_stream,
        window: a.window,
        stall: secs("--stall-secs", a.stall_secs)?,
        retry: secs("--retry-secs", a.retry_secs)?,
        direct: a.direct.clone(),
    })
}

/// Errors that no amount of retrying fixes.
fn permanent(e: &Error) -> bool {
    matches!(
        e,
        Error::BadName { .. }
            | Error::Refused { .. }
            | Error::Usage(_)
            | Error::MsgSize { .. }
            | Error::PathTooLong { .. }
            | Error::Params(_)
    )
}

fn open_once(ctx: &Ctx, plan: &Plan) -> Result<Channel> {
    match (&plan.direct, &ctx.host) {
        (Some(path), _) => host::connect_direct(path, ctx.max_msg_size),
        (None, Some(sock)) => host::connect_service(sock, &plan.name, ctx.max_msg_size),
        (None, None) => guest::connect(&ctx.device, &plan.name),
    }
}

/// Opens a channel to the service, retrying transient failures for up to
/// `plan.retry`. `None` when a stop was requested meanwhile.
fn open_retrying(ctx: &Ctx, plan: &Plan) -> Result<Option<Channel>> {
    let start = Instant::now();
    let mut pause = RETRY_FIRST;
    loop {
        if signal::interrupted() {
            return Ok(None);
        }
        match open_once(ctx, plan) {
            Ok(ch) => return Ok(Some(ch)),
            Err(e) if permanent(&e) => return Err(e),
            Err(e) if start.elapsed() >= plan.retry => {
                return Err(Error::Soak(format!(
                    "{}: could not reopen a channel for {:.0} s: {e}",
                    plan.name,
                    plan.retry.as_secs_f64()
                )))
            }
            Err(e) => {
                if pause == RETRY_FIRST {
                    eprintln!("kt: soak {}: reopening: {e}", plan.name);
                }
                thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Runs one stream of `len` messages on `ch` and settles it. A message is
/// in flight from its send until the verifier has passed its position
/// (echoed, or overtaken by a later echo).
fn run_stream(ch: &Channel, params: &Params, len: u64, window: usize) -> (Tally, Option<Error>) {
    let mut v = Verifier::new(*params);
    let mut nb = NbStats::default();
    let mut msg = Vec::with_capacity(params.max_size());
    let mut buf = ch.recv_buffer();
    // (seq, size) of the messages in flight, oldest first.
    let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
    let mut in_flight_bytes = 0usize;
    let (mut next, mut sent, mut write_refused) = (0u64, 0u64, 0u64);
    let mut last = len;
    let mut failure: Option<Error> = None;
    let end = loop {
        if signal::interrupted() {
            // Stop: send nothing more, collect what is in flight.
            last = next;
        }
        while failure.is_none() && next < last && in_flight.len() < MAX_IN_FLIGHT {
            let size = params.size(next);
            if !in_flight.is_empty() && in_flight_bytes + size > window {
                break;
            }
            params.fill(next, &mut msg);
            sent += 1;
            if let Err(e) = ch.send(&msg, &mut nb) {
                write_refused = 1;
                failure = Some(e);
                break;
            }
            in_flight.push_back((next, size));
            in_flight_bytes += size;
            next += 1;
        }
        if in_flight.is_empty() {
            break if failure.is_some() {
                End::Failed
            } else {
                End::Complete
            };
        }
        match ch.recv(&mut buf, &mut nb) {
            Ok(Recv::Msg(n)) => {
                v.check(&buf[..n]);
                while let Some(&(seq, size)) = in_flight.front() {
                    if seq >= v.next_seq() {
                        break;
                    }
                    in_flight.pop_front();
                    in_flight_bytes -= size;
                }
            }
            Ok(Recv::Eof) => {
                failure.get_or_insert(Error::PeerClosed {
                    label: ch.label().to_string(),
                });
                break End::Failed;
            }
            Err(e @ Error::Timeout { .. }) if failure.is_none() => {
                failure = Some(e);
                break End::Stalled;
            }
            Err(e) => {
                failure.get_or_insert(e);
                break End::Failed;
            }
        }
    };
    (
        Tally::settle(sent, write_refused, &v.counts(), end),
        failure,
    )
}

/// One channel's loop: claim a stream, open, run, settle, repeat.
fn worker(ctx: &Ctx, plan: &Plan, shared: &Shared, index: u32) {
    for stream in 0u64.. {
        if signal::interrupted() {
            return;
        }
        let seed = stream_seed(plan.seed, index, stream);
        let len = shared.claim(stream_len(seed, plan.min_stream, plan.max_stream));
        if len == 0 {
            return;
        }
        let fail = |e: Error| {
            let mut f = shared.fatal.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert(format!("channel {index}: {e}"));
        };
        let mut ch = match open_retrying(ctx, plan) {
            Ok(Some(ch)) => ch,
            Ok(None) => return,
            Err(e) => return fail(e),
        };
        if ch.max_msg_size() < plan.max_size {
            return fail(Error::MsgSize {
                len: plan.max_size,
                limit: ch.max_msg_size(),
            });
        }
        ch.set_timeout(Some(plan.stall));
        let params = match Params::new(seed, plan.min_size, plan.max_size) {
            Ok(p) => p,
            Err(e) => return fail(e.into()),
        };
        let (tally, why) = run_stream(&ch, &params, len, plan.window);
        // What a cut-short stream did not send goes back to the budget.
        shared
            .budget
            .fetch_add(len.saturating_sub(tally.sent), Ordering::Relaxed);
        if tally.stalls > 0 {
            eprintln!(
                "kt: soak {}: channel {index} stream {stream} stalled: {}",
                plan.name,
                why.map_or_else(String::new, |e| e.to_string())
            );
        } else if !tally.clean() {
            eprintln!(
                "kt: soak {}: channel {index} stream {stream}: {tally}",
                plan.name
            );
        }
        shared
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&tally);
    }
}

/// `kt soak`.
pub fn soak(ctx: &Ctx, a: &SoakArgs) -> Result<()> {
    let plan = Arc::new(plan(ctx, a)?);
    let report = secs("--report-secs", a.report_secs)?;
    let label = a.label.clone().unwrap_or_else(|| a.name.clone());
    let side = if ctx.host.is_some() || a.direct.is_some() {
        "host"
    } else {
        "guest"
    };
    out::line(format_args!(
        "kt soak {label}: {side} side, {} channels, {} messages of {}..={} B, seed {}",
        a.channels, a.count, plan.min_size, plan.max_size, plan.seed
    ))?;
    let shared = Arc::new(Shared {
        budget: AtomicU64::new(a.count),
        totals: Mutex::new(Tally::default()),
        fatal: Mutex::new(None),
    });
    let mut workers = Vec::new();
    for i in 0..a.channels {
        let (ctx, plan, shared) = (ctx.clone(), Arc::clone(&plan), Arc::clone(&shared));
        let h = signal::spawn_worker(&format!("soak-{i}"), move || {
            worker(&ctx, &plan, &shared, i);
        })
        .map_err(|e| Error::io("spawn a soak thread", e))?;
        workers.push(h);
    }
    let start = Instant::now();
    let mut next_report = report;
    while workers.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(50));
        if !report.is_zero() && start.elapsed() >= next_report {
            next_report += report;
            out::line(format_args!(
                "KT-SOAK-PROGRESS {label}: {} t={:.0}s",
                shared.totals(),
                start.elapsed().as_secs_f64()
            ))?;
        }
    }
    for h in workers {
        if h.join().is_err() {
            return Err(Error::Soak(format!("{label}: a soak thread panicked")));
        }
    }
    let t = shared.totals();
    out::line(format_args!(
        "KT-SOAK {label}: {t} secs={:.1}",
        start.elapsed().as_secs_f64()
    ))?;
    if let Some(f) = shared
        .fatal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(Error::Soak(f));
    }
    if !t.balanced() {
        return Err(Error::Soak(format!(
            "{label}: the ledger does not add up: {t}"
        )));
    }
    if !t.clean() {
        return Err(Error::Soak(format!(
            "{label}: {} lost, {} reordered, {} duplicated, {} corrupt, {} stalled streams",
            t.lost, t.reordered, t.duplicated, t.corrupt, t.stalls
        )));
    }
    Ok(())
}
