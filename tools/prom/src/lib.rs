//! A writer for the Prometheus text exposition format 0.0.4 (what
//! node-exporter's textfile collector reads): `# HELP` and `# TYPE` once per
//! family, written with its first sample, so a family without samples
//! leaves nothing behind; label values escaped per the spec. Owns only the
//! text; the users (`kt-vhost-device stats`, `kt stats`) decide which
//! metrics there are. With feature `check`, [`check`] parses an exposition
//! back strictly, for their tests.

use std::fmt::Write as _;

/// Metric family types used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at 0 when the driver reloads); named `..._total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// An exposition being written.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    name: String,
    header: Option<(Kind, String)>,
}

/// Escapes a label value: backslash, double quote and newline.
pub fn label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes a HELP text: backslash and newline.
fn help_text(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

impl Writer {
    /// Starts family `name` (a valid metric name; counters end in `_total`).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.name = name.to_string();
        self.header = Some((kind, help_text(help)));
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        if let Some((kind, help)) = self.header.take() {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(self.out, "# HELP {} {help}", self.name);
            let _ = writeln!(self.out, "# TYPE {} {kind}", self.name);
        }
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(any(test, feature = "check"))]
pub mod check;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_checkable_text() {
        let mut w = Writer::default();
        w.family("x_total", Kind::Counter, "A \\ help\ntext.");
        w.sample(&[("a", "q\"\\\nz")], 3);
        w.sample(&[("a", "plain")], 4);
        w.family("never_total", Kind::Counter, "No samples.");
        w.family("y", Kind::Gauge, "Y.");
        w.sample(&[], 0);
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP x_total A \\\\ help\\ntext.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\nz\"} 3\nx_total{a=\"plain\"} 4\n\
             # HELP y Y.\n# TYPE y gauge\ny 0\n"
        );
        let ex = check::check(&text).unwrap();
        assert_eq!(ex.families["x_total"].help, "A \\ help\ntext.");
        assert_eq!(ex.value("x_total", &[("a", "q\"\\\nz")]), Some(3.0));
        assert!(!ex.families.contains_key("never_total"));
    }
}
