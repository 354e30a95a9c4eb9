//! Property tests: every valid header and config round-trips, arbitrary bytes
//! never panic the decoders, and a sender that obeys credit never overruns a
//! receiver.

use kt_proto::consts::{HDR_F_MORE, HDR_SIZE};
use kt_proto::credit::{RecvCredit, SendCredit};
use kt_proto::{handshake, name, DeviceConfig, Header, Limits, MsgType, Path};
use proptest::prelude::*;

fn any_type() -> impl Strategy<Value = MsgType> {
    prop::sample::select(MsgType::ALL.to_vec())
}

prop_compose! {
    fn any_header()(channel in any::<u32>(), t in any_type(), more in any::<bool>(),
                    len in any::<u32>(), msg_len in any::<u32>(), seq in any::<u32>(),
                    buf_alloc in any::<u32>(), fwd_cnt in any::<u32>(), arg in any::<u32>())
        -> Header {
        Header { channel, msg_type: t, flags: if more { HDR_F_MORE } else { 0 }, len, msg_len,
                 seq, buf_alloc, fwd_cnt, arg }
    }
}

proptest! {
    #[test]
    fn header_round_trips(h in any_header()) {
        prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn decode_never_panics_and_is_faithful(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(h) = Header::decode(&bytes) {
            prop_assert_eq!(&h.encode()[..], &bytes[..HDR_SIZE]);
            for path in [Path::Tx, Path::Rx, Path::Event] {
                let _ = h.check(&Limits { max_msg_size: 65536 }, path);
            }
        } else {
            prop_assert!(bytes.len() < HDR_SIZE || Header::decode(&bytes[..HDR_SIZE]).is_err());
        }
    }

    #[test]
    fn checked_tx_data_is_consistent(len in 0u32..70000, max in 1u32..70000) {
        let h = Header::with_payload(MsgType::Data, 1, len);
        let ok = h.check(&Limits { max_msg_size: max }, Path::Tx).is_ok();
        prop_assert_eq!(ok, len <= max);
    }

    #[test]
    fn config_round_trips(a in any::<u32>(), b in any::<u32>(), c in any::<u32>(), d in any::<u32>(), e in any::<u16>()) {
        let cfg = DeviceConfig { max_msg_size: a, max_channels: b, rx_buf_size: c, guest_id: d, max_queue_pairs: e };
        prop_assert_eq!(DeviceConfig::decode(&cfg.encode()), Ok(cfg));
        prop_assert!(cfg.sanitized().is_valid());
    }

    #[test]
    fn names_and_handshakes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(n) = name::validate(&bytes) {
            let msg = handshake::connect_msg(n);
            prop_assert_eq!(handshake::parse_connect(&msg), Ok(n));
        }
        let _ = handshake::parse_connect(&bytes);
        let _ = handshake::parse_reply(&bytes);
    }

    #[test]
    fn obeying_sender_never_overruns_receiver(
        window in 1000u32..100_000,
        start in any::<u32>(),
        ops in prop::collection::vec((0u32..900, any::<bool>()), 1..200),
    ) {
        let mut rx = RecvCredit::new(window);
        rx.fwd_cnt = start;
        let mut tx = SendCredit { tx_cnt: start, peer_buf_alloc: window, peer_fwd_cnt: start };
        let mut queued = std::collections::VecDeque::new();
        for (len, consume) in ops {
            if tx.can_send(len) {
                tx.on_send(len);
                prop_assert!(rx.on_receive(len).is_ok());
                queued.push_back(len);
            }
            if consume {
                if let Some(l) = queued.pop_front() {
                    rx.on_consume(l);
                    tx.on_peer(rx.buf_alloc, rx.fwd_cnt);
                }
            }
        }
    }
}
