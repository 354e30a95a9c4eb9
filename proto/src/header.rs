//! The typed message header: message types, error codes, `Header` with
//! encode/decode, and the semantic checks of SPEC §8. Decoding never panics;
//! every malformed input maps to a `DecodeError` that says what to answer.

use std::fmt;

use crate::consts::{HDR_F_KNOWN, HDR_F_MORE, HDR_SIZE, NAME_MAX};
use crate::name::NameError;
use crate::wire::RawHeader;

/// Message types (`KT_MSG_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MsgType {
    /// Open a channel to a named service; payload = name.
    Open = 1,
    /// The peer accepted an `Open`.
    OpenOk = 2,
    /// The peer refused an `Open`; `arg` = error code.
    OpenErr = 3,
    /// One message (or a fragment on rx).
    Data = 4,
    /// Channel closed; `arg` = reason.
    Close = 5,
    /// Credit information only.
    CreditUpdate = 6,
    /// Ask the peer for a credit update.
    CreditRequest = 7,
    /// Transport reset (event queue, channel 0).
    Reset = 8,
    /// The driver serves a name (tx, channel 0); payload = name.
    Listen = 9,
    /// The driver no longer serves a name (tx, channel 0); payload = name.
    Unlisten = 10,
}

impl MsgType {
    /// Every type, in wire order.
    pub const ALL: [MsgType; 10] = [
        MsgType::Open,
        MsgType::OpenOk,
        MsgType::OpenErr,
        MsgType::Data,
        MsgType::Close,
        MsgType::CreditUpdate,
        MsgType::CreditRequest,
        MsgType::Reset,
        MsgType::Listen,
        MsgType::Unlisten,
    ];

    /// Whether messages of this type carry a payload.
    pub fn has_payload(self) -> bool {
        matches!(
            self,
            MsgType::Open | MsgType::Data | MsgType::Listen | MsgType::Unlisten
        )
    }

    /// Whether this type travels on channel 0 (the transport itself).
    pub fn is_transport(self) -> bool {
        matches!(self, MsgType::Reset | MsgType::Listen | MsgType::Unlisten)
    }

    /// Whether the payload of this type is a service name (SPEC §2.1).
    pub fn carries_name(self) -> bool {
        matches!(self, MsgType::Open | MsgType::Listen | MsgType::Unlisten)
    }
}

impl TryFrom<u16> for MsgType {
    type Error = DecodeError;

    fn try_from(v: u16) -> Result<Self, DecodeError> {
        MsgType::ALL
            .into_iter()
            .find(|t| *t as u16 == v)
            .ok_or(DecodeError::UnknownType(v))
    }
}

/// Error codes carried in `arg` (Linux errno values, SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Normal close.
    Ok = 0,
    /// No such service.
    NoEnt = 2,
    /// Out of resources.
    NoMem = 12,
    /// Refused by policy.
    Acces = 13,
    /// Channel id already in use.
    Exist = 17,
    /// Malformed message.
    Inval = 22,
    /// Too many channels.
    MFile = 24,
    /// Protocol violation.
    Proto = 71,
    /// Message larger than `max_msg_size`.
    MsgSize = 90,
    /// Peer went away or transport reset.
    ConnReset = 104,
    /// Nobody serves that name.
    ConnRefused = 111,
    /// The handshake or the guest's answer took too long. Host interface
    /// only (SPEC §9, `ERR 110`): never sent on the virtqueues, so not in
    /// [`ErrorCode::ALL`] and not accepted by [`ErrorCode::from_wire`].
    TimedOut = 110,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::Ok,
        ErrorCode::NoEnt,
        ErrorCode::NoMem,
        ErrorCode::Acces,
        ErrorCode::Exist,
        ErrorCode::Inval,
        ErrorCode::MFile,
        ErrorCode::Proto,
        ErrorCode::MsgSize,
        ErrorCode::ConnReset,
        ErrorCode::ConnRefused,
    ];

    /// Maps a wire value; unknown values become `Proto` (SPEC §7).
    pub fn from_wire(v: u32) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| *c as u32 == v)
            .unwrap_or(ErrorCode::Proto)
    }

    /// Maps the errno of a host handshake reply (SPEC §9): the wire codes
    /// plus the host-only [`ErrorCode::TimedOut`]; anything else becomes
    /// `Proto`.
    pub fn from_errno(v: u32) -> ErrorCode {
        if v == ErrorCode::TimedOut as u32 {
            ErrorCode::TimedOut
        } else {
            ErrorCode::from_wire(v)
        }
    }

    /// The Linux errno value.
    pub fn errno(self) -> i32 {
        self as i32
    }

    /// Short human text.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::Ok => "success",
            ErrorCode::NoEnt => "no such service",
            ErrorCode::NoMem => "out of resources",
            ErrorCode::Acces => "refused by policy",
            ErrorCode::Exist => "channel id already in use",
            ErrorCode::Inval => "malformed message",
            ErrorCode::MFile => "too many channels",
            ErrorCode::Proto => "protocol violation",
            ErrorCode::MsgSize => "message too long",
            ErrorCode::ConnReset => "connection reset",
            ErrorCode::ConnRefused => "connection refused",
            ErrorCode::TimedOut => "timed out",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.text(), self.errno())
    }
}

/// Which path a header travelled on; the rules differ (SPEC §4, §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// tx queue: driver to device, one chain per message.
    Tx,
    /// rx queue: device to driver, DATA may be fragmented.
    Rx,
    /// event queue.
    Event,
}

/// Negotiated limits the semantic checks need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest DATA message payload.
    pub max_msg_size: u32,
}

/// Everything that can be wrong with a header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    #[error("buffer too short: need {need} bytes, got {got}")]
    Short {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// `type` is not a known message type.
    #[error("unknown message type {0}")]
    UnknownType(u16),
    /// `flags` has bits this version does not know.
    #[error("unknown header flags {0:#06x}")]
    UnknownFlags(u16),
    /// A payload on a type that has none.
    #[error("{msg_type:?} carries no payload but len is {len}")]
    PayloadNotAllowed {
        /// The type.
        msg_type: MsgType,
        /// The claimed payload length.
        len: u32,
    },
    /// A message over the negotiated maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Claimed message length.
        len: u32,
        /// Negotiated maximum.
        max: u32,
    },
    /// `len` and `msg_len` (or the flags) disagree for this path.
    #[error("length fields disagree: len {len}, msg_len {msg_len}, flags {flags:#06x}")]
    LengthMismatch {
        /// Payload bytes in this buffer.
        len: u32,
        /// Total message bytes.
        msg_len: u32,
        /// Header flags.
        flags: u16,
    },
    /// The payload says more than the bytes present.
    #[error("header claims {claimed} payload bytes but {present} are present")]
    Truncated {
        /// Claimed payload bytes.
        claimed: u32,
        /// Bytes present after the header.
        present: usize,
    },
    /// The name of an OPEN, LISTEN or UNLISTEN is invalid.
    #[error("bad service name: {0}")]
    BadName(#[from] NameError),
    /// A message type on a queue where it may not appear.
    #[error("{msg_type:?} is not allowed on the {path:?} path")]
    WrongPath {
        /// The type.
        msg_type: MsgType,
        /// Where it was seen.
        path: Path,
    },
    /// Channel id 0 used by a channel's type, or RESET/LISTEN/UNLISTEN on
    /// a channel.
    #[error("{msg_type:?} on channel {channel} is not allowed")]
    BadChannel {
        /// The type.
        msg_type: MsgType,
        /// The channel id.
        channel: u32,
    },
}

impl DecodeError {
    /// The code a receiver answers with when it closes or refuses (SPEC §8).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::MsgSize,
            DecodeError::BadName(_) => ErrorCode::Inval,
            DecodeError::Short { .. }
            | DecodeError::UnknownType(_)
            | DecodeError::UnknownFlags(_)
            | DecodeError::PayloadNotAllowed { .. }
            | DecodeError::LengthMismatch { .. }
            | DecodeError::Truncated { .. }
            | DecodeError::WrongPath { .. }
            | DecodeError::BadChannel { .. } => ErrorCode::Proto,
        }
    }
}

/// A decoded `struct kt_hdr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Channel id.
    pub channel: u32,
    /// Message type.
    pub msg_type: MsgType,
    /// `KT_HDR_F_*` flags.
    pub flags: u16,
    /// Payload bytes following this header in this buffer.
    pub len: u32,
    /// Total message payload bytes.
    pub msg_len: u32,
    /// Per-channel, per-direction message number (DATA).
    pub seq: u32,
    /// Sender's receive window.
    pub buf_alloc: u32,
    /// Credit bytes the sender has freed.
    pub fwd_cnt: u32,
    /// Error code or 0.
    pub arg: u32,
}

impl Header {
    /// A header of `msg_type` on `channel` with every other field 0.
    pub fn new(msg_type: MsgType, channel: u32) -> Header {
        Header {
            channel,
            msg_type,
            flags: 0,
            len: 0,
            msg_len: 0,
            seq: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
            arg: 0,
        }
    }

    /// A header announcing `len` payload bytes in one piece (`msg_len == len`).
    pub fn with_payload(msg_type: MsgType, channel: u32, len: u32) -> Header {
        Header {
            len,
            msg_len: len,
            ..Header::new(msg_type, channel)
        }
    }

    /// Whether `KT_HDR_F_MORE` is set.
    pub fn more(&self) -> bool {
        self.flags & HDR_F_MORE != 0
    }

    /// Serializes to 32 wire bytes.
    pub fn encode(&self) -> [u8; HDR_SIZE] {
        RawHeader {
            channel: self.channel.into(),
            msg_type: (self.msg_type as u16).into(),
            flags: self.flags.into(),
            len: self.len.into(),
            msg_len: self.msg_len.into(),
            seq: self.seq.into(),
            buf_alloc: self.buf_alloc.into(),
            fwd_cnt: self.fwd_cnt.into(),
            arg: self.arg.into(),
        }
        .to_bytes()
    }

    /// Parses the first 32 bytes of `buf`: length, type and flags are
    /// checked here, the rest by [`Header::check`].
    pub fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
        let bytes: &[u8; HDR_SIZE] =
            buf.get(..HDR_SIZE)
                .and_then(|b| b.try_into().ok())
                .ok_or(DecodeError::Short {
                    need: HDR_SIZE,
                    got: buf.len(),
                })?;
        let raw = RawHeader::from_bytes(bytes);
        let msg_type = MsgType::try_from(u16::from(raw.msg_type))?;
        let flags = u16::from(raw.flags);
        if flags & !HDR_F_KNOWN != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        Ok(Header {
            channel: raw.channel.into(),
            msg_type,
            flags,
            len: raw.len.into(),
            msg_len: raw.msg_len.into(),
            seq: raw.seq.into(),
            buf_alloc: raw.buf_alloc.into(),
            fwd_cnt: raw.fwd_cnt.into(),
            arg: raw.arg.into(),
        })
    }

    /// The semantic checks of SPEC §4 and §8 for a header seen on `path`.
    pub fn check(&self, limits: &Limits, path: Path) -> Result<(), DecodeError> {
        let t = self.msg_type;
        if (t == MsgType::Reset) != (path == Path::Event) {
            return Err(DecodeError::WrongPath { msg_type: t, path });
        }
        if matches!(t, MsgType::Listen | MsgType::Unlisten) && path != Path::Tx {
            return Err(DecodeError::WrongPath { msg_type: t, path });
        }
        if t.is_transport() != (self.channel == crate::consts::CHAN_TRANSPORT) {
            return Err(DecodeError::BadChannel {
                msg_type: t,
                channel: self.channel,
            });
        }
        if !t.has_payload() && self.len != 0 {
            return Err(DecodeError::PayloadNotAllowed {
                msg_type: t,
                len: self.len,
            });
        }
        let mismatch = DecodeError::LengthMismatch {
            len: self.len,
            msg_len: self.msg_len,
            flags: self.flags,
        };
        if t != MsgType::Data {
            if self.msg_len != self.len || self.more() {
                return Err(mismatch);
            }
            if t.carries_name() && (self.len == 0 || self.len as usize > NAME_MAX) {
                return Err(DecodeError::BadName(NameError::Length(self.len as usize)));
            }
            return Ok(());
        }
        if self.msg_len > limits.max_msg_size {
            return Err(DecodeError::TooLarge {
                len: self.msg_len,
                max: limits.max_msg_size,
            });
        }
        match path {
            Path::Tx if self.msg_len != self.len || self.more() => Err(mismatch),
            Path::Rx if self.len > self.msg_len => Err(mismatch),
            _ => Ok(()),
        }
    }

    /// Checks that `present` payload bytes follow the header (at least `len`).
    pub fn check_payload(&self, present: usize) -> Result<(), DecodeError> {
        if (self.len as usize) > present {
            return Err(DecodeError::Truncated {
                claimed: self.len,
                present,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits { max_msg_size: 4096 };

    #[test]
    fn round_trip_and_golden_bytes() {
        let h = Header {
            channel: 7,
            msg_type: MsgType::Data,
            flags: HDR_F_MORE,
            len: 10,
            msg_len: 20,
            seq: 3,
            buf_alloc: 65536,
            fwd_cnt: 99,
            arg: 0,
        };
        let b = h.encode();
        assert_eq!(&b[0..4], &[7, 0, 0, 0]);
        assert_eq!(&b[4..6], &[4, 0]);
        assert_eq!(&b[6..8], &[1, 0]);
        assert_eq!(&b[20..24], &[0, 0, 1, 0]);
        assert_eq!(Header::decode(&b), Ok(h));
    }

    #[test]
    fn decode_rejects_short_unknown_type_and_flags() {
        assert_eq!(
            Header::decode(&[0u8; 31]),
            Err(DecodeError::Short { need: 32, got: 31 })
        );
        let mut b = Header::new(MsgType::Close, 1).encode();
        b[4] = 11;
        assert_eq!(Header::decode(&b), Err(DecodeError::UnknownType(11)));
        b[4] = 9;
        assert_eq!(Header::decode(&b).map(|h| h.msg_type), Ok(MsgType::Listen));
        b[4] = 10;
        assert_eq!(
            Header::decode(&b).map(|h| h.msg_type),
            Ok(MsgType::Unlisten)
        );
        b[4] = 0;
        assert_eq!(Header::decode(&b), Err(DecodeError::UnknownType(0)));
        let mut b = Header::new(MsgType::Close, 1).encode();
        b[6] = 2;
        assert_eq!(Header::decode(&b), Err(DecodeError::UnknownFlags(2)));
    }

    #[test]
    fn check_enforces_paths_and_lengths() {
        let data = Header::with_payload(MsgType::Data, 1, 100);
        assert_eq!(data.check(&LIM, Path::Tx), Ok(()));
        assert_eq!(data.check(&LIM, Path::Rx), Ok(()));
        assert!(matches!(
            data.check(&LIM, Path::Event),
            Err(DecodeError::WrongPath { .. })
        ));
        let big = Header::with_payload(MsgType::Data, 1, 4097);
        let e = big.check(&LIM, Path::Tx).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::MsgSize);
        let frag = Header {
            msg_len: 200,
            flags: HDR_F_MORE,
            ..data
        };
        assert_eq!(frag.check(&LIM, Path::Rx), Ok(()));
        assert!(frag.check(&LIM, Path::Tx).is_err());
        let liar = Header { len: 300, ..frag };
        assert!(liar.check(&LIM, Path::Rx).is_err());
        let close = Header::with_payload(MsgType::Close, 1, 4);
        assert!(matches!(
            close.check(&LIM, Path::Tx),
            Err(DecodeError::PayloadNotAllowed { .. })
        ));
        let reset = Header::new(MsgType::Reset, 0);
        assert_eq!(reset.check(&LIM, Path::Event), Ok(()));
        assert!(reset.check(&LIM, Path::Rx).is_err());
        assert!(Header::new(MsgType::Reset, 5)
            .check(&LIM, Path::Event)
            .is_err());
        assert!(Header::new(MsgType::Close, 0)
            .check(&LIM, Path::Tx)
            .is_err());
        let empty_open = Header::new(MsgType::Open, 1);
        assert_eq!(
            empty_open.check(&LIM, Path::Tx).unwrap_err().error_code(),
            ErrorCode::Inval
        );
        let zero = Header::new(MsgType::Data, 1);
        assert_eq!(zero.check(&LIM, Path::Tx), Ok(()));
    }

    #[test]
    fn listen_rules() {
        for t in [MsgType::Listen, MsgType::Unlisten] {
            let ok = Header::with_payload(t, 0, 4);
            assert_eq!(ok.check(&LIM, Path::Tx), Ok(()));
            // Driver to device only.
            for path in [Path::Rx, Path::Event] {
                assert!(matches!(
                    ok.check(&LIM, path),
                    Err(DecodeError::WrongPath { .. })
                ));
            }
            // Channel 0 only.
            assert!(matches!(
                Header::with_payload(t, 3, 4).check(&LIM, Path::Tx),
                Err(DecodeError::BadChannel { .. })
            ));
            // A name: 1..=63 bytes, msg_len == len, no MORE.
            for len in [0, 64] {
                let e = Header::with_payload(t, 0, len)
                    .check(&LIM, Path::Tx)
                    .unwrap_err();
                assert_eq!(e, DecodeError::BadName(NameError::Length(len as usize)));
                assert_eq!(e.error_code(), ErrorCode::Inval);
            }
            let more = Header {
                flags: HDR_F_MORE,
                ..ok
            };
            assert!(matches!(
                more.check(&LIM, Path::Tx),
                Err(DecodeError::LengthMismatch { .. })
            ));
            let long = Header { msg_len: 5, ..ok };
            assert!(matches!(
                long.check(&LIM, Path::Tx),
                Err(DecodeError::LengthMismatch { .. })
            ));
        }
        // Channel 0 stays RESET's (and LISTEN's) alone.
        assert!(Header::with_payload(MsgType::Open, 0, 4)
            .check(&LIM, Path::Tx)
            .is_err());
    }

    #[test]
    fn payload_presence() {
        let h = Header::with_payload(MsgType::Data, 1, 10);
        assert_eq!(h.check_payload(10), Ok(()));
        assert_eq!(
            h.check_payload(9),
            Err(DecodeError::Truncated {
                claimed: 10,
                present: 9
            })
        );
    }

    #[test]
    fn error_codes_map_unknown_to_proto() {
        assert_eq!(ErrorCode::from_wire(111), ErrorCode::ConnRefused);
        assert_eq!(ErrorCode::from_wire(5), ErrorCode::Proto);
        assert_eq!(ErrorCode::Acces.errno(), 13);
        assert_eq!(ErrorCode::NoEnt.to_string(), "no such service (errno 2)");
    }
}
