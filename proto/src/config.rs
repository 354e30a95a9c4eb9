//! Device configuration space (`struct kt_config`, SPEC §1.3).

use crate::consts::{
    CONFIG_SIZE, DEFAULT_MAX_CHANNELS, DEFAULT_MAX_MSG_SIZE, DEFAULT_RX_BUF_SIZE,
    MAX_MSG_SIZE_LIMIT, MAX_RX_BUF_SIZE, MIN_RX_BUF_SIZE,
};
use crate::header::DecodeError;
use crate::wire::RawConfig;

/// Typed view of the 16-byte config space.
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
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            max_channels: DEFAULT_MAX_CHANNELS,
            rx_buf_size: DEFAULT_RX_BUF_SIZE,
            guest_id: 0,
        }
    }
}

impl DeviceConfig {
    /// Serializes to the 16 config-space bytes.
    pub fn encode(&self) -> [u8; CONFIG_SIZE] {
        RawConfig {
            max_msg_size: self.max_msg_size.into(),
            max_channels: self.max_channels.into(),
            rx_buf_size: self.rx_buf_size.into(),
            guest_id: self.guest_id.into(),
        }
        .to_bytes()
    }

    /// Parses config-space bytes (at least 16).
    pub fn decode(buf: &[u8]) -> Result<DeviceConfig, DecodeError> {
        let bytes: &[u8; CONFIG_SIZE] = buf
            .get(..CONFIG_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(DecodeError::Short {
                need: CONFIG_SIZE,
                got: buf.len(),
            })?;
        let raw = RawConfig::from_bytes(bytes);
        Ok(DeviceConfig {
            max_msg_size: raw.max_msg_size.into(),
            max_channels: raw.max_channels.into(),
            rx_buf_size: raw.rx_buf_size.into(),
            guest_id: raw.guest_id.into(),
        })
    }

    /// The values a driver uses after clamping untrusted input (SPEC §1.3).
    pub fn sanitized(self) -> DeviceConfig {
        DeviceConfig {
            max_msg_size: self.max_msg_size.clamp(1, MAX_MSG_SIZE_LIMIT),
            max_channels: self.max_channels.max(1),
            rx_buf_size: self.rx_buf_size.clamp(MIN_RX_BUF_SIZE, MAX_RX_BUF_SIZE),
            guest_id: self.guest_id,
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
        };
        let b = c.encode();
        assert_eq!(
            b,
            [0, 0, 1, 0, 3, 0, 0, 0, 0, 16, 0, 0, 0xef, 0xbe, 0xad, 0xde]
        );
        assert_eq!(DeviceConfig::decode(&b), Ok(c));
        assert!(DeviceConfig::decode(&b[..15]).is_err());
    }

    #[test]
    fn sanitize_clamps_hostile_values() {
        let c = DeviceConfig {
            max_msg_size: 0,
            max_channels: 0,
            rx_buf_size: 1,
            guest_id: 1,
        }
        .sanitized();
        assert_eq!(c.max_msg_size, 1);
        assert_eq!(c.max_channels, 1);
        assert_eq!(c.rx_buf_size, MIN_RX_BUF_SIZE);
        let c = DeviceConfig {
            max_msg_size: u32::MAX,
            rx_buf_size: u32::MAX,
            ..DeviceConfig::default()
        }
        .sanitized();
        assert_eq!(c.max_msg_size, MAX_MSG_SIZE_LIMIT);
        assert_eq!(c.rx_buf_size, MAX_RX_BUF_SIZE);
        assert!(DeviceConfig::default().is_valid());
    }
}
