//! The `kt.services` listing (SPEC §3.3): how the device frames the names
//! a guest may open into DATA messages ([`encode`]), and how a reader
//! puts them back together and checks them ([`Reader`], [`parse`]).
//!
//! A listing is the sorted names, each followed by `\n`, carried by one or
//! more DATA messages of at most `min(max_msg_size, LISTING_CHUNK_MAX)`
//! bytes and ended by an empty DATA message. When that size is at least
//! `NAME_MAX + 1` every message holds whole lines; below it lines are cut
//! at any byte. The reader side treats the device as untrusted: a
//! listing's size is bounded and every name is checked like a wire name.

use crate::consts::{DEVICE_NAME_PREFIX, LISTING_CHUNK_MAX};
use crate::name::{self, NameError};

/// Largest listing (text bytes) a [`Reader`] accepts by default: 65,536
/// names of the longest kind.
pub const LISTING_READ_MAX: usize = 4 << 20;

/// Why a listing was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    /// The listing grew past the reader's bound before it ended.
    #[error("listing larger than {max} bytes")]
    TooLarge {
        /// The bound.
        max: usize,
    },
    /// The text does not end with a newline.
    #[error("listing does not end with a newline")]
    Unterminated,
    /// A line is not a valid service name.
    #[error("line {line}: {source}")]
    BadName {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: NameError,
    },
    /// A line names a device-reserved service, which no policy can hold.
    #[error("line {line}: {name:?} is a device-reserved name")]
    Reserved {
        /// 1-based line number.
        line: usize,
        /// The name.
        name: String,
    },
    /// Names out of order or repeated.
    #[error("line {line}: {name:?} is not after {prev:?} (names are sorted and unique)")]
    Order {
        /// 1-based line number.
        line: usize,
        /// The name.
        name: String,
        /// The line before it.
        prev: String,
    },
}

/// Payload bytes per listing message for a device whose `max_msg_size` is
/// `max_msg_size` (at least 1).
pub fn chunk_size(max_msg_size: u32) -> usize {
    usize::try_from(max_msg_size)
        .unwrap_or(usize::MAX)
        .clamp(1, LISTING_CHUNK_MAX)
}

/// The DATA messages of one listing of `names` (already sorted and
/// unique), the last one empty.
pub fn encode<S: AsRef<str>>(names: &[S], max_msg_size: u32) -> Vec<Vec<u8>> {
    let cap = chunk_size(max_msg_size);
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for n in names {
        let n = n.as_ref().as_bytes();
        let line = n.len() + 1;
        if line <= cap {
            // Whole lines only.
            if cur.len() + line > cap {
                out.push(std::mem::take(&mut cur));
            }
            cur.extend_from_slice(n);
            cur.push(b'\n');
        } else {
            for &b in n.iter().chain(std::iter::once(&b'\n')) {
                if cur.len() == cap {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push(b);
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.push(Vec::new());
    out
}

/// Checks a whole listing's text and returns its names.
pub fn parse(text: &[u8]) -> Result<Vec<String>, ListingError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = text.strip_suffix(b"\n") else {
        return Err(ListingError::Unterminated);
    };
    let mut names: Vec<String> = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let name = name::validate(raw).map_err(|source| ListingError::BadName { line, source })?;
        if name.starts_with(DEVICE_NAME_PREFIX) {
            return Err(ListingError::Reserved {
                line,
                name: name.to_owned(),
            });
        }
        if let Some(prev) = names.last() {
            if prev.as_bytes() >= name.as_bytes() {
                return Err(ListingError::Order {
                    line,
                    name: name.to_owned(),
                    prev: prev.clone(),
                });
            }
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Puts listings back together from the DATA messages of a `kt.services`
/// channel, one message at a time.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    max: usize,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new(LISTING_READ_MAX)
    }
}

impl Reader {
    /// A reader refusing listings over `max` bytes.
    pub fn new(max: usize) -> Reader {
        Reader {
            buf: Vec::new(),
            max,
        }
    }

    /// Takes one DATA message; returns the names once it ended a listing.
    /// After an error the partial listing is dropped.
    pub fn push(&mut self, msg: &[u8]) -> Result<Option<Vec<String>>, ListingError> {
        if msg.is_empty() {
            let text = std::mem::take(&mut self.buf);
            return parse(&text).map(Some);
        }
        if self.buf.len().saturating_add(msg.len()) > self.max {
            self.buf = Vec::new();
            return Err(ListingError::TooLarge { max: self.max });
        }
        self.buf.extend_from_slice(msg);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(msgs: &[Vec<u8>]) -> Vec<String> {
        let mut r = Reader::default();
        let (last, rest) = msgs.split_last().unwrap();
        for m in rest {
            assert_eq!(r.push(m).unwrap(), None);
        }
        r.push(last).unwrap().unwrap()
    }

    #[test]
    fn empty_listing_is_one_empty_message() {
        let none: [&str; 0] = [];
        assert_eq!(encode(&none, 65536), vec![Vec::<u8>::new()]);
        assert!(read_all(&encode(&none, 65536)).is_empty());
    }

    #[test]
    fn whole_lines_per_message_when_a_line_fits() {
        let names = ["alpha", "beta", "gamma"];
        let msgs = encode(&names, 65536);
        assert_eq!(msgs, vec![b"alpha\nbeta\ngamma\n".to_vec(), vec![]]);
        // 11 bytes: "alpha\nbeta\n" fits, "gamma\n" goes on.
        let msgs = encode(&names, 11);
        assert_eq!(
            msgs,
            vec![b"alpha\nbeta\n".to_vec(), b"gamma\n".to_vec(), vec![]]
        );
        assert_eq!(read_all(&msgs), names);
    }

    #[test]
    fn lines_longer_than_a_message_are_cut_at_any_byte() {
        let long = "n".repeat(63);
        let names = ["a".to_string(), long.clone(), "z".to_string()];
        for max in [1u32, 2, 7, 63, 64, 65] {
            let msgs = encode(&names, max);
            assert!(msgs.iter().all(|m| m.len() <= max as usize), "{max}");
            assert!(msgs.last().unwrap().is_empty());
            assert!(msgs[..msgs.len() - 1].iter().all(|m| !m.is_empty()));
            assert_eq!(read_all(&msgs), names, "{max}");
        }
        // At 64 and above every message holds whole lines.
        for m in &encode(&names, 64)[..2] {
            assert_eq!(m.last(), Some(&b'\n'));
        }
    }

    #[test]
    fn large_listings_are_split_at_the_chunk_limit() {
        let names: Vec<String> = (0..200)
            .map(|i| format!("service-{i:04}-{}", "x".repeat(40)))
            .collect();
        let msgs = encode(&names, 1 << 20);
        assert!(msgs.len() > 2);
        assert!(msgs.iter().all(|m| m.len() <= LISTING_CHUNK_MAX));
        assert_eq!(read_all(&msgs), names);
    }

    #[test]
    fn bad_listings_are_refused() {
        assert_eq!(parse(b"a\nb"), Err(ListingError::Unterminated));
        assert!(matches!(
            parse(b"a\n\nb\n"),
            Err(ListingError::BadName { line: 2, .. })
        ));
        assert!(matches!(
            parse(b"a\x01\n"),
            Err(ListingError::BadName { line: 1, .. })
        ));
        assert!(matches!(
            parse(b"b\na\n"),
            Err(ListingError::Order { line: 2, .. })
        ));
        assert!(matches!(
            parse(b"a\na\n"),
            Err(ListingError::Order { line: 2, .. })
        ));
        assert!(matches!(
            parse(b"kt.services\n"),
            Err(ListingError::Reserved { line: 1, .. })
        ));
        let mut r = Reader::new(8);
        assert_eq!(r.push(b"abcd\n"), Ok(None));
        assert_eq!(r.push(b"efgh\n"), Err(ListingError::TooLarge { max: 8 }));
        // The partial listing is gone; the next one starts afresh.
        assert_eq!(r.push(b"x\n"), Ok(None));
        assert_eq!(r.push(b""), Ok(Some(vec!["x".to_string()])));
    }
}
