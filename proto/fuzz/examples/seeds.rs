//! Writes the `decode` seed corpus into the directory given as the only
//! argument (docs/fuzzing.md): one valid header of every message type (with
//! its payload where it has one), a fragment, a device config, and the
//! handshake lines, all encoded by kt-proto itself.

use std::path::PathBuf;
use std::process::ExitCode;

use kt_proto::consts::HDR_F_MORE;
use kt_proto::{handshake, DeviceConfig, ErrorCode, Header, MsgType};

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for t in MsgType::ALL {
        let payload: &[u8] = match t {
            MsgType::Open | MsgType::Listen | MsgType::Unlisten => b"echo",
            MsgType::Data => b"hello",
            _ => b"",
        };
        let chan = if t.is_transport() { 0 } else { 7 };
        let mut h = Header::with_payload(t, chan, payload.len() as u32);
        h.buf_alloc = 65536;
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(payload);
        out.push((format!("header-{t:?}").to_lowercase(), bytes));
    }
    let mut frag = Header::with_payload(MsgType::Data, 9, 4);
    frag.msg_len = 10;
    frag.flags = HDR_F_MORE;
    out.push(("header-data-fragment".into(), frag.encode().to_vec()));
    out.push((
        "config-default".into(),
        DeviceConfig::default().encode().to_vec(),
    ));
    out.push(("connect".into(), handshake::connect_msg("k.echo")));
    out.push(("list".into(), handshake::list_msg()));
    out.push((
        "reply-list".into(),
        handshake::list_reply(["echo", "k.echo"]),
    ));
    out.push(("reply-ok".into(), handshake::ok_msg(42)));
    out.push((
        "reply-err".into(),
        handshake::err_msg(ErrorCode::ConnRefused, "no such service"),
    ));
    out
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: seeds DIR");
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("seeds: cannot create {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    for (name, bytes) in seeds() {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, bytes) {
            eprintln!("seeds: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
