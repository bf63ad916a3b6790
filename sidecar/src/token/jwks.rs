//! One issuer's JWKS: fetched when the issuer is loaded (`prefetch`, retried every
//! `jwks_min_refetch` until it succeeds, so a broken issuer shows in metrics and logs before a
//! user's request finds it) or else on first use, refreshed every `jwks_refresh`, refetched on an
//! unknown `kid` at most once per `jwks_min_refetch`. A failed fetch keeps the last good keys. The
//! periodic refresh runs in the background: a slow or hung JWKS server never delays a request
//! that already has keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use hyper::{StatusCode, Uri};
use tokio::time::Instant;

use super::error::{InvalidReason, TokenError};
use super::http::HttpClient;
use super::jwk::{parse_jwks, Jwk};
use super::jws::{truncate, Alg};
use super::metrics::TokenMetrics;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, Copy)]
enum Trigger {
    Initial,
    /// In the background at policy load: counted as `initial`, but not against the request
    /// path's refetch limit (a server that comes up later is fetched by the first request).
    Prefetch,
    Refresh,
    UnknownKid,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial | Trigger::Prefetch => "initial",
            Trigger::Refresh => "refresh",
            Trigger::UnknownKid => "unknown_kid",
        }
    }
}

/// What an operator sees of one issuer's keys (`/config_dump`).
#[derive(Debug, Clone, PartialEq)]
pub struct KeysHealth {
    /// Keys held (0: tokens from this issuer cannot be verified).
    pub keys: usize,
    /// Seconds since the last successful fetch (`None`: never fetched).
    pub fetched_secs_ago: Option<u64>,
    /// Why the last fetch failed, if it did.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct KeyState {
    keys: Arc<Vec<Jwk>>,
    /// Last successful fetch.
    fetched: Option<Instant>,
    /// Last fetch attempt, successful or not (the rate limit counts both).
    attempted: Option<Instant>,
    last_error: Option<String>,
    /// Bumped whenever `keys` changes: what was verified with the old set is verified again.
    generation: u64,
}

pub(crate) struct KeyCache {
    issuer: String,
    uri: Uri,
    refresh: Duration,
    min_refetch: Duration,
    state: RwLock<KeyState>,
    /// Held while fetching, so concurrent requests share one fetch.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh is under way.
    refreshing: AtomicBool,
}

impl KeyCache {
    pub(crate) fn new(issuer: String, uri: Uri, refresh: Duration, min_refetch: Duration) -> Self {
        KeyCache {
            issuer,
            uri,
            refresh,
            min_refetch,
            state: RwLock::new(KeyState::default()),
            fetching: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
        }
    }

    /// Changes whenever the key set does (a key added, rotated or withdrawn).
    pub(crate) fn generation(&self) -> u64 {
        self.read().generation
    }

    // Nothing panics while holding these locks, but a poisoned lock must not take auth down.
    fn read(&self) -> RwLockReadGuard<'_, KeyState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, KeyState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn attempted_recently(&self) -> bool {
        self.read()
            .attempted
            .is_some_and(|t| t.elapsed() < self.min_refetch)
    }

    pub(crate) fn health(&self) -> KeysHealth {
        let state = self.read();
        KeysHealth {
            keys: state.keys.len(),
            fetched_secs_ago: state.fetched.map(|t| t.elapsed().as_secs()),
            last_error: state.last_error.clone(),
        }
    }

    /// Fetches the keys now, in the background, and retries (1 s, doubling up to `min_refetch`)
    /// until a fetch succeeds; then refreshes them every `refresh`. Ends when this issuer is
    /// replaced (a newer policy). Its first attempts do not hold back a request's own fetch.
    pub(crate) fn prefetch(self: &Arc<Self>, http: HttpClient, metrics: TokenMetrics) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let issuer = Arc::downgrade(self);
        runtime.spawn(async move {
            // Until the keys are loaded: 1 s, 2 s, 4 s … up to `min_refetch`.
            let mut wait = Duration::from_secs(1);
            loop {
                let Some(this) = issuer.upgrade() else { return };
                {
                    let _fetching = this.fetching.lock().await;
                    let fetched = this.read().fetched;
                    match fetched {
                        None => this.fetch(Trigger::Prefetch, &http, &metrics).await,
                        Some(at) if at.elapsed() >= this.refresh => {
                            this.fetch(Trigger::Refresh, &http, &metrics).await
                        }
                        Some(_) => {}
                    }
                }
                // Loaded: refresh every `refresh` whether or not requests come, so a withdrawn
                // key stops verifying within `refresh` (plus one fetch) even on an idle sidecar.
                let next = match this.read().fetched {
                    Some(at) => this
                        .refresh
                        .saturating_sub(at.elapsed())
                        .max(this.min_refetch),
                    None => wait.min(this.min_refetch),
                };
                drop(this);
                tokio::time::sleep(next).await;
                wait *= 2;
            }
        });
    }

    /// The key that verifies `alg` signatures for `kid`, and the generation of the key set it
    /// was found in.
    pub(crate) async fn key_for(
        self: &Arc<Self>,
        kid: &str,
        alg: Alg,
        http: &HttpClient,
        metrics: &TokenMetrics,
    ) -> Result<(Jwk, u64), TokenError> {
        self.ensure_fresh(http, metrics).await?;
        if let Some(found) = self.lookup(kid, alg) {
            return found;
        }
        {
            let _fetching = self.fetching.lock().await;
            // Another request may have fetched while we waited.
            if self.lookup(kid, alg).is_none() && !self.attempted_recently() {
                self.fetch(Trigger::UnknownKid, http, metrics).await;
            }
        }
        self.lookup(kid, alg).unwrap_or_else(|| {
            Err(TokenError::invalid(
                InvalidReason::UnknownKey,
                format!(
                    "issuer {}: no key with kid {:?}",
                    self.issuer,
                    truncate(kid)
                ),
            ))
        })
    }

    /// `None` when no key has this `kid`; otherwise the first key with it that fits `alg`.
    fn lookup(&self, kid: &str, alg: Alg) -> Option<Result<(Jwk, u64), TokenError>> {
        let (keys, generation) = {
            let state = self.read();
            (state.keys.clone(), state.generation)
        };
        let mut with_kid = keys.iter().filter(|k| k.kid == kid).peekable();
        with_kid.peek()?;
        Some(
            with_kid
                .find(|k| k.fits(alg))
                .map(|k| (k.clone(), generation))
                .ok_or_else(|| {
                    TokenError::invalid(
                        InvalidReason::KeyMismatch,
                        format!(
                            "issuer {}: key {:?} cannot verify {}",
                            self.issuer,
                            truncate(kid),
                            alg.name()
                        ),
                    )
                }),
        )
    }

    pub(crate) async fn ensure_fresh(
        self: &Arc<Self>,
        http: &HttpClient,
        metrics: &TokenMetrics,
    ) -> Result<(), TokenError> {
        let fetched = self.read().fetched;
        match fetched {
            None => {
                let _fetching = self.fetching.lock().await;
                if self.read().fetched.is_none() && !self.attempted_recently() {
                    self.fetch(Trigger::Initial, http, metrics).await;
                }
                let state = self.read();
                if state.fetched.is_none() {
                    return Err(TokenError::KeysUnavailable {
                        issuer: self.issuer.clone(),
                        reason: state
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "not fetched yet".into()),
                    });
                }
            }
            Some(at) if at.elapsed() >= self.refresh && !self.attempted_recently() => {
                // Stale but usable: refresh in the background and go on with the keys we have.
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let (this, http, metrics) = (self.clone(), http.clone(), metrics.clone());
                    tokio::spawn(async move {
                        {
                            let _fetching = this.fetching.lock().await;
                            let stale = this
                                .read()
                                .fetched
                                .is_some_and(|t| t.elapsed() >= this.refresh);
                            if stale && !this.attempted_recently() {
                                this.fetch(Trigger::Refresh, &http, &metrics).await;
                            }
                        }
                        this.refreshing.store(false, Ordering::Release);
                    });
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Fetches and, on success, replaces the keys. Callers hold `fetching`.
    async fn fetch(&self, trigger: Trigger, http: &HttpClient, metrics: &TokenMetrics) {
        let result = http
            .get(
                &self.uri,
                "application/jwk-set+json, application/json",
                MAX_JWKS_BYTES,
                FETCH_TIMEOUT,
            )
            .await
            .and_then(|r| {
                if r.status == StatusCode::OK {
                    parse_jwks(&r.body)
                } else {
                    Err(format!("HTTP status {}", r.status))
                }
            });
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics
            .jwks_fetches
            .with_label_values(&[self.issuer.as_str(), trigger.as_str(), outcome])
            .inc();
        let now = Instant::now();
        let mut state = self.write();
        if !matches!(trigger, Trigger::Prefetch) {
            state.attempted = Some(now);
        }
        match result {
            Ok((keys, skipped)) => {
                for reason in &skipped {
                    tracing::warn!(issuer = %self.issuer, %reason, "JWKS entry skipped");
                }
                if keys.is_empty() {
                    tracing::warn!(issuer = %self.issuer, uri = %self.uri,
                        "the JWKS lists no usable key: every token from this issuer is refused");
                } else if state.fetched.is_none() {
                    tracing::info!(issuer = %self.issuer, keys = keys.len(), "JWKS loaded");
                } else {
                    tracing::debug!(issuer = %self.issuer, keys = keys.len(), trigger = trigger.as_str(), "JWKS fetched");
                }
                metrics
                    .jwks_keys
                    .with_label_values(&[self.issuer.as_str()])
                    .set(keys.len() as i64);
                if *state.keys != keys {
                    state.generation += 1;
                }
                state.keys = Arc::new(keys);
                state.fetched = Some(now);
                state.last_error = None;
            }
            Err(reason) => {
                tracing::warn!(issuer = %self.issuer, uri = %self.uri, trigger = trigger.as_str(), %reason,
                    kept_keys = state.keys.len(), "JWKS fetch failed; keeping the last good keys");
                state.last_error = Some(reason);
            }
        }
    }
}
