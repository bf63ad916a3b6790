//! Abuse signals per client (issue 13): a client — its verified token's `client_id`, else its
//! address — that within one [`WINDOW`] gets many refusals (401, 403, 404, 429), walks through
//! many identifiers (path segments and query values with digits: `/orders/1`, `/users/u2`,
//! `?id=3`), or sends many requests the edge refuses as malformed (methods, headers, paths,
//! misdirected hosts) raises a signal: one WARN
//! log event (`target: pqmesh::abuse`, naming the client, the signal and the count) and one
//! increment of `pqmesh_gateway_abuse_signals_total{signal}`, once per signal and window. The
//! client is in the log, not in a metric label: labels per client would grow without bound.
//! What to do about it is the operator's: the client deny list (`revocations.yaml` `clients`,
//! `subjects`) and rate limits act on it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window each client's counts start from (fixed, from the client's first counted request).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refused answers (401, 403, 404, 429) in a window that raise `refusals`.
pub const REFUSALS: u32 = 20;
/// Distinct identifiers ([`ids`]) in a window that raise `enumeration`.
pub const DISTINCT_IDS: usize = 20;
/// Malformed requests (bad method, header, path, request, misdirected) that raise `unexpected`.
pub const UNEXPECTED: u32 = 5;
/// Clients tracked at once; past it, clients whose window ended are dropped first, and new
/// clients are not tracked until there is room (counted as `untracked`).
const MAX_CLIENTS: usize = 50_000;

/// A signal: the metric label and log name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Refusals,
    Enumeration,
    Unexpected,
    /// The table was full: this client's requests were not counted.
    Untracked,
}

impl Signal {
    pub fn label(self) -> &'static str {
        match self {
            Signal::Refusals => "refusals",
            Signal::Enumeration => "enumeration",
            Signal::Unexpected => "unexpected",
            Signal::Untracked => "untracked",
        }
    }
}

#[derive(Default)]
struct Counts {
    refusals: u32,
    ids: HashSet<u64>,
    unexpected: u32,
    /// Signals already raised in this window.
    raised: Vec<Signal>,
}

struct Client {
    since: Instant,
    counts: Counts,
}

/// The counts of every client seen in its current window.
#[derive(Default)]
pub struct Abuse {
    clients: Mutex<HashMap<String, Client>>,
    /// When `untracked` was last raised: at most once per window, so a flood of new addresses
    /// cannot flood the log (review 11, F8).
    untracked: Mutex<Option<Instant>>,
}

/// What looks like an identifier in a request, hashed: every path segment and query value
/// that holds a digit (`/orders/42`, `/users/u1`, `/files/1fz`, `?id=7`), at most 8. Review 11
/// F8: only all-digit path segments were counted, so `u1, u2, ...` or `?id=N` raised nothing.
pub fn ids(path: &str, query: Option<&str>) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let values = query
        .into_iter()
        .flat_map(|q| q.split(['&', ';']))
        .filter_map(|kv| kv.split_once('='));
    path.split('/')
        .map(|s| ("", s))
        .chain(values)
        .filter(|(_, v)| !v.is_empty() && v.len() <= 64 && v.bytes().any(|b| b.is_ascii_digit()))
        .map(|(k, v)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (k, v).hash(&mut h);
            h.finish()
        })
        .take(8)
        .collect()
}

fn is_refusal(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 429)
}

fn is_unexpected(decision: &str) -> bool {
    matches!(
        decision,
        "bad_method" | "bad_header" | "bad_path" | "bad_request" | "misdirected"
    )
}

impl Abuse {
    /// Counts one answered request of `client`; returns the signals it newly raised.
    pub fn observe(&self, client: &str, status: u16, decision: &str, ids: &[u64]) -> Vec<Signal> {
        let counted = is_refusal(status) || is_unexpected(decision) || !ids.is_empty();
        if !counted {
            return Vec::new();
        }
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            clients.retain(|_, c| now.duration_since(c.since) < WINDOW);
            if clients.len() >= MAX_CLIENTS {
                let mut last = self.untracked.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_some_and(|t| now.duration_since(t) < WINDOW) {
                    return Vec::new();
                }
                *last = Some(now);
                return vec![Signal::Untracked];
            }
        }
        let entry = clients.entry(client.to_owned()).or_insert_with(|| Client {
            since: now,
            counts: Counts::default(),
        });
        if now.duration_since(entry.since) >= WINDOW {
            entry.since = now;
            entry.counts = Counts::default();
        }
        let c = &mut entry.counts;
        if is_refusal(status) {
            c.refusals += 1;
        }
        if is_unexpected(decision) {
            c.unexpected += 1;
        }
        for id in ids {
            if c.ids.len() <= DISTINCT_IDS {
                c.ids.insert(*id);
            }
        }
        let mut raised = Vec::new();
        for (signal, over) in [
            (Signal::Refusals, c.refusals >= REFUSALS),
            (Signal::Enumeration, c.ids.len() >= DISTINCT_IDS),
            (Signal::Unexpected, c.unexpected >= UNEXPECTED),
        ] {
            if over && !c.raised.contains(&signal) {
                c.raised.push(signal);
                raised.push(signal);
            }
        }
        raised
    }

    /// The counts behind a raised signal, for its log event.
    pub fn count(&self, client: &str, signal: Signal) -> u64 {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get(client).map_or(0, |c| match signal {
            Signal::Refusals => u64::from(c.counts.refusals),
            Signal::Enumeration => c.counts.ids.len() as u64,
            Signal::Unexpected => u64::from(c.counts.unexpected),
            Signal::Untracked => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_query_values_with_digits_are_ids() {
        assert_eq!(ids("/orders/42/items/7", None).len(), 2);
        assert_eq!(ids("/users/u1", Some("id=7&page=x")).len(), 2);
        assert_eq!(ids("/orders/list", Some("sort=name")).len(), 0);
        assert_ne!(ids("/u1", None), ids("/u2", None));
        assert_ne!(ids("/", Some("id=1")), ids("/", Some("id=2")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_says_untracked_once_per_window() {
        let a = Abuse::default();
        for i in 0..MAX_CLIENTS {
            a.observe(&format!("ip={i}"), 401, "no_token", &[]);
        }
        assert_eq!(
            a.observe("ip=new1", 401, "no_token", &[]),
            [Signal::Untracked]
        );
        assert!(a.observe("ip=new2", 401, "no_token", &[]).is_empty());
        tokio::time::advance(WINDOW).await;
        // The window ended: old clients are dropped and the new one is tracked.
        assert!(a.observe("ip=new3", 401, "no_token", &[]).is_empty());
        assert_eq!(a.count("ip=new3", Signal::Refusals), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_signal_is_raised_once_per_window_at_its_threshold() {
        let a = Abuse::default();
        for i in 1..REFUSALS {
            assert!(
                a.observe("ip=1.2.3.4", 401, "invalid_token", &[])
                    .is_empty(),
                "{i}"
            );
        }
        assert_eq!(
            a.observe("ip=1.2.3.4", 404, "no_route", &[]),
            [Signal::Refusals]
        );
        assert_eq!(a.count("ip=1.2.3.4", Signal::Refusals), u64::from(REFUSALS));
        assert!(a
            .observe("ip=1.2.3.4", 403, "insufficient_scope", &[])
            .is_empty());
        // Another client has its own counts; 200s without IDs are not counted at all.
        assert!(a.observe("client_id=c", 200, "forwarded", &[]).is_empty());
        for id in 0..DISTINCT_IDS as u64 - 1 {
            assert!(a.observe("client_id=c", 200, "forwarded", &[id]).is_empty());
            assert!(a.observe("client_id=c", 200, "forwarded", &[id]).is_empty());
        }
        assert_eq!(
            a.observe("client_id=c", 200, "forwarded", &[999]),
            [Signal::Enumeration]
        );
        for _ in 1..UNEXPECTED {
            assert!(a.observe("ip=5.5.5.5", 400, "bad_method", &[]).is_empty());
        }
        assert_eq!(
            a.observe("ip=5.5.5.5", 421, "misdirected", &[]),
            [Signal::Unexpected]
        );
        // A new window starts the counts again.
        tokio::time::advance(WINDOW).await;
        assert!(a
            .observe("ip=1.2.3.4", 401, "invalid_token", &[])
            .is_empty());
        assert_eq!(a.count("ip=1.2.3.4", Signal::Refusals), 1);
    }
}
