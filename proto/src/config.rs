//! Device configuration space (`struct kt_config`, SPEC §1.3).

use crate::consts::{
    CONFIG_SIZE, CONFIG_SIZE_V1, DEFAULT_MAX_CHANNELS, DEFAULT_MAX_MSG_SIZE, DEFAULT_RX_BUF_SIZE,
    MAX_MSG_SIZE_LIMIT, MAX_QUEUE_PAIRS, MAX_RX_BUF_SIZE, MIN_RX_BUF_SIZE,
};
use crate::header::DecodeError;
use crate::wire::RawConfig;

/// Typed view of the 20-byte config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Largest DATA message, either direction.
    pub max_msg_size: u32,
    /// Channels open at once.
    pub max_channels: u32,
    /// rx buffer size the driver should post.
    pub rx_buf_size: u32,
    /// Host-assigned id of this guest.
    pub guest_id: u32,
    /// rx/tx queue pairs the device serves (meaningful with
    /// `F_MULTIQUEUE`; 1 otherwise).
    pub max_queue_pairs: u16,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            max_channels: DEFAULT_MAX_CHANNELS,
            rx_buf_size: DEFAULT_RX_BUF_SIZE,
            guest_id: 0,
            max_queue_pairs: 1,
        }
    }
}

impl DeviceConfig {
    /// Serializes to the 20 config-space bytes.
    pub fn encode(&self) -> [u8; CONFIG_SIZE] {
        RawConfig {
            max_msg_size: self.max_msg_size.into(),
            max_channels: self.max_channels.into(),
            rx_buf_size: self.rx_buf_size.into(),
            guest_id: self.guest_id.into(),
            max_queue_pairs: self.max_queue_pairs.into(),
            reserved: 0.into(),
        }
        .to_bytes()
    }

    /// Parses config-space bytes: at least the 16 of a device without
    /// `F_MULTIQUEUE` (`max_queue_pairs` is then 1, as it is with 17).
    /// The reserved field is not read.
    pub fn decode(buf: &[u8]) -> Result<DeviceConfig, DecodeError> {
        if buf.len() < CONFIG_SIZE_V1 {
            return Err(DecodeError::Short {
                need: CONFIG_SIZE_V1,
                got: buf.len(),
            });
        }
        let mut bytes = [0u8; CONFIG_SIZE];
        let n = buf.len().min(CONFIG_SIZE);
        bytes[..n].copy_from_slice(&buf[..n]);
        if n < CONFIG_SIZE_V1 + 2 {
            // No (whole) max_queue_pairs: the one pair of SPEC §1.3.
            bytes[CONFIG_SIZE_V1..CONFIG_SIZE_V1 + 2].copy_from_slice(&1u16.to_le_bytes());
        }
        let raw = RawConfig::from_bytes(&bytes);
        Ok(DeviceConfig {
            max_msg_size: raw.max_msg_size.into(),
            max_channels: raw.max_channels.into(),
            rx_buf_size: raw.rx_buf_size.into(),
            guest_id: raw.guest_id.into(),
            max_queue_pairs: raw.max_queue_pairs.into(),
        })
    }

    /// The values a driver uses after clamping untrusted input (SPEC §1.3).
    pub fn sanitized(self) -> DeviceConfig {
        DeviceConfig {
            max_msg_size: self.max_msg_size.clamp(1, MAX_MSG_SIZE_LIMIT),
            max_channels: self.max_channels.max(1),
            rx_buf_size: self.rx_buf_size.clamp(MIN_RX_BUF_SIZE, MAX_RX_BUF_SIZE),
            guest_id: self.guest_id,
            max_queue_pairs: self.max_queue_pairs.clamp(1, MAX_QUEUE_PAIRS),
        }
    }

    /// Whether a device may offer this configuration as it is.
    pub fn is_valid(&self) -> bool {
        self.sanitized() == *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let c = DeviceConfig {
            max_msg_size: 0x10000,
            max_channels: 3,
            rx_buf_size: 4096,
            guest_id: 0xdead_beef,
            max_queue_pairs: 4,
        };
        let b = c.encode();
        assert_eq!(
            b,
            [0, 0, 1, 0, 3, 0, 0, 0, 0, 16, 0, 0, 0xef, 0xbe, 0xad, 0xde, 4, 0, 0, 0]
        );
        assert_eq!(DeviceConfig::decode(&b), Ok(c));
        // A device without F_MULTIQUEUE shows 16 bytes: one pair.
        let old = DeviceConfig::decode(&b[..16]).unwrap();
        assert_eq!(old.max_queue_pairs, 1);
        assert_eq!(old.guest_id, c.guest_id);
        assert!(DeviceConfig::decode(&b[..15]).is_err());
        assert_eq!(DeviceConfig::decode(&b[..17]).unwrap().max_queue_pairs, 1);
        assert_eq!(DeviceConfig::decode(&b[..18]), Ok(c));
    }

    #[test]
    fn sanitize_clamps_hostile_values() {
        let c = DeviceConfig {
            max_msg_size: 0,
            max_channels: 0,
            rx_buf_size: 1,
            guest_id: 1,
            max_queue_pairs: 0,
        }
        .sanitized();
        assert_eq!(c.max_queue_pairs, 1);
        assert_eq!(c.max_msg_size, 1);
        assert_eq!(c.max_channels, 1);
        assert_eq!(c.rx_buf_size, MIN_RX_BUF_SIZE);
        let c = DeviceConfig {
            max_msg_size: u32::MAX,
            rx_buf_size: u32::MAX,
            max_queue_pairs: u16::MAX,
            ..DeviceConfig::default()
        }
        .sanitized();
        assert_eq!(c.max_queue_pairs, MAX_QUEUE_PAIRS);
        assert_eq!(c.max_msg_size, MAX_MSG_SIZE_LIMIT);
        assert_eq!(c.rx_buf_size, MAX_RX_BUF_SIZE);
        assert!(DeviceConfig::default().is_valid());
    }
}
