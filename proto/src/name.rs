//! Service names: validation (SPEC §2.1) and the reserved prefixes (`k.`
//! for guest kernel services, `kt.` for the device's own).

use crate::consts::{DEVICE_NAME_PREFIX, KERNEL_NAME_PREFIX, NAME_MAX};

/// Why a service name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or longer than `NAME_MAX` bytes.
    #[error("name must be 1 to {max} bytes, got {0}", max = NAME_MAX)]
    Length(usize),
    /// Not valid UTF-8.
    #[error("name is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    /// Contains NUL or another control character.
    #[error("name contains control character {0:#04x} at byte {1}")]
    Control(u8, usize),
}

/// Validates a service name as it travels on the wire (no terminator).
pub fn validate(bytes: &[u8]) -> Result<&str, NameError> {
    if bytes.is_empty() || bytes.len() > NAME_MAX {
        return Err(NameError::Length(bytes.len()));
    }
    if let Some(at) = bytes.iter().position(|b| b.is_ascii_control()) {
        return Err(NameError::Control(bytes[at], at));
    }
    std::str::from_utf8(bytes).map_err(|e| NameError::NotUtf8(e.valid_up_to()))
}

/// Whether `name` is reserved for services the device implements itself
/// (`kt.`): no host policy may name them.
pub fn is_device_reserved(name: &str) -> bool {
    name.starts_with(DEVICE_NAME_PREFIX)
}

/// Whether `name` is reserved for guest kernel services.
pub fn is_kernel_reserved(name: &str) -> bool {
    name.starts_with(KERNEL_NAME_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reasonable_names() {
        assert_eq!(validate(b"echo"), Ok("echo"));
        assert_eq!(validate("télémétrie".as_bytes()), Ok("télémétrie"));
        assert_eq!(validate(&[b'a'; 63]).map(str::len), Ok(63));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate(b""), Err(NameError::Length(0)));
        assert_eq!(validate(&[b'a'; 64]), Err(NameError::Length(64)));
        assert_eq!(validate(b"ec\0ho"), Err(NameError::Control(0, 2)));
        assert_eq!(validate(b"echo\n"), Err(NameError::Control(b'\n', 4)));
        assert_eq!(validate(&[b'a', 0xff]), Err(NameError::NotUtf8(1)));
    }

    #[test]
    fn kernel_prefix() {
        assert!(is_kernel_reserved("k.echo"));
        assert!(!is_kernel_reserved("kecho"));
        assert!(is_device_reserved("kt.services"));
        assert!(!is_device_reserved("kt"));
        assert!(!is_device_reserved("k.echo"));
    }
}
