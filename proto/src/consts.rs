//! Protocol constants; every value mirrors `proto/include/kerntransport.h`.

/// virtio device ID of kerntransport.
pub const VIRTIO_ID: u32 = 60;
