//! Little-endian wire structs with the exact C layout of
//! `struct kt_hdr` and `struct kt_config`. They hold bytes only; the typed
//! views (`Header`, `DeviceConfig`) convert to and from them.

/// A little-endian `u16` stored as bytes (alignment 1, like `__le16` packed in
/// the C structs, which have no padding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Le16([u8; 2]);

/// A little-endian `u32` stored as bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Le32([u8; 4]);

impl From<u16> for Le16 {
    fn from(v: u16) -> Self {
        Self(v.to_le_bytes())
    }
}
impl From<Le16> for u16 {
    fn from(v: Le16) -> Self {
        u16::from_le_bytes(v.0)
    }
}
impl From<u32> for Le32 {
    fn from(v: u32) -> Self {
        Self(v.to_le_bytes())
    }
}
impl From<Le32> for u32 {
    fn from(v: Le32) -> Self {
        u32::from_le_bytes(v.0)
    }
}

/// `struct kt_hdr` byte for byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RawHeader {
    /// Channel id.
    pub channel: Le32,
    /// `KT_MSG_*`.
    pub msg_type: Le16,
    /// `KT_HDR_F_*`.
    pub flags: Le16,
    /// Payload bytes after the header in this buffer.
    pub len: Le32,
    /// Total message payload bytes.
    pub msg_len: Le32,
    /// Per-channel message number.
    pub seq: Le32,
    /// Sender's receive window.
    pub buf_alloc: Le32,
    /// Credit the sender has freed.
    pub fwd_cnt: Le32,
    /// Error code or 0.
    pub arg: Le32,
}

/// `struct kt_config` byte for byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RawConfig {
    /// Largest DATA message.
    pub max_msg_size: Le32,
    /// Channels open at once.
    pub max_channels: Le32,
    /// rx buffer size the driver should post.
    pub rx_buf_size: Le32,
    /// Host-assigned guest id.
    pub guest_id: Le32,
    /// Queue pairs offered (with `F_MULTIQUEUE`).
    pub max_queue_pairs: Le16,
    /// Reserved, 0.
    pub reserved: Le16,
}

/// Field offsets of `struct kt_hdr`, in declaration order, for layout checks.
pub const HDR_FIELD_OFFSETS: [(&str, usize); 9] = [
    ("channel", std::mem::offset_of!(RawHeader, channel)),
    ("type", std::mem::offset_of!(RawHeader, msg_type)),
    ("flags", std::mem::offset_of!(RawHeader, flags)),
    ("len", std::mem::offset_of!(RawHeader, len)),
    ("msg_len", std::mem::offset_of!(RawHeader, msg_len)),
    ("seq", std::mem::offset_of!(RawHeader, seq)),
    ("buf_alloc", std::mem::offset_of!(RawHeader, buf_alloc)),
    ("fwd_cnt", std::mem::offset_of!(RawHeader, fwd_cnt)),
    ("arg", std::mem::offset_of!(RawHeader, arg)),
];

/// Field offsets of `struct kt_config`.
pub const CONFIG_FIELD_OFFSETS: [(&str, usize); 6] = [
    (
        "max_msg_size",
        std::mem::offset_of!(RawConfig, max_msg_size),
    ),
    (
        "max_channels",
        std::mem::offset_of!(RawConfig, max_channels),
    ),
    ("rx_buf_size", std::mem::offset_of!(RawConfig, rx_buf_size)),
    ("guest_id", std::mem::offset_of!(RawConfig, guest_id)),
    (
        "max_queue_pairs",
        std::mem::offset_of!(RawConfig, max_queue_pairs),
    ),
    ("reserved", std::mem::offset_of!(RawConfig, reserved)),
];

impl RawHeader {
    /// Serializes to the 32 wire bytes.
    pub fn to_bytes(&self) -> [u8; crate::consts::HDR_SIZE] {
        let mut out = [0u8; crate::consts::HDR_SIZE];
        let parts: [&[u8]; 9] = [
            &self.channel.0,
            &self.msg_type.0,
            &self.flags.0,
            &self.len.0,
            &self.msg_len.0,
            &self.seq.0,
            &self.buf_alloc.0,
            &self.fwd_cnt.0,
            &self.arg.0,
        ];
        let mut at = 0;
        for p in parts {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        out
    }

    /// Parses the first 32 bytes of `b`.
    pub fn from_bytes(b: &[u8; crate::consts::HDR_SIZE]) -> Self {
        let l32 = |at: usize| Le32([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Self {
            channel: l32(0),
            msg_type: Le16([b[4], b[5]]),
            flags: Le16([b[6], b[7]]),
            len: l32(8),
            msg_len: l32(12),
            seq: l32(16),
            buf_alloc: l32(20),
            fwd_cnt: l32(24),
            arg: l32(28),
        }
    }
}

impl RawConfig {
    /// Serializes to the 20 wire bytes.
    pub fn to_bytes(&self) -> [u8; crate::consts::CONFIG_SIZE] {
        let mut out = [0u8; crate::consts::CONFIG_SIZE];
        out[0..4].copy_from_slice(&self.max_msg_size.0);
        out[4..8].copy_from_slice(&self.max_channels.0);
        out[8..12].copy_from_slice(&self.rx_buf_size.0);
        out[12..16].copy_from_slice(&self.guest_id.0);
        out[16..18].copy_from_slice(&self.max_queue_pairs.0);
        out[18..20].copy_from_slice(&self.reserved.0);
        out
    }

    /// Parses 20 wire bytes.
    pub fn from_bytes(b: &[u8; crate::consts::CONFIG_SIZE]) -> Self {
        let l32 = |at: usize| Le32([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Self {
            max_msg_size: l32(0),
            max_channels: l32(4),
            rx_buf_size: l32(8),
            guest_id: l32(12),
            max_queue_pairs: Le16([b[16], b[17]]),
            reserved: Le16([b[18], b[19]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{CONFIG_SIZE, HDR_SIZE};

    #[test]
    fn sizes_match_the_wire() {
        assert_eq!(std::mem::size_of::<RawHeader>(), HDR_SIZE);
        assert_eq!(std::mem::size_of::<RawConfig>(), CONFIG_SIZE);
    }

    #[test]
    fn to_bytes_follows_field_offsets() {
        let h = RawHeader {
            channel: 0x0403_0201.into(),
            msg_type: 0x0605.into(),
            flags: 0x0807.into(),
            len: 0x0c0b_0a09.into(),
            msg_len: 0x100f_0e0d.into(),
            seq: 0x1413_1211.into(),
            buf_alloc: 0x1817_1615.into(),
            fwd_cnt: 0x1c1b_1a19.into(),
            arg: 0x201f_1e1d.into(),
        };
        let bytes = h.to_bytes();
        let expect: Vec<u8> = (1..=32).collect();
        assert_eq!(bytes.to_vec(), expect);
        assert_eq!(RawHeader::from_bytes(&bytes), h);
    }
}
