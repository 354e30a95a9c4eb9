//! Unit tests of the zero-copy data path: guest tx payloads sent to host
//! sockets straight from guest memory (iovecs over the chain), host
//! messages received straight into rx buffers.

use super::*;

/// Puts `bytes` into guest memory as a chain of pieces of 1, 2, ... 97
/// bytes, each at its own address; returns the descriptors.
fn scatter(r: &mut Rig<'_>, bytes: &[u8]) -> Vec<(u64, u32, u32)> {
    let mut descs = vec![];
    let (mut off, mut k) = (0usize, 1usize);
    while off < bytes.len() {
        let n = k.min(bytes.len() - off);
        let a = r.alloc(n as u32);
        r.mem
            .write_slice(&bytes[off..off + n], GuestAddress(a))
            .unwrap();
        descs.push((a, n as u32, 0));
        off += n;
        k = k % 97 + 1;
    }
    descs
}

#[test]
fn a_message_over_many_descriptors_reaches_the_host_intact() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(16, 256);
    let host = r.open(1, 1 << 20);
    let payload: Vec<u8> = (0..8000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut h = Header::with_payload(MsgType::Data, 1, 8000);
    h.buf_alloc = 1 << 20;
    let mut bytes = h.encode().to_vec();
    bytes.extend_from_slice(&payload);
    // The header itself spans seven descriptors (1 + 2 + ... + 7 = 28, then 4
    // of the eighth).
    let descs = scatter(&mut r, &bytes);
    assert!(descs.len() > 100, "{}", descs.len());
    r.add(1, &descs);
    r.run(true);
    let mut buf = vec![0u8; 9000];
    assert_eq!(host.recv(&mut buf).unwrap(), Recv::Msg(8000));
    assert_eq!(&buf[..8000], &payload[..]);
    let s = r.stats.snapshot();
    assert_eq!((s.device.msgs_to_host, s.device.bytes_to_host), (1, 8000));
    assert_eq!(s.device.malformed, 0);
}

#[test]
fn a_message_the_host_socket_cannot_take_now_is_copied_before_the_chain_is_returned() {
    let m = mem();
    let mut r = Rig::with_window(&m, 1 << 20);
    r.post_rx(16, 256);
    let host = r.open(4, 1 << 20);
    // More messages than the host socket queues: the later ones wait in
    // the device as copies; the guest may reuse its buffers at once.
    let mut at = vec![];
    for seq in 0..30u32 {
        let mut h = Header::with_payload(MsgType::Data, 4, 1000);
        h.seq = seq;
        h.buf_alloc = 1 << 20;
        at.push(r.alloc(1032));
        let a = *at.last().unwrap();
        r.mem.write_slice(&h.encode(), GuestAddress(a)).unwrap();
        r.mem
            .write_slice(&[seq as u8; 1000], GuestAddress(a + 32))
            .unwrap();
        r.add(1, &[(a, 1032, 0)]);
    }
    r.run(true);
    assert_eq!(r.used_idx(1), 31, "every tx chain returned");
    assert!(r.dev.pending_bytes(4) > 0, "host socket took everything");
    for a in &at {
        r.mem
            .write_slice(&[0xeeu8; 1000], GuestAddress(a + 32))
            .unwrap();
    }
    let mut buf = [0u8; 2048];
    for seq in 0..30u32 {
        assert_eq!(host.recv(&mut buf).unwrap(), Recv::Msg(1000));
        assert!(buf[..1000].iter().all(|&b| b == seq as u8), "message {seq}");
        r.run(true);
    }
    assert_eq!(r.dev.pending_bytes(4), 0);
}
