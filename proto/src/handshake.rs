//! The host-to-guest connect handshake on kt-vhost-device's listening socket
//! (SPEC §9): `CONNECT <name>` answered by `OK <id>` or `ERR <errno> <text>`;
//! and the `GUEST <guest-id> <vm-name>` first message the device sends to
//! host services whose policy entry says `identify = true`.

use crate::header::ErrorCode;
use crate::name::{self, NameError};

/// A reply the device sends to `CONNECT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The guest accepted; the channel id.
    Ok {
        /// Channel id.
        channel: u32,
    },
    /// Refused.
    Err {
        /// Why.
        code: ErrorCode,
        /// Human text from the device.
        text: String,
    },
}

/// A handshake line that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not ASCII/UTF-8 text.
    #[error("handshake message is not UTF-8")]
    NotText(#[from] std::str::Utf8Error),
    /// The first word is not what the handshake expects.
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What arrived (truncated).
        got: String,
    },
    /// The service name is invalid.
    #[error("bad service name: {0}")]
    BadName(#[from] NameError),
    /// A number did not parse.
    #[error("bad number {text:?} in handshake reply")]
    BadNumber {
        /// The text that should have been a number.
        text: String,
        /// Why it did not parse.
        #[source]
        source: std::num::ParseIntError,
    },
}

fn text(buf: &[u8]) -> Result<&str, HandshakeError> {
    let s = std::str::from_utf8(buf)?;
    Ok(s.strip_suffix('\n').unwrap_or(s))
}

fn unexpected(expected: &'static str, got: &str) -> HandshakeError {
    HandshakeError::Unexpected {
        expected,
        got: got.chars().take(80).collect(),
    }
}

/// Parses `CONNECT <name>` (a trailing newline is ignored).
pub fn parse_connect(buf: &[u8]) -> Result<&str, HandshakeError> {
    let line = text(buf)?;
    let name = line
        .strip_prefix("CONNECT ")
        .ok_or_else(|| unexpected("CONNECT <name>", line))?;
    Ok(name::validate(name.as_bytes())?)
}

/// The `CONNECT <name>` message a host program sends.
pub fn connect_msg(name: &str) -> Vec<u8> {
    format!("CONNECT {name}\n").into_bytes()
}

/// The `OK <id>` reply.
pub fn ok_msg(channel: u32) -> Vec<u8> {
    format!("OK {channel}\n").into_bytes()
}

/// The `ERR <errno> <text>` reply.
pub fn err_msg(code: ErrorCode, text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    format!("ERR {} {}\n", code.errno(), text).into_bytes()
}

/// The `GUEST <guest-id> <vm-name>` first message (VM names have no
/// spaces or control characters: `kt-vhost-device` checks them).
pub fn guest_msg(guest_id: u32, vm: &str) -> Vec<u8> {
    format!("GUEST {guest_id} {vm}\n").into_bytes()
}

/// Parses a `GUEST <guest-id> <vm-name>` first message.
pub fn parse_guest(buf: &[u8]) -> Result<(u32, &str), HandshakeError> {
    let line = text(buf)?;
    let rest = line
        .strip_prefix("GUEST ")
        .ok_or_else(|| unexpected("GUEST <guest-id> <vm-name>", line))?;
    let (num, vm) = rest
        .split_once(' ')
        .ok_or_else(|| unexpected("GUEST <guest-id> <vm-name>", line))?;
    let id = num.parse().map_err(|source| HandshakeError::BadNumber {
        text: num.to_string(),
        source,
    })?;
    if vm.is_empty() || vm.contains(' ') {
        return Err(unexpected("GUEST <guest-id> <vm-name>", line));
    }
    Ok((id, vm))
}

/// Parses the device's reply.
pub fn parse_reply(buf: &[u8]) -> Result<Reply, HandshakeError> {
    let line = text(buf)?;
    if let Some(id) = line.strip_prefix("OK ") {
        let channel = id
            .trim()
            .parse()
            .map_err(|source| HandshakeError::BadNumber {
                text: id.to_string(),
                source,
            })?;
        return Ok(Reply::Ok { channel });
    }
    if let Some(rest) = line.strip_prefix("ERR ") {
        let (num, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let errno: u32 = num.parse().map_err(|source| HandshakeError::BadNumber {
            text: num.to_string(),
            source,
        })?;
        return Ok(Reply::Err {
            code: ErrorCode::from_errno(errno),
            text: text.to_string(),
        });
    }
    Err(unexpected("OK <id> or ERR <errno> <text>", line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_line_round_trip() {
        assert_eq!(guest_msg(7, "web-1"), b"GUEST 7 web-1\n");
        assert_eq!(parse_guest(&guest_msg(7, "web-1")).unwrap(), (7, "web-1"));
        for bad in [
            &b"GUEST 7\n"[..],
            b"GUEST x web\n",
            b"GUEST 7 a b\n",
            b"HELLO 7 a\n",
        ] {
            assert!(parse_guest(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connect_round_trip() {
        assert_eq!(parse_connect(&connect_msg("echo")), Ok("echo"));
        assert_eq!(parse_connect(b"CONNECT k.echo"), Ok("k.echo"));
        assert!(matches!(
            parse_connect(b"HELLO echo"),
            Err(HandshakeError::Unexpected { .. })
        ));
        assert!(matches!(
            parse_connect(b"CONNECT "),
            Err(HandshakeError::BadName(NameError::Length(0)))
        ));
        assert!(matches!(
            parse_connect(&[0xff]),
            Err(HandshakeError::NotText(_))
        ));
    }

    #[test]
    fn replies_round_trip() {
        assert_eq!(
            parse_reply(&ok_msg(0x8000_0001)),
            Ok(Reply::Ok {
                channel: 0x8000_0001
            })
        );
        assert_eq!(
            parse_reply(&err_msg(ErrorCode::ConnRefused, "nobody\nlistens")),
            Ok(Reply::Err {
                code: ErrorCode::ConnRefused,
                text: "nobodylistens".into()
            })
        );
        // The errnos only the host interface uses round-trip too; an
        // unknown one reads as EPROTO.
        for (code, errno) in [(ErrorCode::MFile, 24), (ErrorCode::TimedOut, 110)] {
            let msg = err_msg(code, code.text());
            assert!(msg.starts_with(format!("ERR {errno} ").as_bytes()));
            let Ok(Reply::Err { code: back, .. }) = parse_reply(&msg) else {
                panic!("{msg:?} does not parse");
            };
            assert_eq!(back, code);
            assert_eq!(back.errno(), errno);
        }
        assert_eq!(
            parse_reply(b"ERR 99 odd\n"),
            Ok(Reply::Err {
                code: ErrorCode::Proto,
                text: "odd".into()
            })
        );
        assert_eq!(ErrorCode::from_wire(110), ErrorCode::Proto);
        assert!(parse_reply(b"OK x").is_err());
        assert!(parse_reply(b"ERR x y").is_err());
        assert!(parse_reply(b"MAYBE").is_err());
    }
}
