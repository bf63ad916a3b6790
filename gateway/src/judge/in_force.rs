//! Which definition of an HTTPRoute or EdgePolicy is the one in force (outside review 12, F2/F3):
//! decided by the SOURCE the version in force was read from, never by read order or content
//! alone. A file that still exists and has a refused document keeps in force the last accepted
//! version of an object it no longer defines (the refused document may be its edit).

use std::collections::HashSet;

/// The file (local mode) or object (Kubernetes mode) a source `<file> document <n>` is in.
pub(super) use pqmesh_policy::admit::file_of;

/// What `pick` decided for one object's definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pick {
    /// This definition is the object (accepted, or a refused edit keeping the last good).
    Winner(usize),
    /// No definition is read from where the version in force was, but that file still exists
    /// with a refused document: the last accepted version stays in force, every definition
    /// elsewhere is a duplicate.
    Hold,
    /// Several definitions and none is the version in force's: every one is refused.
    NoWinner,
}

/// One definition: its source, and whether its content equals the version in force.
pub(super) struct Candidate<'a> {
    pub source: &'a str,
    pub equal: bool,
}

/// Picks the definition in force among `candidates` (in read order). `in_force`: the source the
/// version in force was read from, if any. `files`: the files read in this judgement;
/// `refused_files`: those with a refused or unrecognisable document.
///
/// - The candidate read from the very document the version in force was read from goes first,
///   whatever its content (a valid edit replaces it, a refused edit keeps the last good); then
///   the only candidate from the same file (documents may have moved).
/// - With no candidate from that file while the file exists and has a refused document: `Hold`.
/// - Then, as a fallback when that source no longer defines it, the only candidate equal to it.
/// - Else one candidate is simply the object; several with no version in force (a restart, or
///   two new definitions) are all refused: read order never picks a winner.
fn pick(
    candidates: &[Candidate],
    in_force: Option<&str>,
    files: &HashSet<&str>,
    refused_files: &HashSet<String>,
) -> Pick {
    if let Some(src) = in_force {
        if let Some(i) = candidates.iter().position(|c| c.source == src) {
            return Pick::Winner(i);
        }
        let file = file_of(src);
        let same_file: Vec<usize> = (0..candidates.len())
            .filter(|&i| file_of(candidates[i].source) == file)
            .collect();
        match same_file.as_slice() {
            [i] => return Pick::Winner(*i),
            [] => {}
            several => {
                let equal: Vec<&usize> = several.iter().filter(|&&i| candidates[i].equal).collect();
                return match equal.as_slice() {
                    [i] => Pick::Winner(**i),
                    _ => Pick::NoWinner,
                };
            }
        }
        if files.contains(file) && refused_files.contains(file) {
            return Pick::Hold;
        }
        let equal: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].equal)
            .collect();
        if let [i] = equal.as_slice() {
            return Pick::Winner(*i);
        }
    }
    match candidates.len() {
        1 => Pick::Winner(0),
        _ => Pick::NoWinner,
    }
}

/// The reason a losing definition is refused as `Duplicate`.
/// [`pick`] among the definitions of `kind` `name` read from `sources` (in read order), and the
/// message every refused definition carries.
pub(super) fn settle(
    kind: &str,
    name: &str,
    candidates: &[Candidate],
    in_force: Option<&str>,
    sources: &[String],
    files: &HashSet<&str>,
    refused_files: &HashSet<String>,
) -> (Pick, String) {
    let pick = pick(candidates, in_force, files, refused_files);
    let winner = match pick {
        Pick::Winner(w) => Some(sources[w].as_str()),
        Pick::Hold => in_force,
        Pick::NoWinner => None,
    };
    let all: Vec<&str> = sources.iter().map(String::as_str).collect();
    (pick, duplicate_message(kind, name, pick, winner, &all))
}

fn duplicate_message(
    kind: &str,
    name: &str,
    pick: Pick,
    winner: Option<&str>,
    all: &[&str],
) -> String {
    match (pick, winner) {
        (Pick::Winner(_), Some(w)) => format!(
            "Duplicate: {w} already defines {kind} {name}, and that is where the version in \
             force was read from (or the only definition when none was); one definition per \
             object"
        ),
        (Pick::Hold, Some(w)) => format!(
            "Duplicate: {kind} {name} was read from {w}, and its last accepted version stays in \
             force while that file has a refused document; one definition per object"
        ),
        _ => format!(
            "Duplicate: {kind} {name} is defined {} times ({}) and none of them is read from \
             where the version in force was (none is in force after a restart): every \
             definition is refused and what they would govern answers 503 until only one is left",
            all.len(),
            all.join(", ")
        ),
    }
}

/// Whether `s` is an RFC 1123 DNS label (a Kubernetes namespace).
pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (a Kubernetes object name): dot-separated DNS labels,
/// at most 253 characters.
pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Refuses names Kubernetes would refuse (outside review 12, F4): `metadata.name` a DNS-1123
/// subdomain, `metadata.namespace` (when set, and the kind is namespaced) a DNS label.
pub(super) fn check_metadata(value: &serde_yaml::Value, namespaced: bool) -> Result<(), String> {
    let meta = value.get("metadata");
    if let Some(name) = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str()) {
        if !is_dns_subdomain(name) {
            return Err(format!(
                "metadata.name {name:?} is not a DNS-1123 subdomain (lowercase letters, digits, \
                 '-' and '.', at most 253 characters, starting and ending with a letter or digit)"
            ));
        }
    }
    if !namespaced {
        return Ok(());
    }
    if let Some(ns) = meta.and_then(|m| m.get("namespace")) {
        match ns.as_str() {
            Some(ns) if is_dns_label(ns) => {}
            Some(ns) => {
                return Err(format!(
                    "metadata.namespace {ns:?} is not a DNS label (lowercase letters, digits and \
                     '-', at most 63 characters, starting and ending with a letter or digit)"
                ))
            }
            None => return Err("metadata.namespace is not a string".into()),
        }
    }
    Ok(())
}
