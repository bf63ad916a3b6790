//! Keeping secrets out of messages. Every refusal is shown to someone (a log line, `validate`'s
//! output, a NACK, `/policy_status`, a `status.conditions` message readable by anyone who may read
//! the object), so a message never repeats a value that may be a credential: the user-info of a
//! URL, or the value serde found where it expected something else in a file that holds secrets.

/// `url` with everything up to its last `@` before any `?` or `#` replaced by `***`, for
/// showing a URL, parsable or not (`https:u:pw@host`, `//u:pw@host`, `u:pw@host` hide the same
/// way). An `@` in a path is masked too: over-masking a URL in a message costs nothing.
pub fn url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    match url[..end].rfind('@') {
        Some(at) => format!("***{}", &url[at..]),
        None => url.to_owned(),
    }
}

/// serde_yaml's message for `e` without the offending value: `invalid type: string "hunter2",
/// expected a map at line 3 column 5` becomes `invalid type, expected a map at line 3 column 5`.
/// For files that hold secrets (bootstrap tokens, client secrets), where the misplaced value is
/// most likely the secret itself.
pub fn yaml_error(e: &serde_yaml::Error) -> String {
    without_value(&e.to_string())
}

/// Unknown field names up to this length are shown (a typo like `namspace` is worth naming); a
/// longer one may be a secret written as a key (bootstrap tokens have at least 16 characters).
const SHOWN_FIELD_NAME: usize = 15;

fn without_value(message: &str) -> String {
    if let Some(start) = message.find("unknown field `") {
        let name_len = message[start + 15..].find('`').unwrap_or(usize::MAX);
        if name_len > SHOWN_FIELD_NAME {
            let tail = message.rfind(", expected ").filter(|&e| e > start);
            let tail = tail.map_or_else(|| location(message), |e| &message[e..]);
            return format!("{}unknown field (name not shown){tail}", &message[..start]);
        }
    }
    // serde's `invalid type: {what it found}, expected {what it wanted}` (and `invalid value`,
    // `unknown variant`): what it found may be anything from the document; what it wanted comes
    // from our types. The last ", expected " is serde's, whatever the value contains.
    for found in ["invalid type: ", "invalid value: ", "unknown variant "] {
        let Some(start) = message.find(found) else {
            continue;
        };
        let head = &message[..start];
        let what = found.trim_end_matches([' ', ':']);
        return match message.rfind(", expected ") {
            Some(expected) if expected > start => {
                format!("{head}{what}{}", &message[expected..])
            }
            _ => format!("{head}{what}{}", location(message)),
        };
    }
    message.to_owned()
}

/// The trailing ` at line N column M` of a serde_yaml message, if any.
fn location(message: &str) -> &str {
    message.rfind(" at line ").map_or("", |i| &message[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked_and_nothing_else_changes() {
        for (given, shown) in [
            ("https://u:p@idp.example/jwks", "***@idp.example/jwks"),
            ("https://p@ss:w@rd@idp.example", "***@idp.example"),
            ("https://idp.example/a@b", "***@b"),
            // Outside review (session 6): forms that do not parse as URLs were shown whole.
            ("https:u:pw@idp.example/jwks", "***@idp.example/jwks"),
            ("https:\\\\u:pw@idp.example", "***@idp.example"),
            ("//u:pw@idp.example/jwks", "***@idp.example/jwks"),
            ("u:pw@idp.example", "***@idp.example"),
            (
                "https://idp.example/jwks?x=@",
                "https://idp.example/jwks?x=@",
            ),
            ("http://127.0.0.1:9/j", "http://127.0.0.1:9/j"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    /// The messages come from serde_yaml itself, parsing shapes like the secret-bearing files.
    #[test]
    fn serde_messages_lose_the_value_and_keep_the_shape_and_place() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct File {
            tokens: Vec<Entry>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Entry {
            token: String,
            kind: Kind,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Kind {
            A,
        }
        let secret = "s3cr3t-value, expected \"x\"";
        for doc in [
            format!("tokens: {secret:?}\n"),
            format!("tokens:\n- {secret:?}\n"),
            format!("tokens:\n- token: {{a: {secret:?}}}\n  kind: A\n"),
            format!("tokens:\n- token: x\n  kind: {secret:?}\n"),
            "tokens:\n- token: 123456789012\n  kind: 424242424242\n".to_owned(),
        ] {
            let e = serde_yaml::from_str::<File>(&doc).unwrap_err();
            let raw = e.to_string();
            let shown = yaml_error(&e);
            for leaked in ["s3cr3t", "424242424242"] {
                assert!(!shown.contains(leaked), "{shown:?} (from {raw:?})");
            }
            assert!(shown.contains("line"), "{shown:?} (from {raw:?})");
            assert!(
                shown.contains("invalid type") || shown.contains("unknown variant"),
                "{shown:?} (from {raw:?})"
            );
        }
        // A long unknown key may be a secret written as a key; a short one is a typo worth naming.
        let e =
            serde_yaml::from_str::<File>("tokens:\n- s3cr3t0123456789abcdefgh: x\n").unwrap_err();
        assert!(!yaml_error(&e).contains("s3cr3t"), "{}", yaml_error(&e));
        assert!(
            yaml_error(&e).contains("unknown field"),
            "{}",
            yaml_error(&e)
        );
        let e = serde_yaml::from_str::<File>("tokens:\n- tokn: x\n").unwrap_err();
        assert_eq!(yaml_error(&e), e.to_string());
        // A message without a value passes unchanged.
        let e = serde_yaml::from_str::<File>("tokens: [{token: x}]\n").unwrap_err();
        assert_eq!(yaml_error(&e), e.to_string());
    }
}
