//! Whether the sidecar's streams to the control plane (policy; discovery in transparent mode)
//! are connected, for metrics and logs. An outage is an operational event, not a readiness one:
//! the sidecar keeps serving with its last good policy, cached discovery answers and still-valid
//! certificate. So an outage logs one WARN when it starts and one INFO (with its length) when
//! every stream is back; each failed attempt in between is DEBUG and counted in metrics.

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
}
