//! Standard output: message printing and summary lines. Write errors (a
//! closed pipe) become errors instead of panics.

use std::fmt;
use std::io::{self, Write};

use crate::error::{Error, Result};

fn stdout_err(e: io::Error) -> Error {
    Error::io("stdout", e)
}

/// Prints one line.
pub fn line(args: fmt::Arguments<'_>) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args).map_err(stdout_err)?;
    out.write_all(b"\n").map_err(stdout_err)?;
    out.flush().map_err(stdout_err)
}

/// Hex rendering of a message.
pub fn hex(msg: &[u8]) -> String {
    msg.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints one received message: its raw bytes and a newline, or hex.
pub fn message(msg: &[u8], as_hex: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    if as_hex {
        out.write_all(hex(msg).as_bytes()).map_err(stdout_err)?;
    } else {
        out.write_all(msg).map_err(stdout_err)?;
    }
    out.write_all(b"\n").map_err(stdout_err)?;
    out.flush().map_err(stdout_err)
}

/// Formats rows as a left-aligned table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let mut push_row = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.zip(&width).enumerate() {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    };
    push_row(&mut header.iter().copied());
    for row in rows {
        push_row(&mut row.iter().map(String::as_str));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["name", "value"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "22".into()],
            ],
        );
        assert_eq!(t, "name    value\na       1\nlonger  22\n");
    }

    #[test]
    fn hex_renders_bytes() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
