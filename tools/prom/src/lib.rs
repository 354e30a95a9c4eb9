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
    /// Families in the order first named: name, kind, help, sample lines.
    families: Vec<Family>,
    /// Index in `families` of the family samples go to.
    current: Option<usize>,
}

#[derive(Debug)]
struct Family {
    name: String,
    kind: Kind,
    help: String,
    samples: String,
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
    /// Naming a family already written again adds to it (its first kind
    /// and help stand).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        if let Some(i) = self.families.iter().position(|f| f.name == name) {
            self.current = Some(i);
            return;
        }
        self.families.push(Family {
            name: name.to_string(),
            kind,
            help: help_text(help),
            samples: String::new(),
        });
        self.current = Some(self.families.len() - 1);
    }

    /// One sample of the current family.
    /// A sample before any family is named is a caller's bug and is
    /// dropped (there is no name to give it).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        let Some(f) = self.current.and_then(|i| self.families.get_mut(i)) else {
            debug_assert!(false, "sample without a family");
            return;
        };
        let out = &mut f.samples;
        out.push_str(&f.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", label_value(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }

    /// The exposition: each family with samples, header first.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            out.push_str(&f.samples);
        }
        out
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

    #[test]
    fn a_family_named_twice_is_written_once() {
        let mut w = Writer::default();
        for vm in ["a", "b"] {
            w.family("up", Kind::Gauge, "Up.");
            w.sample(&[("vm", vm)], 1);
            w.family("n_total", Kind::Counter, "N.");
            w.sample(&[("vm", vm)], 2);
        }
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP up Up.\n# TYPE up gauge\nup{vm=\"a\"} 1\nup{vm=\"b\"} 1\n\
             # HELP n_total N.\n# TYPE n_total counter\n\
             n_total{vm=\"a\"} 2\nn_total{vm=\"b\"} 2\n"
        );
        let ex = check::check(&text).unwrap();
        assert_eq!(ex.value("up", &[("vm", "b")]), Some(1.0));
    }
}
