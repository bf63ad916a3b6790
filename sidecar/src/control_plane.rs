//! Whether the sidecar's streams to the control plane (policy; discovery in transparent mode)
//! are connected, for metrics and logs. An outage is an operational event, not a readiness one:
//! the sidecar keeps serving with its last good policy, cached discovery answers and still-valid
//! certificate. So an outage logs one WARN when it starts and one INFO (with its length) when
//! every stream is back; each failed attempt in between is DEBUG and counted in metrics.
//!
//! Retries ([`Retry`]): a stream that was open and ended starts again from a short jittered
//! delay, and within the first minute of an outage retries stay at most [`FAST_RETRY_CAP`]
//! apart, so a restarted control plane (seconds) is found again within seconds, not after an
//! exponential backoff has grown to half a minute. Longer outages back off to
//! [`SLOW_RETRY_CAP`]. Jitter (half to all of each step) keeps a fleet from reconnecting at once.

use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Policy,
    Discovery,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Policy => "policy",
            Stream::Discovery => "discovery",
        }
    }
}

/// Retry steps stay at most this long during [`FAST_RETRY_WINDOW`] of an outage.
pub const FAST_RETRY_CAP: Duration = Duration::from_secs(4);
pub const FAST_RETRY_WINDOW: Duration = Duration::from_secs(60);
/// Retry steps after the first minute of an outage.
pub const SLOW_RETRY_CAP: Duration = Duration::from_secs(30);
const FIRST_RETRY_STEP: Duration = Duration::from_secs(1);

/// Delay before retry `attempt` (1-based, counted since the stream was last open) when the
/// outage has lasted `outage`: steps double from 1 s, capped as the module says, and each is
/// scaled to between half and all of itself by `jitter` (0..=1).
pub fn retry_delay(attempt: u32, outage: Duration, jitter: f64) -> Duration {
    let cap = if outage < FAST_RETRY_WINDOW {
        FAST_RETRY_CAP
    } else {
        SLOW_RETRY_CAP
    };
    let step = FIRST_RETRY_STEP
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
        .min(cap);
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// One stream task's retry state.
#[derive(Default)]
pub struct Retry {
    attempts: u32,
    since: Option<Instant>,
}

impl Retry {
    /// The stream ended; `was_open`: it had connected (cleanly closed or failed later).
    /// Returns how long to wait before the next attempt.
    pub fn after(&mut self, was_open: bool, jitter: f64) -> Duration {
        if was_open {
            *self = Retry::default();
        }
        self.attempts = self.attempts.saturating_add(1);
        let since = *self.since.get_or_insert_with(Instant::now);
        retry_delay(self.attempts, since.elapsed(), jitter)
    }
}

/// What a state change meant (returned for tests; logged either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every stream connected for the first time.
    Connected,
    /// The first stream lost (or the first attempt failed) while none was already down.
    OutageStarted,
    /// Every stream connected again.
    OutageEnded {
        after: Duration,
        failed_attempts: u64,
    },
    /// Nothing worth more than a DEBUG line.
    Quiet,
}

struct Outage {
    since: Instant,
    failed_attempts: u64,
}

struct State {
    streams: Vec<(Stream, bool)>,
    ever_connected: bool,
    outage: Option<Outage>,
}

/// Shared by the stream tasks (cheap to clone).
#[derive(Clone)]
pub struct Link {
    state: Arc<Mutex<State>>,
    metrics: Arc<Metrics>,
}

impl Link {
    pub fn new(streams: &[Stream], metrics: Arc<Metrics>) -> Self {
        metrics.control_plane_connected.set(0);
        Link {
            state: Arc::new(Mutex::new(State {
                streams: streams.iter().map(|s| (*s, false)).collect(),
                ever_connected: false,
                outage: None,
            })),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while every stream is connected.
    pub fn is_connected(&self) -> bool {
        self.lock().streams.iter().all(|(_, up)| *up)
    }

    /// Whether `stream` is open now.
    pub fn is_open(&self, stream: Stream) -> bool {
        self.lock()
            .streams
            .iter()
            .any(|(s, up)| *s == stream && *up)
    }

    /// `stream` is open (its Watch call was answered).
    pub fn connected(&self, stream: Stream) -> Event {
        let mut state = self.lock();
        set(&mut state, stream, true);
        if !state.streams.iter().all(|(_, up)| *up) {
            tracing::debug!(stream = stream.name(), "control-plane stream connected");
            return Event::Quiet;
        }
        self.metrics.control_plane_connected.set(1);
        if let Some(outage) = state.outage.take() {
            let after = outage.since.elapsed();
            tracing::info!(
                outage_s = format!("{:.1}", after.as_secs_f64()),
                failed_attempts = outage.failed_attempts,
                "control plane reachable again; policy and discovery streams resumed"
            );
            state.ever_connected = true;
            return Event::OutageEnded {
                after,
                failed_attempts: outage.failed_attempts,
            };
        }
        if !state.ever_connected {
            state.ever_connected = true;
            tracing::info!("connected to the control plane (policy and discovery streams)");
            return Event::Connected;
        }
        Event::Quiet
    }

    /// `stream` ended (it was open) or an attempt to open it failed, with `error`.
    pub fn down(&self, stream: Stream, error: &str) -> Event {
        let mut state = self.lock();
        let was_up = set(&mut state, stream, false);
        self.metrics.control_plane_connected.set(0);
        let counter = if was_up {
            &self.metrics.control_plane_disconnects
        } else {
            &self.metrics.control_plane_connect_failures
        };
        counter.with_label_values(&[stream.name()]).inc();
        match &mut state.outage {
            Some(outage) => {
                outage.failed_attempts += u64::from(!was_up);
                tracing::debug!(
                    stream = stream.name(),
                    error,
                    failed_attempts = outage.failed_attempts,
                    "control plane still unreachable; retrying"
                );
                Event::Quiet
            }
            None => {
                state.outage = Some(Outage {
                    since: Instant::now(),
                    failed_attempts: u64::from(!was_up),
                });
                tracing::warn!(
                    stream = stream.name(),
                    error,
                    "control plane unreachable: serving with the last good policy, cached \
                     discovery answers and the current certificate; retrying in the background \
                     (pqmesh_control_plane_connected is 0 until it is back)"
                );
                Event::OutageStarted
            }
        }
    }
}

/// Sets `stream`'s flag, returning the previous value.
fn set(state: &mut State, stream: Stream, up: bool) -> bool {
    match state.streams.iter_mut().find(|(s, _)| *s == stream) {
        Some((_, flag)) => std::mem::replace(flag, up),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(m: &Metrics, name: &str, stream: &str) -> u64 {
        match name {
            "disconnects" => m
                .control_plane_disconnects
                .with_label_values(&[stream])
                .get(),
            _ => m
                .control_plane_connect_failures
                .with_label_values(&[stream])
                .get(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_one_start_and_one_end_however_many_retries() {
        let metrics = Arc::new(Metrics::new());
        let link = Link::new(&[Stream::Policy, Stream::Discovery], metrics.clone());
        assert_eq!(metrics.control_plane_connected.get(), 0);
        assert_eq!(link.connected(Stream::Policy), Event::Quiet);
        assert_eq!(link.connected(Stream::Discovery), Event::Connected);
        assert_eq!(metrics.control_plane_connected.get(), 1);
        assert!(link.is_connected());

        // Both streams drop; every retry fails for 60 s.
        assert_eq!(
            link.down(Stream::Policy, "transport error"),
            Event::OutageStarted
        );
        assert_eq!(
            link.down(Stream::Discovery, "transport error"),
            Event::Quiet
        );
        assert_eq!(metrics.control_plane_connected.get(), 0);
        for _ in 0..6 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(link.down(Stream::Policy, "refused"), Event::Quiet);
            assert_eq!(link.down(Stream::Discovery, "refused"), Event::Quiet);
        }
        assert_eq!(metric(&metrics, "disconnects", "policy"), 1);
        assert_eq!(metric(&metrics, "disconnects", "discovery"), 1);
        assert_eq!(metric(&metrics, "failures", "policy"), 6);
        assert_eq!(metric(&metrics, "failures", "discovery"), 6);

        // One stream back is not the end of the outage; both are.
        assert_eq!(link.connected(Stream::Discovery), Event::Quiet);
        assert_eq!(metrics.control_plane_connected.get(), 0);
        assert!(!link.is_connected());
        assert_eq!(
            link.connected(Stream::Policy),
            Event::OutageEnded {
                after: Duration::from_secs(60),
                failed_attempts: 12
            }
        );
        assert_eq!(metrics.control_plane_connected.get(), 1);

        // A later drop is a new outage.
        assert_eq!(link.down(Stream::Discovery, "reset"), Event::OutageStarted);
        assert_eq!(metric(&metrics, "disconnects", "discovery"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_before_the_first_connection_is_an_outage_too() {
        let metrics = Arc::new(Metrics::new());
        let link = Link::new(&[Stream::Policy], metrics.clone());
        assert_eq!(link.down(Stream::Policy, "refused"), Event::OutageStarted);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(link.down(Stream::Policy, "refused"), Event::Quiet);
        assert_eq!(metric(&metrics, "disconnects", "policy"), 0);
        assert_eq!(metric(&metrics, "failures", "policy"), 2);
        assert_eq!(
            link.connected(Stream::Policy),
            Event::OutageEnded {
                after: Duration::from_secs(3),
                failed_attempts: 2
            }
        );
    }

    #[test]
    fn retries_stay_seconds_apart_in_the_first_minute_then_back_off() {
        let s = Duration::from_secs;
        let full: Vec<_> = (1..=6).map(|a| retry_delay(a, s(5), 1.0)).collect();
        assert_eq!(full, [s(1), s(2), s(4), s(4), s(4), s(4)]);
        assert_eq!(retry_delay(1, s(0), 0.0), Duration::from_millis(500));
        assert_eq!(retry_delay(u32::MAX, s(59), 0.0), s(2));
        assert_eq!(retry_delay(4, s(60), 1.0), s(8));
        assert_eq!(retry_delay(u32::MAX, s(3600), 1.0), SLOW_RETRY_CAP);
    }

    /// Review 8 F7: a stream that failed after it had been open kept counting failures, so each
    /// control-plane restart started from a longer backoff (25-30 s to reconnect).
    #[tokio::test(start_paused = true)]
    async fn a_stream_that_was_open_starts_again_from_the_first_step() {
        let mut retry = Retry::default();
        for _ in 0..10 {
            retry.after(false, 1.0);
        }
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(retry.after(false, 1.0), SLOW_RETRY_CAP);
        assert_eq!(retry.after(true, 1.0), Duration::from_secs(1), "was open");
        assert_eq!(retry.after(false, 1.0), Duration::from_secs(2));
    }
}
