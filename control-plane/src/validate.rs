//! `pqmesh-control-plane validate FILE…`: the offline check of local-mode files with the code
//! the running control plane reloads them with (`pqmesh_policy::admit` for policies, the
//! bootstrap-token and endpoint parsers for those files), so a file that passes here is
//! accepted by a reload and one that fails is refused there for the same reason.

use std::path::PathBuf;

use pqmesh_policy::admit::{admit, candidates_from_yaml, ObjectKey};
use pqmesh_policy::PolicySet;

/// What `validate` prints and whether every file is valid.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub valid: bool,
}

/// Checks every file: `bootstrap-tokens.yaml`, `endpoints.yaml` and `secrets.yaml` by name, any
/// other file as AccessPolicy/TokenIssuer documents (judged together, as a policy directory is,
/// so references between files resolve and duplicates are found).
pub fn files(paths: &[PathBuf], trust_domain: &str) -> Report {
    let mut problems = Vec::new();
    let mut candidates = Vec::new();
    let mut starts: Vec<(String, Vec<usize>)> = Vec::new();
    let mut secrets = None;
    for path in paths {
        let shown = path.display().to_string();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        match name {
            "bootstrap-tokens.yaml" => {
                if let Err(e) = crate::tokens::BootstrapTokens::load(path, trust_domain) {
                    let crate::tokens::TokenFileError::Invalid { reason, .. } = e;
                    problems.push(at(&shown, line_in(&reason), &reason));
                }
                continue;
            }
            "secrets.yaml" => {
                match crate::policies::load_secrets(path) {
                    Ok(table) => secrets = Some(table),
                    Err(e) => {
                        let reason = e.strip_prefix(&format!("{shown}: ")).unwrap_or(&e);
                        problems.push(at(&shown, line_in(reason), reason));
                    }
                }
                continue;
            }
            _ => {}
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{shown}: {e}"));
                continue;
            }
        };
        if name == "endpoints.yaml" {
            if let Err(e) = crate::endpoints::EndpointTable::parse(&text, trust_domain) {
                problems.push(at(&shown, line_in(&e), &e));
            }
            continue;
        }
        starts.push((shown.clone(), document_starts(&text)));
        candidates.extend(candidates_from_yaml(&text, &shown));
    }
    let objects = candidates.len();
    let mut admitted = admit(candidates, &PolicySet::default(), trust_domain);
    if let Some(table) = &secrets {
        admitted.resolve_secrets(table);
    }
    for v in admitted.verdicts.values() {
        let line = locate(&v.source, &starts);
        let (file, doc_line) = line.unwrap_or((v.source.clone(), None));
        let what = object_name(&v.key);
        for judgement in [&v.accepted, &v.resolved_refs] {
            if !judgement.status {
                let line = line_in(&judgement.message).or(doc_line);
                problems.push(at(&file, line, &format!("{what}{}", judgement.message)));
            }
        }
    }
    let valid = problems.is_empty();
    let mut text: String = problems.iter().map(|p| format!("{p}\n")).collect();
    text.push_str(&format!(
        "{} file(s), {objects} policy object(s): {}\n",
        paths.len(),
        if valid {
            "valid".to_owned()
        } else {
            format!("{} problem(s)", problems.len())
        }
    ));
    if secrets.is_none()
        && admitted
            .set
            .issuers
            .iter()
            .any(|t| t.spec.introspection.is_some())
    {
        text.push_str("note: introspection client Secrets were not checked (pass the directory's secrets.yaml too)\n");
    }
    Report { text, valid }
}

/// `file:line: reason`, or `file: reason` when no line is known.
fn at(file: &str, line: Option<usize>, reason: &str) -> String {
    match line {
        Some(n) => format!("{file}:{n}: {reason}"),
        None => format!("{file}: {reason}"),
    }
}

fn object_name(key: &ObjectKey) -> String {
    if key.kind == "Unknown" {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// The line a YAML parser's message points at (`... at line 7 column 3`).
fn line_in(message: &str) -> Option<usize> {
    let rest = &message[message.find("line ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The file and first line of `<file> document N` (how candidates name their source).
fn locate(source: &str, starts: &[(String, Vec<usize>)]) -> Option<(String, Option<usize>)> {
    let (file, n) = source.rsplit_once(" document ")?;
    let n: usize = n.parse().ok()?;
    let lines = &starts.iter().find(|(f, _)| f == file)?.1;
    Some((file.to_owned(), lines.get(n.checked_sub(1)?).copied()))
}

/// The first line of each YAML document, in the order the YAML parser counts them: a `---`
/// before any content opens the first document; each later one starts the next.
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker {
            if content || starts.len() > 1 {
                starts.push(i + 2);
            } else {
                starts[0] = i + 2;
            }
            content = false;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            content = true;
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lines() {
        assert_eq!(document_starts("a: 1\n---\nb: 2\n"), [1, 3]);
        assert_eq!(document_starts("# c\n---\na: 1\n---\nb: 2\n"), [3, 5]);
        assert_eq!(line_in("mapping values at line 7 column 3"), Some(7));
        assert_eq!(line_in("no location"), None);
    }
}
