//! The one oracle of the differential suite. It knows the policy's intent — the caller's real
//! SPIFFE ID, `GET` on `/orders/**`, and the sidecar contract in docs/design.md ("What the app
//! receives") — and judges only what a stock server says its app received. It shares no code
//! with the sidecar or the policy crate: path readings, canonical form and rule matching are
//! written here from the spec, so a bug there cannot hide itself.

use serde_json::Value;

use super::corpus::{Expect, Over, Variant};

/// The rule every policy with rules has: `{methods: [GET], paths: ["/orders/**"]}`.
pub const RULE_METHOD: &str = "GET";
pub const RULE_PREFIX: &str = "orders";

const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// One request as a stock server handed it to the echo app.
#[derive(Clone, Debug)]
pub struct Received {
    /// The app port it arrived on.
    pub port: u16,
    pub method: String,
    /// The path as the framework exposes it (PATH_INFO, req.url, URI.getPath()).
    pub path: Option<String>,
    /// The raw request target when the server exposes it (RAW_URI, req.url, getRawPath()).
    pub raw_path: Option<String>,
    /// The identity as the app reads it (environ key, req.headers[...], Headers.get(...)).
    pub identity: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The echo app's JSON line, for reports.
    pub line: String,
}

impl Received {
    pub fn from_json(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let headers = v
            .get("headers")?
            .as_array()?
            .iter()
            .filter_map(|h| Some((h[0].as_str()?.to_owned(), h[1].as_str()?.to_owned())))
            .collect();
        Some(Received {
            port: u16::try_from(v.get("port")?.as_u64()?).ok()?,
            method: s("method")?,
            path: s("path"),
            raw_path: s("raw_path"),
            identity: s("identity"),
            headers,
            line: line.to_owned(),
        })
    }
}

/// A header name as every server family might read it: case-folded, `_` = `-`, WSGI's `HTTP_`
/// prefix dropped.
pub fn fold(name: &str) -> String {
    let n = name.to_ascii_lowercase().replace('_', "-");
    n.strip_prefix("http-").map(str::to_owned).unwrap_or(n)
}

/// Everything wrong with what the app received for `variant` sent `over` by `caller`.
pub fn judge(variant: &Variant, over: Over, caller: &str, received: &[Received]) -> Vec<String> {
    if over == Over::Relay {
        return judge_relayed(variant, received);
    }
    let mut out = Vec::new();
    match variant.expect {
        Expect::Refuse if !received.is_empty() => out.push(format!(
            "(c) must be refused before the app, but {} request(s) reached it",
            received.len()
        )),
        Expect::Receive if received.is_empty() => {
            out.push("control: an allowed request never reached the app".to_owned())
        }
        _ => {}
    }
    let want = (over != Over::Plain).then_some(caller);
    for r in received {
        out.extend(judge_one(r, over, want));
    }
    out
}

/// An HTTP relay port passes requests unparsed, so the contract is narrower: the app never reads
/// an identity (the sidecar stamps none there, and a client's must never arrive), no request
/// header names the identity in any spelling, and no protocol switch is ever passed (after one,
/// header names could travel HPACK-encoded past the scan). Controls must still get through.
fn judge_relayed(variant: &Variant, received: &[Received]) -> Vec<String> {
    let mut out = Vec::new();
    if variant.id.starts_with("control-") && received.is_empty() {
        out.push("control: a request on the relay port never reached the app".to_owned());
    }
    for r in received {
        if let Some(id) = &r.identity {
            out.push(format!("(a) the app read identity {id:?} on a relay port"));
        }
        for (n, v) in &r.headers {
            let name = fold(n);
            if name.contains("pqmesh-peer-identity") {
                out.push(format!("(a) identity header {n:?}: {v:?} reached the app"));
            }
            if name == "upgrade" {
                out.push(format!("upgrade {v:?} passed on a relay port"));
            }
        }
    }
    out
}

fn judge_one(r: &Received, over: Over, want: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if r.identity.as_deref() != want {
        out.push(format!(
            "(a) the app read identity {:?}, the caller is {want:?}",
            r.identity
        ));
    }
    let mesh: Vec<&(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| fold(n).starts_with("x-pqmesh-"))
        .collect();
    let sole_identity = match (mesh.as_slice(), want) {
        ([], None) => true,
        ([(n, v)], Some(id)) => fold(n) == "x-pqmesh-peer-identity" && v == id,
        _ => false,
    };
    if !sole_identity {
        out.push(format!("(a) x-pqmesh-* headers at the app: {mesh:?}"));
    }
    for (n, v) in &r.headers {
        match fold(n).as_str() {
            "upgrade" if !v.eq_ignore_ascii_case("websocket") => out.push(format!(
                "upgrade token {v:?} forwarded (only websocket may be)"
            )),
            "http2-settings" => out.push("HTTP2-Settings forwarded".to_owned()),
            _ => {}
        }
    }
    if matches!(over, Over::PeersOnly | Over::Relay) {
        return out; // an identity-only policy allows any method and path
    }
    let method = r
        .headers
        .iter()
        .find(|(n, _)| METHOD_OVERRIDES.contains(&fold(n).as_str()))
        .map_or(r.method.as_str(), |(_, v)| v.as_str());
    if !method.eq_ignore_ascii_case(RULE_METHOD) {
        out.push(format!(
            "(b) method {method:?} (request line {:?}) is not allowed",
            r.method
        ));
    }
    for path in [&r.path, &r.raw_path].into_iter().flatten() {
        if let Err(why) = allowed_by_intent(path) {
            out.push(format!("(b) {why}"));
        }
    }
    if let Some(raw) = &r.raw_path {
        let target = raw.split('?').next().unwrap_or("");
        match canonical(target) {
            Ok(c) if c == target => {}
            Ok(c) => out.push(format!(
                "(b) the app got the non-canonical path {raw:?} (canonical: {c:?})"
            )),
            Err(why) => out.push(format!(
                "(b) the app got {raw:?}, which must be refused: {why}"
            )),
        }
    }
    out
}

/// Whether every reading a server might give `path` — literal, percent-decoded (repeatedly),
/// `;parameters` stripped per segment (Tomcat, Jetty), `\` as `/` (IIS, some Java) — resolves
/// inside `/orders/**`.
pub fn allowed_by_intent(path: &str) -> Result<(), String> {
    let mut p = path.split(['?', '#']).next().unwrap_or("");
    for scheme in ["http://", "https://"] {
        if let Some(rest) = p.strip_prefix(scheme) {
            p = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    let decoded = decode_all(p);
    let stripped = strip_params(p);
    let stripped_decoded = decode_all(&stripped);
    let readings = [
        p.to_owned(),
        decoded.clone(),
        stripped,
        stripped_decoded.clone(),
        decoded.replace('\\', "/"),
        stripped_decoded.replace('\\', "/"),
    ];
    for reading in &readings {
        let resolved = resolve(reading).unwrap_or_else(|| vec!["<above root>".to_owned()]);
        if resolved.first().map(String::as_str) != Some(RULE_PREFIX) {
            return Err(format!(
                "path {path:?} read as {reading:?} is /{}, outside /{RULE_PREFIX}/**",
                resolved.join("/")
            ));
        }
    }
    Ok(())
}

fn decode_all(p: &str) -> String {
    let mut s = p.to_owned();
    for _ in 0..3 {
        let next = decode_once(&s);
        if next == s {
            break;
        }
        s = next;
    }
    s
}

fn decode_once(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: Option<&u8>) -> Option<u8> {
    (*c? as char).to_digit(16).map(|d| d as u8)
}

fn strip_params(p: &str) -> String {
    p.split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// Segments after `//` merging and dot-segment removal; `None` above the root.
fn resolve(p: &str) -> Option<Vec<String>> {
    let mut segs: Vec<String> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop()?;
            }
            s => segs.push(s.to_owned()),
        }
    }
    Some(segs)
}

/// The canonical form the contract promises the app, or why the path must be refused: `;`,
/// encoded `/` `\` `%`, control characters (raw or encoded), bad escapes, a fragment, anything
/// not in origin-form, or `..` above the root; otherwise unreserved escapes decoded, `//`
/// merged, dot segments resolved (a trailing `/` kept).
pub fn canonical(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err("not an origin-form path".to_owned());
    }
    let b = path.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b';' => return Err("';' in the path".to_owned()),
            b'#' => return Err("a fragment in the request target".to_owned()),
            0..=0x1f | 0x7f => return Err("a control character".to_owned()),
            b'%' => {
                let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) else {
                    return Err("a bad percent escape".to_owned());
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' | b'%' => return Err(format!("encoded {:?}", v as char)),
                    0..=0x1f | 0x7f => return Err("an encoded control character".to_owned()),
                    v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(v as char),
                    _ => out.push_str(&path[i..i + 3]),
                }
                i += 3;
                continue;
            }
            _ => out.push_str(&String::from_utf8_lossy(&b[i..i + 1])),
        }
        i += 1;
    }
    let segs = resolve(&out).ok_or("'..' above the root")?;
    let mut canon = format!("/{}", segs.join("/"));
    if out.ends_with('/') && !segs.is_empty() {
        canon.push('/');
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_and_refusals() {
        for (path, want) in [
            ("/orders/1", Ok("/orders/1")),
            ("/orders//1/./x/../2/", Ok("/orders/1/2/")),
            ("/orders/%31%7e%20", Ok("/orders/1~%20")),
            ("/orders/%2e%2e/admin", Ok("/admin")),
            ("/orders/..;/admin", Err("';'")),
            ("/orders/a%2fb", Err("encoded '/'")),
            ("/orders/a%5Cb", Err("encoded '\\\\'")),
            ("/orders/%252e", Err("encoded '%'")),
            ("/orders/\u{1}", Err("control")),
            ("/orders/%0d", Err("control")),
            ("/orders/%zz", Err("bad percent")),
            ("/../admin", Err("above the root")),
            ("*", Err("origin-form")),
            ("/orders/1#x", Err("fragment")),
        ] {
            match (canonical(path), want) {
                (Ok(c), Ok(w)) => assert_eq!(c, w, "{path}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{path}: {e}"),
                (got, want) => panic!("{path}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn every_server_reading_must_stay_under_the_rule() {
        for ok in [
            "/orders",
            "/orders/1",
            "/orders/a%2Fb",
            "/orders/1?x=/../../admin",
            "/orders/x;p=1",
        ] {
            assert!(allowed_by_intent(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/admin",
            "/orders/..;/admin",
            "/orders/%2e%2e/admin",
            "/orders/%252e%252e/admin",
            "/orders/..\\admin",
            "/orders/..%5cadmin",
            "http://x/admin",
            "/../orders",
            "*",
        ] {
            assert!(allowed_by_intent(bad).is_err(), "{bad}");
        }
        assert_eq!(
            fold("HTTP_X_PQMESH_PEER_IDENTITY"),
            "x-pqmesh-peer-identity"
        );
        assert_eq!(fold("X-Pqmesh_Peer-Identity"), "x-pqmesh-peer-identity");
    }
}
