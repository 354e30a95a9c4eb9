//! Fuzz target: every decoder in kt-proto on arbitrary bytes. Must never
//! panic, and whatever decodes must re-encode to the same bytes.
#![no_main]

use kt_proto::{handshake, name, DeviceConfig, Header, Limits, Path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        assert_eq!(&h.encode()[..], &data[..32]);
        for path in [Path::Tx, Path::Rx, Path::Event] {
            let _ = h.check(
                &Limits {
                    max_msg_size: 65536,
                },
                path,
            );
        }
        let _ = h.check_payload(data.len() - 32);
    }
    if let Ok(c) = DeviceConfig::decode(data) {
        // Up to max_queue_pairs (18 bytes) the bytes re-encode to
        // themselves (the reserved field is not read); fewer than 18 (a
        // device without KT_F_MULTIQUEUE shows 16) decode as one pair.
        let e = c.encode();
        let n = data.len().min(18);
        if n == 18 {
            assert_eq!(&e[..18], &data[..18]);
        } else {
            assert_eq!(&e[..16], &data[..16]);
            assert_eq!(c.max_queue_pairs, 1);
        }
        assert!(c.sanitized().is_valid());
    }
    let _ = name::validate(data);
    let _ = handshake::parse_connect(data);
    let _ = handshake::parse_reply(data);
    let _ = handshake::parse_request(data);
    let _ = handshake::parse_list_reply(data);
});
