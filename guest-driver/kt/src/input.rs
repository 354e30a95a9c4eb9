//! Line input from stdin through raw `read(2)`, so a SIGINT ends a blocked
//! read with "interrupted" (std's readers retry `EINTR` forever).

use std::io;
use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::sys;

/// Splits stdin into lines (without the `\n`; a last line without `\n`
/// counts too).
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    start: usize,
    eof: bool,
}

impl Lines {
    /// A reader over the process's stdin.
    pub fn new() -> Self {
        Self::default()
    }

    fn fill(&mut self, src: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>) -> Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + 64 * 1024, 0);
        let r = src(&mut self.buf[old..]);
        match r {
            Ok(n) => {
                self.buf.truncate(old + n);
                self.eof = n == 0;
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(old);
                Err(match e.kind() {
                    io::ErrorKind::Interrupted => Error::Interrupted,
                    _ => Error::io("stdin", e),
                })
            }
        }
    }

    /// The next line from `src`.
    fn next_from(
        &mut self,
        src: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line = self.buf[self.start..self.start + i].to_vec();
                self.start += i + 1;
                return Ok(Some(line));
            }
            if self.eof {
                if self.start < self.buf.len() {
                    let line = self.buf[self.start..].to_vec();
                    self.start = self.buf.len();
                    return Ok(Some(line));
                }
                return Ok(None);
            }
            self.fill(src)?;
        }
    }

    /// The next stdin line, `None` at end of input.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        let stdin = io::stdin();
        let fd = stdin.as_fd();
        self.next_from(&mut |b| sys::retry(|| sys::read(fd, b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_reads() {
        let chunks: Vec<&[u8]> = vec![b"ab", b"c\nd", b"\n\nlast", b""];
        let mut it = chunks.into_iter();
        let mut src = |b: &mut [u8]| -> io::Result<usize> {
            let c = it.next().unwrap_or(b"");
            b[..c.len()].copy_from_slice(c);
            Ok(c.len())
        };
        let mut l = Lines::new();
        let mut got = Vec::new();
        while let Some(line) = l.next_from(&mut src).unwrap() {
            got.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(got, ["abc", "d", "", "last"]);
    }

    #[test]
    fn interrupted_read_is_reported() {
        let mut src = |_: &mut [u8]| -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::Interrupted))
        };
        let mut l = Lines::new();
        assert!(matches!(l.next_from(&mut src), Err(Error::Interrupted)));
    }
}
