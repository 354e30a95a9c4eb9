//! `vhost-user-fill [--realtime] SOCKET [QUEUES [CONFIG]]`: the test backend of
//! tests/support/fill_backend.rs as a program, for runs inside the KVM
//! runner VM (with `--vhost-user ...,virtio-id=4` the guest's virtio-rng
//! driver drives it end to end) and for the guest driver's `flood` test.
//! CONFIG is the config space in hex (e.g. `0010000010000000`); without it
//! config byte `i` reads as `i`. `--realtime` fills from a `SCHED_FIFO`
//! thread, so the device keeps ahead of the guest (the flood test).

#[path = "../tests/support/fill_backend.rs"]
mod fill_backend;

const USAGE: &str = "usage: vhost-user-fill [--realtime] SOCKET [QUEUES [CONFIG]]";

fn fail(msg: &str) -> ! {
    eprintln!("vhost-user-fill: {msg}");
    std::process::exit(1);
}

/// Bytes from an even number of hex digits.
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let realtime = args.next_if(|a| a == "--realtime").is_some();
    let Some(socket) = args.next() else {
        fail(USAGE);
    };
    let queues = match args.next().map(|q| q.parse::<usize>()) {
        None => 1,
        Some(Ok(q)) if q > 0 => q,
        Some(_) => fail("QUEUES must be a positive number"),
    };
    let config = args.next().map(|c| {
        parse_hex(&c).unwrap_or_else(|| fail("CONFIG must be bytes in hex (two digits each)"))
    });
    if args.next().is_some() {
        fail(USAGE);
    }
    let opts = fill_backend::Options { config, realtime };
    if let Err(e) = fill_backend::serve(std::path::Path::new(&socket), queues, opts) {
        fail(&e);
    }
}
