//! A strict checker for the Prometheus text exposition format 0.0.4, for
//! tests only (feature `check`): it parses what `kt-vhost-device stats
//! --format prometheus` and `kt stats --format prometheus` print back into
//! samples and refuses anything node-exporter's textfile collector would
//! refuse (or that breaks the conventions we promise). Owns nothing else.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: metric name, labels in written order, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family: its `# HELP` text and `# TYPE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    pub help: String,
    pub kind: String,
}

/// Everything a checked exposition contained.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of
    /// `labels` (and no other sample matches): None if none or several do.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut hits = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        });
        let first = hits.next()?;
        match hits.next() {
            Some(_) => None,
            None => Some(first.value),
        }
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    !n.starts_with("__")
        && matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Unescapes a HELP docstring (`\\` and `\n` only).
fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => return Err(format!("bad escape \\{other:?} in HELP {s:?}")),
        }
    }
    Ok(out)
}

/// Label pairs in written order.
type Labels = Vec<(String, String)>;

/// Parses `{a="x",b="y"}` at the start of `s`; returns labels and the rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or_else(|| format!("no = in {rest:?}"))?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name:?} given twice"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {name}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                Some((_, '\n')) => return Err(format!("raw newline in label {name}")),
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after label {name}, got {rest:?}"));
        }
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => v
            .parse::<f64>()
            .map_err(|_| format!("value {v:?} is not a number")),
    }
}

/// Checks `text` and returns what it holds. Rules: every line is a
/// `# HELP`, `# TYPE`, other comment, or sample; every sample's family has
/// exactly one HELP and one TYPE, both before its first sample; a family's
/// samples are contiguous; names and label names are valid; label values
/// use only the `\\`, `\"`, `\n` escapes; values are numbers; no series
/// appears twice; counters are named `..._total` and are never negative;
/// the text ends with a newline.
pub fn check(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    let mut ex = Exposition::default();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series: BTreeSet<String> = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            let (kw, name, rest) = (parts.next(), parts.next(), parts.next());
            match (kw, name) {
                (Some("HELP"), Some(name)) => {
                    if !valid_metric_name(name) {
                        return Err(at(format!("invalid metric name {name:?}")));
                    }
                    let help = unescape_help(rest.unwrap_or("")).map_err(at)?;
                    if helps.insert(name.to_string(), help).is_some() {
                        return Err(at(format!("second HELP for {name}")));
                    }
                }
                (Some("TYPE"), Some(name)) => {
                    if !valid_metric_name(name) {
                        return Err(at(format!("invalid metric name {name:?}")));
                    }
                    let kind = rest.unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if kind == "counter" && !name.ends_with("_total") {
                        return Err(at(format!("counter {name} is not named ..._total")));
                    }
                    if ex.families.contains_key(name) || types.contains_key(name) {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                    types.insert(name.to_string(), kind.to_string());
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("invalid metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("timestamp {ts:?} is not an integer")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        if current.as_deref() != Some(name) {
            if finished.contains(name) {
                return Err(at(format!("samples of {name} are not contiguous")));
            }
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            let kind = types
                .remove(name)
                .ok_or_else(|| at(format!("no TYPE for {name} before its samples")))?;
            let help = helps
                .remove(name)
                .ok_or_else(|| at(format!("no HELP for {name} before its samples")))?;
            ex.families.insert(name.to_string(), Family { help, kind });
            current = Some(name.to_string());
        }
        let kind = &ex.families[name].kind;
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at(format!("counter {name} has value {value}")));
        }
        let mut key: Vec<_> = labels.clone();
        key.sort();
        if !series.insert(format!("{name}{key:?}")) {
            return Err(at(format!("series {name}{key:?} appears twice")));
        }
        ex.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if let Some(name) = types.keys().next() {
        return Err(format!("TYPE for {name} but no samples"));
    }
    Ok(ex)
}

#[cfg(test)]
mod checker_tests {
    use super::*;

    #[test]
    fn accepts_a_good_exposition() {
        let ex = check(
            "# HELP a_total A \\\\ thing\\n.\n# TYPE a_total counter\n\
             a_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\na_total{x=\"r\"} 4 1700000000000\n\
             # HELP g G.\n# TYPE g gauge\ng -1.5\n",
        )
        .unwrap();
        assert_eq!(ex.families["a_total"].help, "A \\ thing\n.");
        assert_eq!(ex.samples[0].labels[0].1, "q\"\\\n");
        assert_eq!(ex.value("a_total", &[("x", "r")]), Some(4.0));
        assert_eq!(ex.value("g", &[]), Some(-1.5));
    }

    #[test]
    fn refuses_bad_expositions() {
        for bad in [
            "a_total 1\n",                                               // no HELP/TYPE
            "# TYPE a_total counter\na_total 1\n",                       // no HELP
            "# HELP a A.\n# TYPE a counter\na 1\n",                      // counter not _total
            "# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n",             // bad escape
            "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} one\n",             // value
            "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n", // duplicate series
            "# HELP 1a A.\n# TYPE 1a gauge\n1a 1\n",                     // name
            "# HELP a A.\n# TYPE a gauge\na{__x=\"1\"} 1\n",             // reserved label
            "# HELP a A.\n# TYPE a gauge\na 1",                          // no final newline
            "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\na 1\nb 1\na{x=\"\"} 2\n",
            "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n", // negative counter
        ] {
            assert!(check(bad).is_err(), "accepted {bad:?}");
        }
    }
}
