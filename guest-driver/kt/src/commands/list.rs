//! `kt list`: in the guest, the services the host policy lets this guest
//! open, read from the device's own service `kt.services` (SPEC §3.3), and
//! `--wait NAME`, which keeps that channel open until a listing names NAME;
//! on the host (`--host LISTEN_SOCKET`), the names the guest's listeners
//! serve (`LIST`, SPEC §9).
//!
//! The device is untrusted here: a listing's size is bounded and every
//! line is checked as a service name (`kt_proto::listing`), so a bad
//! listing is an error, never names printed.

use std::time::{Duration, Instant};

use kt_proto::consts::SERVICES_NAME;
use kt_proto::listing::Reader;
use kt_proto::name;

use crate::channel::{NbStats, Recv};
use crate::cli::ListArgs;
use crate::error::{Error, Result};
use crate::open::{timeout, Ctx};
use crate::{guest, out};

/// How long a plain `kt list` waits for its listing when no `--timeout`
/// is given (the device sends it right after `OPEN_OK`).
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// `kt list`.
pub fn list(ctx: &Ctx, a: &ListArgs) -> Result<()> {
    if let Some(path) = &ctx.host {
        return host_list(path, a);
    }
    if let Some(want) = &a.wait {
        check_wanted(want)?;
    }
    let limit = match (timeout(a.timeout)?, &a.wait) {
        (Some(t), _) => Some(t),
        (None, Some(_)) => None,
        (None, None) => Some(LIST_TIMEOUT),
    };
    let deadline = limit.map(|t| Instant::now() + t);
    let mut ch = guest::connect(&ctx.device, SERVICES_NAME).map_err(|e| match e {
        Error::NoService { .. } => Error::NoDiscovery,
        other => other,
    })?;
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    let mut next = || -> Result<Option<Vec<u8>>> {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(a, limit));
            }
            ch.set_timeout(Some(left));
        }
        match ch.recv(&mut buf, &mut nb) {
            Ok(Recv::Msg(n)) => Ok(Some(buf[..n].to_vec())),
            Ok(Recv::Eof) => Ok(None),
            Err(Error::Timeout { .. }) => Err(timed_out(a, limit)),
            Err(e) => Err(e),
        }
    };
    let names = read_listing(&mut next, a.wait.as_deref())?;
    if a.wait.is_none() {
        for n in &names {
            out::line(format_args!("{n}"))?;
        }
    }
    Ok(())
}

/// `kt --host LISTEN_SOCKET list`: the names the guest's listeners serve,
/// from the device (`LIST`), one per line.
fn host_list(path: &std::path::Path, a: &ListArgs) -> Result<()> {
    if a.wait.is_some() {
        return Err(Error::Usage(
            "--wait is guest-side (the device's kt.services channel); with --host, list prints \
             the names the guest listens on"
                .into(),
        ));
    }
    let limit = timeout(a.timeout)?.unwrap_or(LIST_TIMEOUT);
    for n in crate::host::list_guest_services(path, limit)? {
        out::line(format_args!("{n}"))?;
    }
    Ok(())
}

/// `--wait NAME` must be a name a listing can hold.
fn check_wanted(want: &str) -> Result<()> {
    name::validate(want.as_bytes()).map_err(|source| Error::BadName {
        name: want.to_string(),
        source,
    })?;
    if name::is_device_reserved(want) {
        return Err(Error::Usage(format!(
            "--wait {want}: names starting with \"kt.\" are the device's own and never listed"
        )));
    }
    Ok(())
}

fn timed_out(a: &ListArgs, limit: Option<Duration>) -> Error {
    Error::ListTimeout {
        wanted: a.wait.clone(),
        secs: limit.map_or(0.0, |t| t.as_secs_f64()),
    }
}

/// Reads messages from `next` (`None`: the channel ended) until a listing
/// is complete and, with `wait`, names `wait`; returns that listing.
fn read_listing(
    next: &mut dyn FnMut() -> Result<Option<Vec<u8>>>,
    wait: Option<&str>,
) -> Result<Vec<String>> {
    let mut reader = Reader::default();
    loop {
        let Some(msg) = next()? else {
            return Err(Error::DiscoveryEnded);
        };
        let names = reader
            .push(&msg)
            .map_err(|source| Error::BadListing { source })?;
        match (names, wait) {
            (Some(names), None) => return Ok(names),
            (Some(names), Some(w)) if names.iter().any(|n| n == w) => return Ok(names),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(msgs: &[&[u8]]) -> impl FnMut() -> Result<Option<Vec<u8>>> {
        let mut it: Vec<Vec<u8>> = msgs.iter().map(|m| m.to_vec()).collect();
        it.reverse();
        move || Ok(it.pop())
    }

    #[test]
    fn reads_the_first_listing() {
        let mut f = feed(&[b"echo\n", b"log\n", b"", b"later\n", b""]);
        assert_eq!(read_listing(&mut f, None).unwrap(), ["echo", "log"]);
        let mut f = feed(&[b""]);
        assert!(read_listing(&mut f, None).unwrap().is_empty());
    }

    #[test]
    fn waits_for_a_listing_naming_the_service() {
        let mut f = feed(&[b"echo\n", b"", b"echo\nnew\n", b""]);
        assert_eq!(read_listing(&mut f, Some("new")).unwrap(), ["echo", "new"]);
        // A name split over messages counts once the listing is whole.
        let mut f = feed(&[b"ne", b"w\n", b""]);
        assert_eq!(read_listing(&mut f, Some("new")).unwrap(), ["new"]);
    }

    #[test]
    fn bad_or_cut_listings_are_errors() {
        let mut f = feed(&[b"echo\n"]);
        let e = read_listing(&mut f, None).unwrap_err();
        assert!(matches!(e, Error::DiscoveryEnded), "{e}");
        let mut f = feed(&[b"b\na\n", b""]);
        let e = read_listing(&mut f, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kt.services: bad listing from the device: line 2: \"a\" is not after \"b\" \
             (names are sorted and unique)"
        );
        let mut f = feed(&[b"ok\n", b"", b"x\x07\n", b""]);
        let e = read_listing(&mut f, Some("never")).unwrap_err();
        assert!(matches!(e, Error::BadListing { .. }), "{e}");
        let big = vec![b'a'; 4 << 20];
        let mut f = feed(&[&big, b"\n", b""]);
        let e = read_listing(&mut f, None).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn wanted_names_are_checked() {
        assert!(check_wanted("echo").is_ok());
        assert!(matches!(check_wanted(""), Err(Error::BadName { .. })));
        assert!(matches!(check_wanted("kt.services"), Err(Error::Usage(_))));
    }
}
