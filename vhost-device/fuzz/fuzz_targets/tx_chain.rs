//! Fuzz target: kt-vhost-device's descriptor-chain and header handling on
//! a guest memory and split virtqueue built from arbitrary bytes (layout in
//! `src/lib.rs`). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kt_vhost_device_fuzz::run(data);
});
