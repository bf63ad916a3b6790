//! The request corpus: `tests/differential/corpus.jsonl`, one variant (or one generator of
//! variants) per line, `#` lines are comments. A line is
//! `{"id", "send": [part...], "expect"?, "over"?, "each"?, "refuse_if"?, "note"?}`:
//! - a part is a string of raw bytes (each char U+0000..U+00FF is one byte) or an HTTP/2 piece:
//!   `{"h2": "preface"}` (connection preface + empty SETTINGS) or
//!   `{"h2": "headers", "stream": N, "headers": [[name, value]...]}` (one HEADERS frame,
//!   END_STREAM|END_HEADERS, every field a literal without indexing, no Huffman: any byte goes);
//! - `expect`: `refuse` (must never reach the app), `receive` (a control: must reach it), `any`;
//! - `over`: any of `mtls` (STRICT port, rules), `plain` (PERMISSIVE port, rules, no client
//!   certificate), `peers` (STRICT port, identity-only policy: opaque TCP is allowed there);
//! - `each`: values for `{v}`, one variant per value (`id` must contain `{v}`); `refuse_if`: a
//!   substring that makes a generated variant `refuse` when its value contains it.
//!
//! `{FORGED}` anywhere stands for a SPIFFE ID the client does not hold.

use serde_json::Value;

pub const FORGED: &str = "spiffe://cluster.local/ns/shop/sa/admin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Over {
    Mtls,
    Plain,
    PeersOnly,
    /// mTLS to an identity-only port that is also an HTTP relay port (`PQMESH_HTTP_RELAY_PORTS`):
    /// bytes relayed unparsed. Every HTTP/1 variant is sent over it, whatever its `over` says.
    Relay,
}

impl Over {
    pub fn name(self) -> &'static str {
        match self {
            Over::Mtls => "mtls",
            Over::Plain => "plain",
            Over::PeersOnly => "peers",
            Over::Relay => "relay",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Refuse,
    Receive,
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Raw(Vec<u8>),
    H2Preface,
    H2Headers {
        stream: u32,
        headers: Vec<(String, String)>,
    },
}

#[derive(Clone, Debug)]
pub struct Variant {
    pub id: String,
    pub parts: Vec<Part>,
    pub expect: Expect,
    pub over: Vec<Over>,
    pub note: String,
}

impl Variant {
    /// HTTP/2 with prior knowledge: sent only to servers that speak it.
    pub fn prior_knowledge_h2(&self) -> bool {
        matches!(self.parts.first(), Some(Part::H2Preface))
    }

    /// The bytes as a Rust-escaped string, for reports.
    pub fn shown(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Raw(b) => out.push_str(&b.escape_ascii().to_string()),
                Part::H2Preface => out.push_str("<h2 preface+SETTINGS>"),
                Part::H2Headers { stream, headers } => {
                    out.push_str(&format!("<h2 HEADERS stream {stream}: {headers:?}>"))
                }
            }
        }
        out
    }
}

fn corpus_path() -> std::path::PathBuf {
    super::data_dir().join("corpus.jsonl")
}

/// Lines of the corpus file that hold a variant or a generator.
pub fn lines() -> usize {
    std::fs::read_to_string(corpus_path())
        .map(|t| {
            t.lines()
                .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
                .count()
        })
        .unwrap_or(0)
}

/// The corpus shipped with the tests.
pub fn load() -> Vec<Variant> {
    let path = corpus_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Vec<Variant>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        expand(&entry, &mut out).map_err(|e| format!("line {}: {e}", n + 1))?;
    }
    let mut ids: Vec<&str> = out.iter().map(|v| v.id.as_str()).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("duplicate id {:?}", w[0]));
    }
    Ok(out)
}

fn expand(entry: &Value, out: &mut Vec<Variant>) -> Result<(), String> {
    let id = entry["id"].as_str().ok_or("no string \"id\"")?;
    let expect = match entry.get("expect").and_then(Value::as_str).unwrap_or("any") {
        "refuse" => Expect::Refuse,
        "receive" => Expect::Receive,
        "any" => Expect::Any,
        other => return Err(format!("expect {other:?}: use refuse, receive or any")),
    };
    let over = match entry.get("over") {
        None => vec![Over::Mtls],
        Some(v) => v
            .as_array()
            .ok_or("\"over\" is not an array")?
            .iter()
            .map(|o| match o.as_str() {
                Some("mtls") => Ok(Over::Mtls),
                Some("plain") => Ok(Over::Plain),
                Some("peers") => Ok(Over::PeersOnly),
                _ => Err(format!("over {o}: use mtls, plain or peers")),
            })
            .collect::<Result<_, _>>()?,
    };
    let note = entry.get("note").and_then(Value::as_str).unwrap_or("");
    let values: Vec<Option<&str>> = match entry.get("each") {
        None => vec![None],
        Some(each) => {
            if !id.contains("{v}") {
                return Err(format!("id {id:?} has \"each\" but no {{v}}"));
            }
            each.as_array()
                .ok_or("\"each\" is not an array")?
                .iter()
                .map(|v| v.as_str().map(Some).ok_or("\"each\" holds a non-string"))
                .collect::<Result<_, _>>()?
        }
    };
    let refuse_if = entry.get("refuse_if").and_then(Value::as_str);
    let send = entry["send"].as_array().ok_or("no array \"send\"")?;
    for value in values {
        let fill = |s: &str| {
            let s = s.replace("{FORGED}", FORGED);
            match value {
                Some(v) => s.replace("{v}", v),
                None => s,
            }
        };
        let parts = send
            .iter()
            .map(|p| part(p, &fill))
            .collect::<Result<Vec<_>, _>>()?;
        if parts.is_empty() {
            return Err(format!("{id}: nothing to send"));
        }
        let expect = match (value, refuse_if) {
            (Some(v), Some(needle)) if v.contains(needle) => Expect::Refuse,
            _ => expect,
        };
        out.push(Variant {
            id: fill(id),
            parts,
            expect,
            over: over.clone(),
            note: note.to_owned(),
        });
    }
    Ok(())
}

fn part(p: &Value, fill: &dyn Fn(&str) -> String) -> Result<Part, String> {
    if let Some(s) = p.as_str() {
        return fill(s)
            .chars()
            .map(|c| u8::try_from(u32::from(c)).map_err(|_| format!("{c:?} is not a byte")))
            .collect::<Result<Vec<u8>, _>>()
            .map(Part::Raw);
    }
    match p.get("h2").and_then(Value::as_str) {
        Some("preface") => Ok(Part::H2Preface),
        Some("headers") => {
            let stream = p["stream"]
                .as_u64()
                .ok_or("h2 headers without \"stream\"")?;
            let headers = p["headers"]
                .as_array()
                .ok_or("h2 headers without \"headers\"")?
                .iter()
                .map(|h| match (h[0].as_str(), h[1].as_str()) {
                    (Some(n), Some(v)) => Ok((fill(n), fill(v))),
                    _ => Err(format!("header {h} is not [name, value]")),
                })
                .collect::<Result<_, _>>()?;
            Ok(Part::H2Headers {
                stream: u32::try_from(stream).map_err(|_| "stream id too large")?,
                headers,
            })
        }
        _ => Err(format!("part {p}: a string or {{\"h2\": preface|headers}}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_expand_and_bad_lines_are_named() {
        let ok = r#"
# comment
{"id":"t-{v}","each":["a-b","a_b"],"refuse_if":"_","send":["GET / HTTP/1.1\r\n{v}: {FORGED}\r\n\r\n"]}
{"id":"h2","expect":"receive","over":["plain","peers"],"send":[{"h2":"preface"},{"h2":"headers","stream":1,"headers":[[":path","/"]]}]}
"#;
        let v = parse(ok).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].id.as_str(), v[0].expect), ("t-a-b", Expect::Any));
        assert_eq!((v[1].id.as_str(), v[1].expect), ("t-a_b", Expect::Refuse));
        assert!(String::from_utf8_lossy(match &v[1].parts[0] {
            Part::Raw(b) => b,
            _ => panic!(),
        })
        .contains("a_b: spiffe://cluster.local/ns/shop/sa/admin"));
        assert!(v[2].prior_knowledge_h2() && v[2].over == [Over::Plain, Over::PeersOnly]);
        for (bad, why) in [
            ("{\"id\":\"x\"}", "no array \"send\""),
            ("{\"id\":\"x\",\"send\":[\"\u{2603}\"]}", "is not a byte"),
            ("{\"id\":\"x\",\"each\":[\"a\"],\"send\":[\"a\"]}", "no {v}"),
            (
                "{\"id\":\"x\",\"expect\":\"maybe\",\"send\":[\"a\"]}",
                "refuse, receive or any",
            ),
            (
                "{\"id\":\"x\",\"send\":[\"a\"]}\n{\"id\":\"x\",\"send\":[\"b\"]}",
                "duplicate id",
            ),
            (
                "{\"id\":\"x\",\"send\":[{\"h2\":\"data\"}]}",
                "preface|headers",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
