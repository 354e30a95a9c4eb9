//! Proves that proto/include/kerntransport.h and the Rust crate agree: it
//! compiles c_layout.c against the header with the system C compiler, runs
//! it, and compares sizes, field offsets, constants and golden bytes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use kt_proto::consts::*;
use kt_proto::header::{ErrorCode, Header, MsgType};
use kt_proto::wire::{CONFIG_FIELD_OFFSETS, HDR_FIELD_OFFSETS};
use kt_proto::DeviceConfig;

fn c_values() -> HashMap<String, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(dir.join("include"))
        .arg(dir.join("tests/c_layout.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run C compiler {cc}: {e}"));
    assert!(
        status.success(),
        "compiling c_layout.c against the header failed"
    );
    let run = Command::new(&out).output().expect("run c_layout");
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .expect("utf8")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(m: &HashMap<String, String>, k: &str) -> u64 {
    m.get(k)
        .unwrap_or_else(|| panic!("C side printed no {k}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} is not a number"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn header_layout_constants_and_golden_bytes_agree() {
    let c = c_values();

    assert_eq!(num(&c, "size.kt_hdr"), HDR_SIZE as u64);
    assert_eq!(num(&c, "size.kt_config"), CONFIG_SIZE as u64);
    assert_eq!(num(&c, "size.kt_ioc_name"), IOC_NAME_SIZE as u64);
    assert_eq!(num(&c, "size.kt_ioc_info"), IOC_INFO_SIZE as u64);
    assert_eq!(num(&c, "size.kt_ioc_next"), IOC_NEXT_SIZE as u64);
    assert_eq!(num(&c, "size.kt_ioc_msg"), IOC_MSG_SIZE as u64);
    assert_eq!(num(&c, "size.kt_ioc_msgvec"), IOC_MSGVEC_SIZE as u64);
    for (field, off) in HDR_FIELD_OFFSETS {
        assert_eq!(
            num(&c, &format!("off.kt_hdr.{field}")),
            off as u64,
            "kt_hdr.{field}"
        );
    }
    for (field, off) in CONFIG_FIELD_OFFSETS {
        assert_eq!(
            num(&c, &format!("off.kt_config.{field}")),
            off as u64,
            "kt_config.{field}"
        );
    }
    for (i, f) in ["max_msg_size", "channel", "state", "guest_id"]
        .iter()
        .enumerate()
    {
        assert_eq!(num(&c, &format!("off.kt_ioc_info.{f}")), 4 * i as u64);
    }

    let consts: &[(&str, u64)] = &[
        ("KT_VIRTIO_ID", VIRTIO_ID.into()),
        ("KT_F_GUEST_LISTEN", F_GUEST_LISTEN),
        ("KT_F_LISTEN_NOTIFY", F_LISTEN_NOTIFY),
        ("KT_F_MULTIQUEUE", F_MULTIQUEUE),
        ("KT_MAX_QUEUE_PAIRS", u64::from(MAX_QUEUE_PAIRS)),
        ("KT_MAX_GUEST_LISTENERS", MAX_GUEST_LISTENERS as u64),
        ("KT_VQ_RX", VQ_RX.into()),
        ("KT_VQ_TX", VQ_TX.into()),
        ("KT_VQ_EVENT", VQ_EVENT.into()),
        ("KT_NUM_VQS", NUM_VQS as u64),
        ("KT_HDR_SIZE", HDR_SIZE as u64),
        ("KT_NAME_MAX", NAME_MAX as u64),
        ("KT_MIN_RX_BUF_SIZE", MIN_RX_BUF_SIZE.into()),
        ("KT_MAX_RX_BUF_SIZE", MAX_RX_BUF_SIZE.into()),
        ("KT_MAX_MSG_SIZE_LIMIT", MAX_MSG_SIZE_LIMIT.into()),
        ("KT_DEFAULT_MAX_MSG_SIZE", DEFAULT_MAX_MSG_SIZE.into()),
        ("KT_DEFAULT_RX_BUF_SIZE", DEFAULT_RX_BUF_SIZE.into()),
        ("KT_DEFAULT_MAX_CHANNELS", DEFAULT_MAX_CHANNELS.into()),
        ("KT_MSG_OVERHEAD", MSG_OVERHEAD.into()),
        ("KT_CHAN_TRANSPORT", CHAN_TRANSPORT.into()),
        ("KT_CHAN_DEVICE_BIT", CHAN_DEVICE_BIT.into()),
        ("KT_MSG_OPEN", MsgType::Open as u64),
        ("KT_MSG_OPEN_OK", MsgType::OpenOk as u64),
        ("KT_MSG_OPEN_ERR", MsgType::OpenErr as u64),
        ("KT_MSG_DATA", MsgType::Data as u64),
        ("KT_MSG_CLOSE", MsgType::Close as u64),
        ("KT_MSG_CREDIT_UPDATE", MsgType::CreditUpdate as u64),
        ("KT_MSG_CREDIT_REQUEST", MsgType::CreditRequest as u64),
        ("KT_MSG_RESET", MsgType::Reset as u64),
        ("KT_MSG_LISTEN", MsgType::Listen as u64),
        ("KT_MSG_UNLISTEN", MsgType::Unlisten as u64),
        ("KT_HDR_F_MORE", HDR_F_MORE.into()),
        ("KT_HDR_F_KNOWN", HDR_F_KNOWN.into()),
        ("KT_ERR_OK", ErrorCode::Ok as u64),
        ("KT_ERR_NOENT", ErrorCode::NoEnt as u64),
        ("KT_ERR_NOMEM", ErrorCode::NoMem as u64),
        ("KT_ERR_ACCES", ErrorCode::Acces as u64),
        ("KT_ERR_EXIST", ErrorCode::Exist as u64),
        ("KT_ERR_INVAL", ErrorCode::Inval as u64),
        ("KT_ERR_MFILE", ErrorCode::MFile as u64),
        ("KT_ERR_PROTO", ErrorCode::Proto as u64),
        ("KT_ERR_MSGSIZE", ErrorCode::MsgSize as u64),
        ("KT_ERR_CONNRESET", ErrorCode::ConnReset as u64),
        ("KT_ERR_CONNREFUSED", ErrorCode::ConnRefused as u64),
        ("KT_STATE_IDLE", state::IDLE.into()),
        ("KT_STATE_CONNECTING", state::CONNECTING.into()),
        ("KT_STATE_OPEN", state::OPEN.into()),
        ("KT_STATE_LISTENING", state::LISTENING.into()),
        ("KT_STATE_CLOSED", state::CLOSED.into()),
        ("KT_IOC_CONNECT", IOC_CONNECT.into()),
        ("KT_IOC_LISTEN", IOC_LISTEN.into()),
        ("KT_IOC_ACCEPT", IOC_ACCEPT.into()),
        ("KT_IOC_INFO", IOC_INFO.into()),
        ("KT_IOC_NEXT", IOC_NEXT.into()),
        ("KT_IOC_SENDV", IOC_SENDV.into()),
        ("KT_IOC_RECVV", IOC_RECVV.into()),
        ("KT_IOC_VEC_MAX", IOC_VEC_MAX as u64),
        ("KT_MSG_F_TRUNC", MSG_F_TRUNC.into()),
        ("KT_NEXT_F_MSG", NEXT_F_MSG.into()),
        ("KT_NEXT_F_ENDED", NEXT_F_ENDED.into()),
        ("KT_LISTING_CHUNK_MAX", LISTING_CHUNK_MAX as u64),
    ];
    for (name, v) in consts {
        assert_eq!(num(&c, name), *v, "{name}");
    }
    assert_eq!(c["KT_KERNEL_NAME_PREFIX"], KERNEL_NAME_PREFIX);
    assert_eq!(c["KT_DEVICE_NAME_PREFIX"], DEVICE_NAME_PREFIX);
    assert_eq!(c["KT_SERVICES_NAME"], SERVICES_NAME);

    let h = Header {
        channel: 0x8000_0005,
        msg_type: MsgType::Data,
        flags: HDR_F_MORE,
        len: 1000,
        msg_len: 70000,
        seq: 0x0102_0304,
        buf_alloc: 262_144,
        fwd_cnt: 0xffff_fff0,
        arg: ErrorCode::ConnReset as u32,
    };
    assert_eq!(c["golden.kt_hdr"], hex(&h.encode()));
    let cfg = DeviceConfig {
        max_msg_size: 65536,
        max_channels: 1024,
        rx_buf_size: 4096,
        guest_id: 0x1122_3344,
        max_queue_pairs: 2,
    };
    assert_eq!(c["golden.kt_config"], hex(&cfg.encode()));
}
