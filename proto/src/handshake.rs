//! The first message on kt-vhost-device's listening socket (SPEC §9):
//! `CONNECT <name>` answered by `OK <id>` or `ERR <errno> <text>`, or
//! `LIST` answered by `OK <n>` and the names the guest listens on; and the
//! `GUEST <guest-id> <vm-name>` first message the device sends to host
//! services whose policy entry says `identify = true`.

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

/// What a host program asks for in its first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `CONNECT <name>`: open a channel to a guest service.
    Connect(&'a str),
    /// `LIST`: the names guest listeners serve, then the connection closes.
    List,
}

/// The device's answer to `LIST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListReply {
    /// The names the guest listens on (in the device's order).
    Names(Vec<String>),
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
    /// A `LIST` answer whose name count disagrees with its lines.
    #[error("LIST answer announces {announced} names but has {got}")]
    Count {
        /// The `<n>` of `OK <n>`.
        announced: usize,
        /// Name lines present.
        got: usize,
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

/// Parses a host program's first message: `CONNECT <name>` or `LIST` (a
/// trailing newline is ignored).
pub fn parse_request(buf: &[u8]) -> Result<Request<'_>, HandshakeError> {
    let line = text(buf)?;
    if line == "LIST" {
        return Ok(Request::List);
    }
    if line.starts_with("CONNECT ") {
        return parse_connect(buf).map(Request::Connect);
    }
    Err(unexpected("CONNECT <name> or LIST", line))
}

/// The `LIST` message a host program sends.
pub fn list_msg() -> Vec<u8> {
    b"LIST\n".to_vec()
}

/// The answer to `LIST`: `OK <n>\n` and one name per line. Names cannot
/// contain a newline (SPEC §2.1); one that does not validate is left out.
pub fn list_reply<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let names: Vec<&str> = names
        .into_iter()
        .filter(|n| name::validate(n.as_bytes()).is_ok())
        .collect();
    let mut out = format!("OK {}\n", names.len()).into_bytes();
    for n in names {
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Parses the device's answer to `LIST`: the `OK <n>` line must be
/// followed by exactly `n` valid names, one per line.
pub fn parse_list_reply(buf: &[u8]) -> Result<ListReply, HandshakeError> {
    let s = std::str::from_utf8(buf)?;
    if s.starts_with("ERR ") {
        return match parse_reply(buf)? {
            Reply::Err { code, text } => Ok(ListReply::Err { code, text }),
            Reply::Ok { .. } => Err(unexpected("ERR <errno> <text>", s)),
        };
    }
    let body = s.strip_suffix('\n').unwrap_or(s);
    let mut lines = body.split('\n');
    let first = lines.next().unwrap_or("");
    let count = first
        .strip_prefix("OK ")
        .ok_or_else(|| unexpected("OK <n>", first))?;
    let n: usize = count
        .trim()
        .parse()
        .map_err(|source| HandshakeError::BadNumber {
            text: count.to_string(),
            source,
        })?;
    let names = lines
        .map(|l| name::validate(l.as_bytes()).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    if names.len() != n {
        return Err(HandshakeError::Count {
            announced: n,
            got: names.len(),
        });
    }
    Ok(ListReply::Names(names))
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
    fn requests() {
        assert_eq!(parse_request(b"LIST"), Ok(Request::List));
        assert_eq!(parse_request(&list_msg()), Ok(Request::List));
        assert_eq!(
            parse_request(b"CONNECT echo\n"),
            Ok(Request::Connect("echo"))
        );
        assert!(matches!(
            parse_request(b"CONNECT "),
            Err(HandshakeError::BadName(_))
        ));
        for bad in [&b"LIST x"[..], b"list", b"LISTEN", b"", b"CONNECT"] {
            assert!(
                matches!(parse_request(bad), Err(HandshakeError::Unexpected { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn list_replies_round_trip() {
        assert_eq!(list_reply([]), b"OK 0\n");
        assert_eq!(
            parse_list_reply(&list_reply([])),
            Ok(ListReply::Names(vec![]))
        );
        let reply = list_reply(["echo", "k.echo", "télémétrie"]);
        assert_eq!(reply, "OK 3\necho\nk.echo\ntélémétrie\n".as_bytes());
        assert_eq!(
            parse_list_reply(&reply),
            Ok(ListReply::Names(vec![
                "echo".into(),
                "k.echo".into(),
                "télémétrie".into()
            ]))
        );
        // A name that could break the format is left out, and the count
        // says so.
        assert_eq!(list_reply(["a\nb", "c"]), b"OK 1\nc\n");
        assert_eq!(
            parse_list_reply(b"ERR 111 nobody\n"),
            Ok(ListReply::Err {
                code: ErrorCode::ConnRefused,
                text: "nobody".into()
            })
        );
        assert_eq!(
            parse_list_reply(b"OK 2\necho\n"),
            Err(HandshakeError::Count {
                announced: 2,
                got: 1
            })
        );
        assert!(matches!(
            parse_list_reply(b"OK 1\n\n"),
            Err(HandshakeError::BadName(_))
        ));
        assert!(parse_list_reply(b"OK x\n").is_err());
        assert!(parse_list_reply(b"NAMES 1\na\n").is_err());
        assert!(parse_list_reply(&[0xff]).is_err());
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
