//! The benchmark CSV `scripts/bench-peers.sh` writes, and its environment
//! sidecar: parsing only. Owns the file formats (documented in
//! docs/benchmarks.md): a header `row,unit,kerntransport,vsock,
//! virtio_serial,better`, then one line per metric; fields may be
//! double-quoted (`""` inside is one quote); a transport that could not be
//! measured has `n/a` or an empty field; `better` is `lower` or `higher`.

use std::fmt;

/// The transports, in column order.
pub const TRANSPORTS: [&str; 3] = ["kerntransport", "vsock", "virtio-serial"];

/// The exact header line.
pub const HEADER: [&str; 6] = [
    "row",
    "unit",
    "kerntransport",
    "vsock",
    "virtio_serial",
    "better",
];

/// Which direction of a metric is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Latency: lower is better.
    Lower,
    /// Throughput, rate: higher is better.
    Higher,
}

impl fmt::Display for Better {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Better::Lower => "lower is better",
            Better::Higher => "higher is better",
        })
    }
}

/// One metric measured on every transport.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// What was measured, e.g. `latency p50, 64 B`.
    pub name: String,
    /// Unit of the values, e.g. `us`.
    pub unit: String,
    /// One value per entry of [`TRANSPORTS`]; None = not measured.
    pub values: [Option<f64>; 3],
    /// Which direction is good.
    pub better: Better,
}

/// A CSV problem, with its 1-based line number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {problem}")]
pub struct CsvError {
    /// Line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Splits one CSV line into fields (RFC 4180 quoting, no embedded newlines).
pub fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("{c:?} after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

fn value(field: &str) -> Result<Option<f64>, String> {
    let f = field.trim();
    if f.is_empty() || f.starts_with("n/a") {
        return Ok(None);
    }
    match f.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
        _ => Err(format!("{f:?} is not a non-negative number or n/a")),
    }
}

/// Parses the whole CSV (header line first; blank lines ignored).
pub fn parse(text: &str) -> Result<Vec<Row>, CsvError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let err = |line, problem: String| CsvError { line, problem };
    let (n, header) = lines.next().ok_or_else(|| err(1, "empty file".into()))?;
    let header = split_line(header).map_err(|p| err(n, p))?;
    if header != HEADER {
        return Err(err(n, format!("header is {header:?}, expected {HEADER:?}")));
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        let f = split_line(line).map_err(|p| err(n, p))?;
        if f.len() != HEADER.len() {
            return Err(err(
                n,
                format!("{} fields, expected {}", f.len(), HEADER.len()),
            ));
        }
        if f[0].trim().is_empty() {
            return Err(err(n, "empty row name".into()));
        }
        let better = match f[5].trim() {
            "lower" => Better::Lower,
            "higher" => Better::Higher,
            other => {
                return Err(err(
                    n,
                    format!("better is {other:?}, expected lower or higher"),
                ))
            }
        };
        let mut values = [None; 3];
        for (v, field) in values.iter_mut().zip(&f[2..5]) {
            *v = value(field).map_err(|p| err(n, p))?;
        }
        rows.push(Row {
            name: f[0].trim().to_string(),
            unit: f[1].trim().to_string(),
            values,
            better,
        });
    }
    if rows.is_empty() {
        return Err(err(n, "no rows after the header".into()));
    }
    Ok(rows)
}

/// Parses the environment sidecar: `key=value` lines, `#` comments and
/// blank lines ignored, order kept.
pub fn parse_env(text: &str) -> Result<Vec<(String, String)>, CsvError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| CsvError {
            line: i + 1,
            problem: format!("{line:?} is not key=value"),
        })?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = "row,unit,kerntransport,vsock,virtio_serial,better\n\
        \"latency p50, 64 B\",us,151.6,193.2,136.8,lower\n\
        \"one-way throughput, 64 KiB msgs\",MB/s,46.1,n/a,73.9,higher\n\
        message rate 16 B,msgs/s,61785,,58803,higher\n";

    #[test]
    fn parses_the_sample() {
        let rows = parse(SAMPLE).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            Row {
                name: "latency p50, 64 B".into(),
                unit: "us".into(),
                values: [Some(151.6), Some(193.2), Some(136.8)],
                better: Better::Lower,
            }
        );
        assert_eq!(rows[1].values, [Some(46.1), None, Some(73.9)]);
        assert_eq!(rows[2].values, [Some(61785.0), None, Some(58803.0)]);
        assert_eq!(rows[2].better, Better::Higher);
    }

    #[test]
    fn splits_quoted_fields() {
        assert_eq!(
            split_line("a,\"b,c\",\"d\"\"e\",").unwrap(),
            ["a", "b,c", "d\"e", ""]
        );
        assert_eq!(split_line("").unwrap(), [""]);
        assert!(split_line("\"open").is_err());
        assert!(split_line("\"a\"b").is_err());
        assert!(split_line("a\"b").is_err());
    }

    #[test]
    fn refuses_bad_files() {
        let h = "row,unit,kerntransport,vsock,virtio_serial,better\n";
        for (text, want) in [
            ("", "line 1: empty file"),
            ("row,unit\n", "line 1: header is"),
            (h, "line 1: no rows after the header"),
            (
                &format!("{h}x,us,1,2\n") as &str,
                "line 2: 4 fields, expected 6",
            ),
            (
                &format!("{h}x,us,1,2,3,best\n"),
                "line 2: better is \"best\"",
            ),
            (
                &format!("{h}x,us,1,fast,3,lower\n"),
                "line 2: \"fast\" is not",
            ),
            (&format!("{h}x,us,1,-2,3,lower\n"), "line 2: \"-2\" is not"),
            (
                &format!("{h}\n\n,us,1,2,3,lower\n"),
                "line 4: empty row name",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn env_sidecar() {
        let env = parse_env("# from bench-peers.sh\ndate=2025-01-02T03:04:05Z\n\nqemu=QEMU emulator version 10.0.2 (x=y)\n")
            .unwrap();
        assert_eq!(
            env,
            [
                ("date".to_string(), "2025-01-02T03:04:05Z".to_string()),
                (
                    "qemu".to_string(),
                    "QEMU emulator version 10.0.2 (x=y)".to_string()
                ),
            ]
        );
        assert_eq!(parse_env("novalue\n").unwrap_err().line, 1);
    }
}
