//! Human output: aligned tables, times and durations; and the redaction every output passes
//! through so a secret never reaches a terminal or a log even if an endpoint leaked one.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A plain text table: header row, left-aligned columns separated by three spaces.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self, indent: &str) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = indent.to_owned();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count() + 3;
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// Key/value lines with aligned values.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (k, v) in pairs {
        let _ = writeln!(out, "{:<width$}{v}", format!("{k}:"));
    }
    out
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds → `2025-06-01T12:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{unix}"))
}

/// `3d 4h`, `52m 10s`, `12s`; negative spans read `expired 5m 3s ago` at the call site.
pub fn span(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// "in 3d 4h" or "expired 2h 1m ago".
pub fn time_left(secs: i64) -> String {
    if secs >= 0 {
        format!("expires in {}", span(secs))
    } else {
        format!("EXPIRED {} ago", span(secs))
    }
}

/// Replaces string values of secret-bearing keys anywhere in `v` by `<redacted>`.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if is_secret_key(k) && !val.is_object() && !val.is_array() && !val.is_null() {
                    *val = Value::String("<redacted>".into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase().replace('-', "_");
    k.contains("secret")
        || k.contains("password")
        || k.contains("private_key")
        || k == "token"
        || k.ends_with("_token")
        || k == "bearer"
}

/// A short display of a JSON scalar (strings unquoted).
pub fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(t.render(""), "A           LONGER\nwide cell   x\n");
    }

    #[test]
    fn spans() {
        assert_eq!(span(12), "12s");
        assert_eq!(span(3_130), "52m 10s");
        assert_eq!(span(7_200 + 60), "2h 1m");
        assert_eq!(span(3 * 86_400 + 4 * 3_600 + 5), "3d 4h");
        assert_eq!(time_left(-65), "EXPIRED 1m 5s ago");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let mut v = json!({
            "token_issuers": [{"name": "corp", "introspection": {"client_secret": "s3cr3t", "client_id": "gw"}}],
            "bootstrap_token": "tok-123", "password": 5, "secretRef": {"name": "gateway"},
        });
        redact(&mut v);
        let s = v.to_string();
        assert!(!s.contains("s3cr3t") && !s.contains("tok-123"), "{s}");
        assert_eq!(v["token_issuers"][0]["introspection"]["client_id"], "gw");
        assert_eq!(v["password"], "<redacted>");
        assert_eq!(
            v["secretRef"]["name"], "gateway",
            "a reference is not a secret"
        );
    }
}
