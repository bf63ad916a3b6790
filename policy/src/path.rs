//! Request paths as policy sees them. Paths are normalised before matching — percent-decoded
//! unreserved characters, `//` merged, `.`/`..` resolved — and requests whose path cannot be
//! normalised safely (encoded `/` or `\`, `..` above the root, control bytes, `;` path
//! parameters, double encoding, `#`) are refused, so a rule cannot be sidestepped by spelling the
//! same path differently. The normalised path is what the app receives.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} does not start with '/'")]
    NotAbsolute(String),
    #[error("path {0:?} contains an encoded '/' or '\\', or a control character")]
    Ambiguous(String),
    #[error("path {0:?} contains ';' or '#' (path parameters are refused: Tomcat, Spring and others strip them, so the app would see another path than the policy)")]
    Parameters(String),
    #[error("path {0:?} is double-encoded ('%25' followed by hex digits)")]
    DoubleEncoded(String),
    #[error("path {0:?} climbs above the root")]
    AboveRoot(String),
    #[error("path pattern {pattern:?}: {reason}")]
    BadPattern {
        pattern: String,
        reason: &'static str,
    },
}

/// Normalises the path part of a request target (no query).
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute(path.to_owned()));
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x20 || b == 0x7f || b == b'\\' {
            return Err(PathError::Ambiguous(path.to_owned()));
        }
        if b == b';' || b == b'#' {
            return Err(PathError::Parameters(path.to_owned()));
        }
        if b == b'%' {
            let hex = path
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else {
                return Err(PathError::Ambiguous(path.to_owned()));
            };
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v as char);
            } else if matches!(v, b'/' | b'\\') || v < 0x20 || v == 0x7f {
                return Err(PathError::Ambiguous(path.to_owned()));
            } else if v == b';' || v == b'#' {
                // A server that decodes before it splits parameters (or fragments) would cut here.
                return Err(PathError::Parameters(path.to_owned()));
            } else if v == b'%'
                && path
                    .get(i + 3..i + 5)
                    .is_some_and(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(PathError::DoubleEncoded(path.to_owned()));
            } else {
                // Reserved or non-ASCII: keep it encoded (canonical upper-case hex).
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
            continue;
        }
        if b >= 0x80 {
            // Non-ASCII: canonical percent-encoding (pushing the byte as a char would re-encode
            // each UTF-8 byte as another character; found by the request_path fuzz target).
            decoded.push_str(&format!("%{b:02X}"));
        } else {
            decoded.push(b as char);
        }
        i += 1;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot(path.to_owned()));
                }
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !segments.is_empty();
    let mut out = String::from("/");
    out.push_str(&segments.join("/"));
    if trailing {
        out.push('/');
    }
    Ok(out)
}

/// `/exact`, `/a/*/c` (`*` = exactly one segment), `/prefix/**` (the prefix and anything below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    any_depth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, PathError> {
        let bad = |reason| PathError::BadPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        if !pattern.starts_with('/') {
            return Err(bad("must start with '/'"));
        }
        let normal = normalize(pattern).map_err(|_| bad("is not a normal path"))?;
        if normal != pattern {
            return Err(bad(
                "is not in normal form (no '//', '.', '..' or encoded unreserved characters)",
            ));
        }
        let body = pattern.trim_start_matches('/');
        let mut parts: Vec<&str> = if body.is_empty() {
            vec![]
        } else {
            body.split('/').collect()
        };
        let any_depth = parts.last() == Some(&"**");
        if any_depth {
            parts.pop();
        }
        let mut segments = Vec::new();
        for part in parts {
            match part {
                "*" => segments.push(Segment::One),
                "**" => return Err(bad("'**' is only allowed as the last segment")),
                p if p.contains('*') => return Err(bad("'*' must be a whole segment")),
                "" => return Err(bad("empty segment")),
                p => segments.push(Segment::Literal(p.to_owned())),
            }
        }
        Ok(Self {
            segments,
            any_depth,
        })
    }

    /// Matches a normalised path.
    pub fn matches(&self, path: &str) -> bool {
        let body = path.trim_start_matches('/').trim_end_matches('/');
        let parts: Vec<&str> = if body.is_empty() {
            vec![]
        } else {
            body.split('/').collect()
        };
        if parts.len() < self.segments.len()
            || (!self.any_depth && parts.len() != self.segments.len())
        {
            return false;
        }
        self.segments.iter().zip(&parts).all(|(s, p)| match s {
            Segment::One => true,
            Segment::Literal(l) => l == p,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_the_tricks_that_bypass_naive_matching() {
        let cases = [
            ("/orders", "/orders"),
            ("//orders", "/orders"),
            ("/orders//42", "/orders/42"),
            ("/./orders", "/orders"),
            ("/admin/../orders", "/orders"),
            ("/%6frders", "/orders"),
            ("/orders/%2e%2e/admin", "/admin"),
            ("/orders/", "/orders/"),
            ("/a%20b", "/a%20b"),
            ("/", "/"),
            ("/orders/42/.", "/orders/42"),
            ("/`/\u{3a1}a/]aa/", "/`/%CE%A1a/]aa/"),
            ("/caf\u{e9}", "/caf%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "orders",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/..",
            "/a/../..",
            "/%",
            "/%zz",
            "/a\u{1}b",
            "/a%00",
            "/orders/..;/admin",
            "/orders;jsessionid=1",
            "/a%3bb",
            "/a%3Bb",
            "/a#b",
            "/a%23b",
            "/a%252e%252e/b",
            "/a%2525",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn patterns() {
        let p = |s: &str| PathPattern::parse(s).unwrap();
        assert!(p("/orders").matches("/orders") && p("/orders").matches("/orders/"));
        assert!(!p("/orders").matches("/orders/42") && !p("/orders").matches("/ordersx"));
        assert!(
            p("/orders/*").matches("/orders/42") && !p("/orders/*").matches("/orders/42/items")
        );
        assert!(!p("/orders/*").matches("/orders"));
        assert!(p("/orders/**").matches("/orders") && p("/orders/**").matches("/orders/42/items"));
        assert!(!p("/orders/**").matches("/ordersx/1"));
        assert!(p("/a/*/c").matches("/a/b/c") && !p("/a/*/c").matches("/a/b/d"));
        assert!(p("/**").matches("/") && p("/**").matches("/anything/at/all"));
        for bad in [
            "orders",
            "/orders*",
            "/**/x",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/*x/y",
            "/%6frders",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
