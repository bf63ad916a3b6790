//! A reader for the Prometheus text exposition format (what /metrics serves): samples with
//! their labels, nothing else. Untrusted input: every malformed line is an error naming it.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("metrics line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason| ParseError {
            line: i + 1,
            reason,
            text: raw.chars().take(200).collect(),
        };
        out.push(parse_line(line).map_err(err)?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !valid_name {
        return Err("invalid metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value: f64 = value.parse().map_err(|_| "value is not a number")?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("invalid label name");
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label");
        }
    }
}

/// Samples of `name` whose labels include every `(key, value)` of `filter`.
pub fn select<'a>(
    samples: &'a [Sample],
    name: &'a str,
    filter: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// The value of an unlabelled gauge or counter.
pub fn value(samples: &[Sample], name: &str) -> Option<f64> {
    select(samples, name, &[]).map(|s| s.value).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_prometheus_crate_writes() {
        let text = r#"# HELP pqmesh_tls_handshakes_total Completed handshakes
# TYPE pqmesh_tls_handshakes_total counter
pqmesh_tls_handshakes_total{direction="outbound",group="X25519MLKEM768",signature_scheme="ML-DSA-65"} 3
pqmesh_tls_handshakes_total{direction="inbound",group="X25519",signature_scheme="ecdsa_secp256r1_sha256"} 1
pqmesh_ca_root_expiry_timestamp_seconds 2.0663232e9
pqmesh_x{a="q\"uo\\te\n",b=""} +Inf 1700000000
pqmesh_y{} NaN
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].labels["group"], "X25519MLKEM768");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(
            value(&s, "pqmesh_ca_root_expiry_timestamp_seconds"),
            Some(2066323200.0)
        );
        assert_eq!(s[3].labels["a"], "q\"uo\\te\n");
        assert!(s[3].value.is_infinite());
        assert!(s[4].value.is_nan());
        assert_eq!(
            select(&s, "pqmesh_tls_handshakes_total", &[("group", "X25519")]).count(),
            1
        );
    }

    #[test]
    fn bad_lines_are_errors_that_name_the_line() {
        for (text, reason) in [
            ("pqmesh_x", "no value"),
            ("pqmesh_x abc", "value is not a number"),
            ("9x 1", "invalid metric name"),
            ("pqmesh_x{a=\"1\" 1", "expected ',' or '}' after a label"),
            ("pqmesh_x{a=1} 1", "label value not quoted"),
            ("pqmesh_x{a=\"1} 1", "unterminated label value"),
            ("pqmesh_x{a} 1", "label without '='"),
            ("pqmesh_x{-=\"\"} 1", "invalid label name"),
            ("<html> 1", "invalid metric name"),
        ] {
            let e = parse(&format!("# ok\n{text}\n")).unwrap_err();
            assert_eq!((e.line, e.reason), (2, reason), "{text}");
        }
    }
}
