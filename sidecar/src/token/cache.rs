//! The token caches (phantom tokens exchanged by introspection; JWTs already verified) and the
//! in-flight table that lets concurrent requests with the same opaque token share one
//! introspection call. Keys are SHA-256 digests: an opaque token itself is never stored.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::error::TokenError;
use super::Authenticated;

pub(crate) type TokenKey = [u8; 32];

struct Entry<V> {
    value: V,
    deadline: Instant,
    seq: u64,
}

struct Entries<V> {
    by_key: HashMap<TokenKey, Entry<V>>,
    /// Ordered by deadline: the first is the soonest to expire, evicted first when full.
    by_deadline: BTreeSet<(Instant, u64, TokenKey)>,
    next_seq: u64,
}

/// Values by token digest, each until its deadline; bounded, the soonest to expire evicted first.
pub(crate) struct DigestCache<V> {
    max_entries: usize,
    entries: Mutex<Entries<V>>,
}

/// Opaque token → the JWT its introspection returned.
pub(crate) type PhantomCache = DigestCache<Authenticated>;

impl<V: Clone> DigestCache<V> {
    pub(crate) fn new(max_entries: usize) -> Self {
        DigestCache {
            max_entries,
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                by_deadline: BTreeSet::new(),
                next_seq: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<V>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &TokenKey) -> Option<V> {
        let mut entries = self.lock();
        let entry = entries.by_key.get(key)?;
        if entry.deadline > Instant::now() {
            return Some(entry.value.clone());
        }
        entries.remove(key);
        None
    }

    pub(crate) fn insert(&self, key: TokenKey, value: V, deadline: Instant) {
        if self.max_entries == 0 {
            return;
        }
        let mut entries = self.lock();
        entries.remove(&key);
        while entries.by_key.len() >= self.max_entries {
            let Some(&(_, _, oldest)) = entries.by_deadline.first() else {
                break;
            };
            entries.remove(&oldest);
        }
        let seq = entries.next_seq;
        entries.next_seq += 1;
        entries.by_deadline.insert((deadline, seq, key));
        entries.by_key.insert(
            key,
            Entry {
                value,
                deadline,
                seq,
            },
        );
    }

    pub(crate) fn remove(&self, key: &TokenKey) {
        self.lock().remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

impl<V> Entries<V> {
    fn remove(&mut self, key: &TokenKey) {
        if let Some(entry) = self.by_key.remove(key) {
            self.by_deadline.remove(&(entry.deadline, entry.seq, *key));
        }
    }
}

type Shared = Arc<OnceCell<Result<Authenticated, TokenError>>>;

/// Introspections in progress, by token digest.
#[derive(Default)]
pub(crate) struct InFlight {
    calls: Mutex<HashMap<TokenKey, Shared>>,
}

/// A caller's share of one in-flight introspection; the last one out removes the table entry
/// (also when callers are cancelled), so the table never outgrows the requests waiting on it.
pub(crate) struct Joined<'a> {
    table: &'a InFlight,
    key: TokenKey,
    pub cell: Shared,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<TokenKey, Shared>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn join(&self, key: TokenKey) -> Joined<'_> {
        let cell = self.lock().entry(key).or_default().clone();
        Joined {
            table: self,
            key,
            cell,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let mut calls = self.table.lock();
        let ours = calls
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Two references left: the table's and ours.
        if ours && Arc::strong_count(&self.cell) <= 2 {
            calls.remove(&self.key);
        }
    }
}
