//! Points an error about the `i`-th entry of a top-level YAML list (`tokens[2]: …`,
//! `services[0] (shop/api): …`) at the line where that entry starts, so a log line names file,
//! line and reason. serde_yaml's own errors (syntax, types, unknown fields) already carry
//! "at line N column M"; this covers the checks made after parsing.

/// The 1-based line where entry `index` of the top-level list `key` starts (a flow-style list
/// `key: [...]` points at the key's line).
pub fn entry_line(text: &str, key: &str, index: usize) -> Option<usize> {
    let mut lines = text.lines().enumerate();
    let (key_line, rest) = lines.by_ref().find_map(|(n, l)| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(|r| (n + 1, r.trim().to_owned()))
    })?;
    if rest.starts_with('[') {
        return Some(key_line);
    }
    let mut item_indent = None;
    let mut seen = 0;
    for (n, line) in lines {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let is_item = trimmed == "-" || trimmed.starts_with("- ");
        if indent == 0 && !is_item {
            return None; // the next top-level key: the list ended
        }
        if is_item && *item_indent.get_or_insert(indent) == indent {
            if seen == index {
                return Some(n + 1);
            }
            seen += 1;
        }
    }
    None
}

/// `reason`, prefixed with `line N: ` when it names an entry of one of `keys` (`keys[i]…`)
/// and that entry is found in `text`.
pub fn locate(text: &str, keys: &[&str], reason: &str) -> String {
    for key in keys {
        let Some(rest) = reason.strip_prefix(key).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let index = rest.split(']').next().and_then(|i| i.parse::<usize>().ok());
        if let Some(line) = index.and_then(|i| entry_line(text, key, i)) {
            return format!("line {line}: {reason}");
        }
    }
    reason.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# header\nendpoints:\n- ip: 10.0.0.1\n  namespace: a\n\n  # note\n- ip: 10.0.0.2\n  ports:\n  - 80\n  - 81\nservices:\n  - name: x\n    ip: 10.1.0.1\n  - name: y\n";

    #[test]
    fn finds_each_entry_of_block_lists() {
        assert_eq!(entry_line(TEXT, "endpoints", 0), Some(3));
        assert_eq!(
            entry_line(TEXT, "endpoints", 1),
            Some(7),
            "nested lists are not items"
        );
        assert_eq!(entry_line(TEXT, "endpoints", 2), None);
        assert_eq!(entry_line(TEXT, "services", 1), Some(14), "indented items");
        assert_eq!(entry_line("tokens: []\n", "tokens", 0), Some(1));
        assert_eq!(entry_line("other: 1\n", "tokens", 0), None);
    }

    #[test]
    fn prefixes_only_reasons_that_name_a_found_entry() {
        assert_eq!(
            locate(
                TEXT,
                &["endpoints", "services"],
                "services[1] (y): backends is empty"
            ),
            "line 14: services[1] (y): backends is empty"
        );
        assert_eq!(
            locate(TEXT, &["endpoints"], "endpoints[9]: port 0 is not a port"),
            "endpoints[9]: port 0 is not a port"
        );
        assert_eq!(
            locate(TEXT, &["endpoints"], "at line 2 column 1"),
            "at line 2 column 1"
        );
    }
}
