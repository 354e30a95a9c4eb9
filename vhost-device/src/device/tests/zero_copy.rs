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

/// The payloads of `got` joined, and each entry's `len`.
fn joined(got: &[(Header, Vec<u8>)]) -> (Vec<u8>, Vec<u32>) {
    let bytes = got.iter().flat_map(|(_, p)| p.clone()).collect();
    (bytes, got.iter().map(|(h, _)| h.len).collect())
}

#[test]
fn host_messages_go_straight_into_as_many_rx_buffers_as_they_need() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(64, 256);
    let host = r.open(1, 1 << 20);
    let big: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
    // The first fills one buffer directly and fragments on from the spill
    // buffer; the next ones (the channel now expects 1000 bytes) are
    // received into five buffers at once; a small one after them takes
    // one buffer and gives the others back, in order.
    host.send(&big).unwrap();
    host.send(&big).unwrap();
    host.send(b"small").unwrap();
    host.send(&big).unwrap();
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(got.len(), 16, "{got:?}");
    for (i, part) in [&got[0..5], &got[5..10], &got[11..16]].iter().enumerate() {
        let (bytes, lens) = joined(part);
        assert_eq!(lens, [224, 224, 224, 224, 104], "message {i}");
        assert_eq!(bytes, big, "message {i}");
        assert!(part[..4].iter().all(|(h, _)| h.more()) && !part[4].0.more());
        assert!(part.iter().all(|(h, _)| h.msg_len == 1000));
    }
    assert_eq!(got[10].1, b"small");
    let seqs: Vec<u32> = [0, 5, 10, 11].iter().map(|&i| got[i].0.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    // No buffer lost or used twice: 1 OPEN_OK + 16 used, 47 still posted.
    assert_eq!(r.used_idx(0), 17);
    host.send(b"x").unwrap();
    r.run(true);
    assert_eq!(r.take_used(0)[0].1, b"x");
    assert_eq!(r.used_idx(0), 18);
    assert_eq!(r.stats.snapshot().device.malformed, 0);
}

#[test]
fn a_host_message_larger_than_the_posted_buffers_waits_for_more() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(1, 256);
    let host = r.open(1, 1 << 20);
    let msg: Vec<u8> = (0..2000u32).map(|i| (i * 3) as u8).collect();
    host.send(&msg).unwrap();
    host.send(b"next").unwrap();
    r.post_rx(3, 256);
    r.run(true);
    let mut got = r.take_used(0);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(h, _)| h.more() && h.seq == 0));
    for _ in 0..4 {
        r.post_rx(2, 256);
        r.run(true);
        got.extend(r.take_used(0));
    }
    let (bytes, lens) = joined(&got[..9]);
    assert_eq!(lens, [224, 224, 224, 224, 224, 224, 224, 224, 208]);
    assert_eq!(bytes, msg);
    assert_eq!((got[9].0.seq, got[9].1.as_slice()), (1, &b"next"[..]));
}

#[test]
fn an_oversized_host_message_closes_the_channel_and_uses_no_buffer() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(8, 256);
    let host = r.open(1, 1 << 20);
    host.set_send_buffer(1 << 16).unwrap();
    host.send(&[7u8; 8193]).unwrap();
    r.run(true);
    let got = r.take_used(0);
    let types: Vec<MsgType> = got.iter().map(|(h, _)| h.msg_type).collect();
    assert_eq!(types, [MsgType::Close]);
    assert_eq!(got[0].0.arg, ErrorCode::MsgSize as u32);
    assert_eq!(r.used_idx(0), 2, "only OPEN_OK and CLOSE used buffers");
    assert_eq!(r.stats.snapshot().device.malformed, 1);
}

#[test]
fn a_burst_to_a_host_that_closed_returns_every_message_s_credit() {
    let m = mem();
    let mut r = Rig::with_window(&m, 1 << 20);
    r.post_rx(16, 256);
    let host = r.open(6, 1 << 20);
    drop(host);
    // Five messages in one pass: one burst; the host is gone (EPIPE).
    for seq in 0..5u32 {
        let mut h = Header::with_payload(MsgType::Data, 6, 100);
        h.seq = seq;
        h.buf_alloc = 1 << 20;
        r.send(&h, &[seq as u8; 100]);
    }
    r.run(true);
    r.run(true);
    let got = r.take_used(0);
    let last = got.last().unwrap().0;
    assert_eq!(last.msg_type, MsgType::Close, "{got:?}");
    assert_eq!(last.arg, ErrorCode::ConnReset as u32);
    let fwd = got.iter().map(|(h, _)| h.fwd_cnt).max().unwrap();
    assert_eq!(fwd, 5 * kt_proto::credit::cost(100), "{got:?}");
    assert_eq!(r.used_idx(1), 6, "every tx chain returned");
    assert_eq!(r.stats.snapshot().device.msgs_to_host, 0);
}

#[test]
fn an_rx_buffer_of_more_slices_than_one_recvmsg_takes_is_filled_by_copy() {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(1, 256);
    let host = r.open(1, 1 << 20);
    // One rx buffer: an indirect table of 1100 one-byte descriptors, every
    // other byte of a region (1100 slices: more than UIO_MAXIOV).
    let n = 1100u32;
    let bytes = r.alloc(2 * n);
    let table = r.alloc(16 * n);
    for i in 0..n {
        let flags = VRING_DESC_F_WRITE | if i + 1 < n { VRING_DESC_F_NEXT } else { 0 };
        let next = if i + 1 < n { i as u16 + 1 } else { 0 };
        let d = SplitDescriptor::new(bytes + 2 * u64::from(i), 1, flags as u16, next);
        r.mem
            .write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    r.add(0, &[(table, 16 * n, VRING_DESC_F_INDIRECT)]);
    let msg: Vec<u8> = (0..600u32).map(|i| (i * 13 + 1) as u8).collect();
    host.send(&msg).unwrap();
    r.run(true);
    // The used entry: 32 + 600 bytes, in the odd-spaced bytes.
    let at = r.vq[0]
        .used_addr()
        .unchecked_add(4 + 8 * u64::from(r.used_seen[0] % QSIZE));
    let len: u32 = r.mem.read_obj(at.unchecked_add(4)).unwrap();
    assert_eq!(len, 632);
    let got: Vec<u8> = (0..u64::from(len))
        .map(|i| r.mem.read_obj::<u8>(GuestAddress(bytes + 2 * i)).unwrap())
        .collect();
    let h = Header::decode(&got[..32]).unwrap();
    assert_eq!(
        (h.msg_type, h.len, h.msg_len, h.more()),
        (MsgType::Data, 600, 600, false)
    );
    assert_eq!(&got[32..], &msg[..]);
    assert_eq!(r.stats.snapshot().device.malformed, 0);
}
