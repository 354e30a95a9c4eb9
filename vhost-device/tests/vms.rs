//! One daemon serving several VMs from a config file (simulated guests
//! speaking real vhost-user): each VM sees only its own policy, traffic
//! of two VMs runs at once, killing one VM's frontend mid-stream costs the
//! other nothing, and reloads (control socket, SIGHUP) add and remove VMs
//! and change a VM's policy for new OPENs while its open channels stay.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, check_message, message};
use kt_proto::ErrorCode;
use kt_sim::host::{Behaviour, Service};
use kt_sim::{DaemonProc, Driver, DriverOptions, TempDir};
use kt_vhost_device::stats::DaemonSnapshot;

struct Vms {
    dir: TempDir,
    _services: Vec<Service>,
    daemon: DaemonProc,
    config: PathBuf,
    control: PathBuf,
}

/// One `[[vm]]` section: `name`, `id`, and the services its policy names.
/// Paths are relative: the daemon takes them from the file's directory.
fn section(name: &str, id: u32) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\nguest_id = {id}\nsocket_path = \"{name}.sock\"\n\
         listen = \"{name}-listen.sock\"\npolicy = \"{name}-policy.toml\"\nmax_msg_size = 4096\n",
    )
}

fn write_policy(dir: &Path, vm: &str, services: &[&str]) {
    let text: String = services
        .iter()
        .map(|s| {
            format!(
                "[[service]]\nname = \"{s}\"\nsocket = \"{}\"\n",
                dir.join(format!("{s}.sock")).display()
            )
        })
        .collect();
    std::fs::write(dir.join(format!("{vm}-policy.toml")), text).unwrap();
}

impl Vms {
    /// A daemon serving `vms` (name, guest id, services), with echo
    /// services `echo` and `echo2` running.
    fn start(tag: &str, vms: &[(&str, u32, &[&str])]) -> Vms {
        let dir = TempDir::new(tag).unwrap();
        let services = ["echo", "echo2"]
            .iter()
            .map(|s| Service::spawn(&dir.join(&format!("{s}.sock")), Behaviour::Echo).unwrap())
            .collect();
        let config = dir.join("kt.toml");
        let control = dir.join("control.sock");
        Self::write_config(&dir, vms);
        let last = dir.join(&format!("{}.sock", vms[vms.len() - 1].0));
        let args: Vec<String> = ["--config", config.to_str().unwrap(), "--log-level", "warn"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let daemon = DaemonProc::spawn(&bin(), &last, &args).unwrap();
        Vms {
            dir,
            _services: services,
            daemon,
            config,
            control,
        }
    }

    fn write_config(dir: &TempDir, vms: &[(&str, u32, &[&str])]) {
        let mut text = "control = \"control.sock\"\n".to_owned();
        for (name, id, services) in vms {
            write_policy(dir.path(), name, services);
            text.push_str(&section(name, *id));
        }
        std::fs::write(dir.join("kt.toml"), text).unwrap();
    }

    fn driver(&self, vm: &str) -> Driver {
        Driver::connect(
            &self.dir.join(&format!("{vm}.sock")),
            DriverOptions::default(),
        )
        .unwrap()
    }

    fn stats(&self) -> DaemonSnapshot {
        kt_vhost_device::control::query(&self.control).unwrap()
    }

    fn reload(&self) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(["reload", "--control", self.control.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Sends `n` checked messages on `id` and reads them back in order.
fn echo_stream(d: &mut Driver, id: u32, n: u64) -> Result<(), String> {
    let mut next = 0u64;
    for i in 0..n {
        d.send(id, &message(i, 4000)).map_err(|e| e.to_string())?;
        while let Some(m) = d.try_recv(id).map_err(|e| e.to_string())? {
            let got = check_message(&m, 4000)?;
            if got != next {
                return Err(format!("message {got} where {next} was due"));
            }
            next += 1;
        }
    }
    while next < n {
        let m = d.recv(id).map_err(|e| e.to_string())?;
        let got = check_message(&m, 4000)?;
        if got != next {
            return Err(format!("message {got} where {next} was due"));
        }
        next += 1;
    }
    Ok(())
}

#[test]
fn two_vms_with_their_own_policies_and_one_frontend_killed() {
    let vms = Vms::start("vms-two", &[("web", 1, &["echo"]), ("db", 2, &["echo2"])]);
    let mut web = vms.driver("web");
    let mut db = vms.driver("db");
    // Each VM opens only what its own policy names.
    assert_eq!(web.open("echo2").unwrap(), Err(ErrorCode::NoEnt));
    assert_eq!(db.open("echo").unwrap(), Err(ErrorCode::NoEnt));
    let w = web.open("echo").unwrap().unwrap();
    let d = db.open("echo2").unwrap().unwrap();
    // Both stream at once; web's frontend dies halfway through its stream.
    let db_side = std::thread::spawn(move || {
        let r = echo_stream(&mut db, d, 20_000);
        (r, db)
    });
    echo_stream(&mut web, w, 2_000).unwrap();
    web.disconnect();
    drop(web);
    let (r, mut db) = db_side.join().unwrap();
    r.expect("db kept every message, in order");
    let s = vms.stats();
    let names: Vec<&str> = s.vms.iter().map(|v| v.vm.as_str()).collect();
    assert_eq!(names, ["web", "db"]);
    let (sw, sd) = (s.vm("web").unwrap(), s.vm("db").unwrap());
    assert_eq!((sw.guest_id, sd.guest_id), (1, 2));
    assert!(!sw.active, "web's frontend is gone");
    assert!(sd.active);
    assert_eq!(sw.device.msgs_to_host, 2_000);
    assert_eq!(sd.device.msgs_to_host, 20_000);
    assert_eq!((sw.open_refused, sd.open_refused), (1, 1));
    // db still works after web's crash, and web can come back.
    echo_stream(&mut db, d, 100).unwrap();
    let mut web = vms.driver("web");
    let w = web.open("echo").unwrap().unwrap();
    echo_stream(&mut web, w, 100).unwrap();
}

#[test]
fn reload_adds_removes_and_changes_policies_without_touching_open_channels() {
    let mut vms = Vms::start("vms-reload", &[("a", 1, &["echo"]), ("b", 2, &["echo"])]);
    let mut b = vms.driver("b");
    let kept = b.open("echo").unwrap().unwrap();
    echo_stream(&mut b, kept, 50).unwrap();
    // a has a live frontend with an open channel when it is removed.
    let mut a = Driver::connect(
        &vms.dir.join("a.sock"),
        DriverOptions {
            // Its last stream below must fail, not wait the default 20 s.
            timeout: Duration::from_secs(2),
            ..DriverOptions::default()
        },
    )
    .unwrap();
    let ach = a.open("echo").unwrap().unwrap();
    echo_stream(&mut a, ach, 10).unwrap();
    // a goes, c comes, b's policy swaps echo for echo2.
    Vms::write_config(&vms.dir, &[("b", 2, &["echo2"]), ("c", 3, &["echo"])]);
    let (code, out, err) = vms.reload();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "vm a: removed; vm b: policy changed (1 service(s)); vm c: added"
    );
    assert!(!vms.dir.join("a.sock").exists(), "a's socket is removed");
    assert!(
        !vms.dir.join("a-listen.sock").exists(),
        "and its --listen socket"
    );
    // c, added under the daemon's seccomp filter, binds its --listen socket.
    assert!(vms.dir.join("c-listen.sock").exists());
    // a's frontend was disconnected: its next message cannot be carried.
    let gone = echo_stream(&mut a, ach, 10);
    assert!(
        gone.is_err(),
        "vm a still carries messages after its removal"
    );
    let names: Vec<String> = vms.stats().vms.into_iter().map(|v| v.vm).collect();
    assert_eq!(names, ["b", "c"]);
    // b's open channel stays; its new OPENs see the new policy.
    echo_stream(&mut b, kept, 50).unwrap();
    assert_eq!(b.open("echo").unwrap(), Err(ErrorCode::NoEnt));
    let e2 = b.open("echo2").unwrap().unwrap();
    echo_stream(&mut b, e2, 50).unwrap();
    let mut c = vms.driver("c");
    let ce = c.open("echo").unwrap().unwrap();
    echo_stream(&mut c, ce, 50).unwrap();
    // c's --listen socket takes host programs' connections.
    kt_vhost_device::seqpacket::SeqPacket::connect(&vms.dir.join("c-listen.sock"), false)
        .expect("c's --listen socket accepts connections");
    // A bad file changes nothing and says why.
    std::fs::write(&vms.config, "[[vm]]\nname = \"b\"\nport = 1\n").unwrap();
    let (code, _, err) = vms.reload();
    assert_eq!(code, 1);
    assert!(
        err.contains("daemon said: config file") && err.contains("unknown field `port`"),
        "{err}"
    );
    // A VM whose settings (not policy) change must be removed first.
    Vms::write_config(&vms.dir, &[("b", 9, &["echo2"]), ("c", 3, &["echo"])]);
    let (code, _, err) = vms.reload();
    assert_eq!(code, 1);
    assert!(
        err.contains("vm \"b\": only its policy can change"),
        "{err}"
    );
    echo_stream(&mut c, ce, 10).unwrap();
    // SIGHUP reloads too: b gets echo back.
    Vms::write_config(
        &vms.dir,
        &[("b", 2, &["echo", "echo2"]), ("c", 3, &["echo"])],
    );
    let pid = vms.daemon.pid() as i32;
    // SAFETY: kill() with a child's pid and a valid signal.
    let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(sent, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.open("echo").unwrap() {
            Ok(id) => {
                echo_stream(&mut b, id, 10).unwrap();
                break;
            }
            Err(e) => {
                assert_eq!(e, ErrorCode::NoEnt);
                assert!(Instant::now() < deadline, "SIGHUP did not reload");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert!(vms.daemon.alive());
}

#[test]
fn an_identifying_service_learns_which_vm_opened_the_channel() {
    let vms = Vms::start("vms-ident", &[("web", 1, &["echo"]), ("db", 2, &["echo"])]);
    let who = vms.dir.join("who.sock");
    let listener = kt_vhost_device::seqpacket::SeqListener::bind(&who).unwrap();
    for vm in ["web", "db"] {
        let text = std::fs::read_to_string(vms.dir.join(&format!("{vm}-policy.toml"))).unwrap();
        let text = format!(
            "{text}[[service]]\nname = \"who\"\nsocket = \"{}\"\nidentify = true\n",
            who.display()
        );
        std::fs::write(vms.dir.join(&format!("{vm}-policy.toml")), text).unwrap();
    }
    let (code, _, err) = vms.reload();
    assert_eq!(code, 0, "{err}");
    for (vm, id) in [("db", 2), ("web", 1)] {
        let mut d = vms.driver(vm);
        let ch = d.open("who").unwrap().unwrap();
        let conn = listener.accept_blocking().unwrap();
        let mut buf = vec![0u8; 256];
        let first = match conn.recv(&mut buf).unwrap() {
            kt_vhost_device::seqpacket::Recv::Msg(n) => buf[..n].to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kt_proto::handshake::parse_guest(&first).unwrap(),
            (id, vm),
            "{}",
            String::from_utf8_lossy(&first)
        );
        // Then the guest's own messages, unchanged.
        d.send(ch, b"hello").unwrap();
        let second = match conn.recv(&mut buf).unwrap() {
            kt_vhost_device::seqpacket::Recv::Msg(n) => buf[..n].to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(second, b"hello");
    }
}

#[test]
fn a_flags_daemon_reloads_its_policy() {
    let fx = common::Fixture::new("vms-flags", &[]);
    let mut d = fx.driver();
    let kept = d.open("echo").unwrap().unwrap();
    std::fs::write(
        fx.dir.join("policy.toml"),
        format!(
            "[[service]]\nname = \"sink\"\nsocket = \"{}\"\n",
            fx.dir.join("sink.sock").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["reload", "--control", fx.control.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vm vm7: policy changed (1 service(s))\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.open("echo").unwrap(), Err(ErrorCode::NoEnt));
    assert!(d.open("sink").unwrap().is_ok());
    echo_stream(&mut d, kept, 20).unwrap();
    // A policy file that went bad leaves the one in force.
    std::fs::write(fx.dir.join("policy.toml"), "[[service]]\nname = 3\n").unwrap();
    let out = Command::new(bin())
        .args(["reload", "--control", fx.control.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy file"));
    assert!(d.open("sink").unwrap().is_ok());
}

#[test]
fn a_config_without_control_takes_the_flag_and_reloads() {
    let dir = TempDir::new("vms-ctlflag").unwrap();
    let _echo = Service::spawn(&dir.join("echo.sock"), Behaviour::Echo).unwrap();
    write_policy(dir.path(), "solo", &["echo"]);
    std::fs::write(dir.join("kt.toml"), section("solo", 5)).unwrap();
    let control = dir.join("ctl.sock");
    let args: Vec<String> = [
        "--config",
        dir.join("kt.toml").to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _daemon = DaemonProc::spawn(&bin(), &dir.join("solo.sock"), &args).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !control.exists() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        kt_vhost_device::control::reload(&control).unwrap(),
        "vm solo: policy unchanged (1 service(s))"
    );
}
