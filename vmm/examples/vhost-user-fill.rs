//! `vhost-user-fill SOCKET [QUEUES]`: the test backend of
//! tests/support/fill_backend.rs as a program, for runs inside the KVM
//! runner VM (with `--vhost-user ...,virtio-id=4` the guest's virtio-rng
//! driver drives it end to end).

#[path = "../tests/support/fill_backend.rs"]
mod fill_backend;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("usage: vhost-user-fill SOCKET [QUEUES]");
        std::process::exit(1);
    };
    let queues = match args.next().map(|q| q.parse::<usize>()) {
        None => 1,
        Some(Ok(q)) if q > 0 => q,
        Some(_) => {
            eprintln!("vhost-user-fill: QUEUES must be a positive number");
            std::process::exit(1);
        }
    };
    if let Err(e) = fill_backend::serve(std::path::Path::new(&socket), queues) {
        eprintln!("vhost-user-fill: {e}");
        std::process::exit(1);
    }
}
