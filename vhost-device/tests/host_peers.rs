//! Hostile or careless host peers on the `--listen` socket: descriptors
//! passed with the handshake, connection floods past the fd limit, idle
//! connections that never finish the handshake. The daemon's descriptors,
//! CPU time and handshake slots stay bounded, and peers get an `ERR` line.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::consts::F_GUEST_LISTEN;
use kt_proto::handshake::{self, Reply};
use kt_sim::DriverOptions;
use kt_vhost_device::seqpacket::{Recv, SeqPacket};

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits up to 10 s for `cond`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Receives the handshake reply on `s` (blocking, 10 s at most).
fn reply(s: &SeqPacket) -> Option<Reply> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    match s.recv(&mut buf).unwrap() {
        Recv::Msg(n) => Some(handshake::parse_reply(&buf[..n.min(buf.len())]).unwrap()),
        Recv::Eof => None,
    }
}

/// Driver options of a guest that does not accept host connections: every
/// `CONNECT` is answered `ERR 111` by the device itself, at once.
fn no_listen() -> DriverOptions {
    let d = DriverOptions::default();
    DriverOptions {
        features: d.features & !(1 << F_GUEST_LISTEN),
        ..d
    }
}

#[test]
fn descriptors_passed_by_host_peers_are_closed() {
    let fx = Fixture::new("peer-fds", &[]);
    let _d = fx.driver_with(no_listen());
    wait_for("device active", || fx.stats().active);
    let pid = fx.daemon.pid();
    let baseline = fd_count(pid);
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let fds = [w.as_fd(), w.as_fd(), r.as_fd(), r.as_fd()];
    let mut peers = Vec::new();
    for _ in 0..50 {
        let s = SeqPacket::connect(&fx.listen, false).unwrap();
        s.send_with_fds(&handshake::connect_msg("gsvc"), &fds)
            .unwrap();
        match reply(&s) {
            Some(Reply::Err { code, .. }) => assert_eq!(code.errno(), 111),
            other => panic!("unexpected reply {other:?}"),
        }
        // Peers stay connected: only the daemon's side is measured.
        peers.push(s);
        let now = fd_count(pid);
        assert!(
            now <= baseline + 8,
            "daemon holds {now} fds after {} peers, baseline {baseline}",
            peers.len()
        );
    }
    drop(peers);
    wait_for("fd count back to baseline", || fd_count(pid) <= baseline);
    assert_eq!(fx.stats().passed_fds_closed, 200);
}

/// utime + stime of process `pid`, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parens:
    // state is the first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Sets the soft RLIMIT_NOFILE of process `pid`, keeping the hard limit.
fn set_soft_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: with a null new limit prlimit only queries; `old` is a valid
    // rlimit for it to fill.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; the old one is not asked for.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn out_of_descriptors_answers_err_24_without_spinning() {
    let fx = Fixture::new("peer-emfile", &[]);
    let _d = fx.driver_with(no_listen());
    wait_for("device active", || fx.stats().active);
    let pid = fx.daemon.pid();
    // Room for two more descriptors: two idle peers take them, every
    // later connection finds the daemon out of descriptors.
    let n = fd_count(pid) as u64;
    set_soft_nofile(pid, n + 2);
    let peers: Vec<SeqPacket> = (0..40)
        .map(|_| SeqPacket::connect(&fx.listen, false).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A worker spinning on the queued connections would use a whole core;
    // an idle daemon uses next to nothing. Generous: under 20 % of a core
    // over two seconds, on a shared machine.
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - t0;
    assert!(
        used * 100 < 20 * 2 * hz,
        "daemon used {used} ticks ({hz}/s) in 2 s while out of descriptors"
    );
    let mut refused = 0;
    for p in &peers {
        p.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 256];
        if let Ok(Recv::Msg(k)) = p.recv(&mut buf) {
            let r = handshake::parse_reply(&buf[..k.min(buf.len())]).unwrap();
            match r {
                Reply::Err { code, text } => {
                    assert_eq!(code.errno(), 24, "{text}");
                    refused += 1;
                    // Then the daemon hangs up.
                    assert_eq!(p.recv(&mut buf).unwrap(), Recv::Eof);
                }
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
    assert!(refused >= 35, "only {refused} of 40 peers got ERR 24");
    drop(peers);
    set_soft_nofile(pid, 4096);
    // The daemon is fine once descriptors are back.
    let s = SeqPacket::connect(&fx.listen, false).unwrap();
    s.send(&handshake::connect_msg("gsvc")).unwrap();
    match reply(&s) {
        Some(Reply::Err { code, .. }) => assert_eq!(code.errno(), 111),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_eq!(fx.stats().fd_limit_refusals, refused);
}

#[test]
fn idle_host_connections_time_out_and_free_their_slots() {
    let fx = Fixture::new("peer-idle", &["--handshake-timeout", "1"]);
    let _d = fx.driver_with(no_listen());
    wait_for("device active", || fx.stats().active);
    // As many idle connections as there are handshake slots.
    let start = Instant::now();
    let idle: Vec<SeqPacket> = (0..kt_vhost_device::device::MAX_HANDSHAKES)
        .map(|_| SeqPacket::connect(&fx.listen, false).unwrap())
        .collect();
    for s in &idle {
        match reply(s) {
            Some(Reply::Err { code, text }) => {
                assert_eq!(code.errno(), 110, "{text}");
                let mut buf = [0u8; 16];
                assert_eq!(s.recv(&mut buf).unwrap(), Recv::Eof);
            }
            other => panic!("idle connection got {other:?}"),
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "timed out after {took:?} with --handshake-timeout 1"
    );
    // The slots are free again: a real handshake is served at once.
    let s = SeqPacket::connect(&fx.listen, false).unwrap();
    s.send(&handshake::connect_msg("gsvc")).unwrap();
    match reply(&s) {
        Some(Reply::Err { code, .. }) => assert_eq!(code.errno(), 111),
        other => panic!("unexpected reply {other:?}"),
    }
    let st = fx.stats();
    assert_eq!(
        st.handshake_timeouts,
        kt_vhost_device::device::MAX_HANDSHAKES as u64
    );
}

#[test]
fn guest_that_does_not_answer_open_fails_the_host_with_err_110() {
    let fx = Fixture::new("peer-open", &["--open-timeout", "1"]);
    let mut d = fx.driver_with(DriverOptions {
        listen: vec!["gsvc".into()],
        ..DriverOptions::default()
    });
    wait_for("device active", || fx.stats().active);
    // The guest is not polled, so it does not answer the OPEN.
    let start = Instant::now();
    let s = SeqPacket::connect(&fx.listen, false).unwrap();
    s.send(&handshake::connect_msg("gsvc")).unwrap();
    match reply(&s) {
        Some(Reply::Err { code, text }) => assert_eq!(code.errno(), 110, "{text}"),
        other => panic!("unexpected reply {other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "failed after {took:?} with --open-timeout 1"
    );
    let mut buf = [0u8; 16];
    assert_eq!(s.recv(&mut buf).unwrap(), Recv::Eof);
    assert_eq!(fx.stats().open_timeouts, 1);
    // The guest answers late: it gets CLOSE KT_ERR_CONNRESET, answers it,
    // and the channel is gone on both sides with nothing malformed.
    d.wait_until("OPEN accepted", |d| !d.accepted.is_empty())
        .unwrap();
    let (id, _) = d.accepted[0].clone();
    d.wait_until("CLOSE", |d| d.closed(id).is_some()).unwrap();
    assert_eq!(d.closed(id), Some(kt_proto::ErrorCode::ConnReset as u32));
    wait_for("channel gone", || fx.stats().channels.is_empty());
    assert_eq!(fx.stats().device.malformed, 0);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}
