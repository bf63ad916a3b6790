//! Whether the sidecar can serve, which is what `/ready` (and so the pod's endpoints) follows: a
//! certificate that has not expired, the first policy snapshot applied, and in transparent mode
//! discovery connected at least once. A later control-plane outage does not change it: the
//! sidecar serves with what it holds (see `control_plane`). It turns false when the certificate
//! expires — then no peer would accept it — and true again once a new one arrives.
//!
//! A task recomputes the state whenever an input changes and wakes at the certificate's expiry,
//! on tokio's clock (so the state machine is tested with a paused clock).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(Waiting),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    FirstCertificate,
    /// The certificate expired and no renewal succeeded since (unix seconds of `not_after`).
    CertificateExpired(u64),
    FirstDiscovery,
    FirstPolicy,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::FirstCertificate => write!(f, "waiting for the first certificate"),
            Waiting::CertificateExpired(at) => write!(
                f,
                "the certificate expired (not_after {at}) and could not be renewed"
            ),
            Waiting::FirstDiscovery => write!(f, "waiting for discovery"),
            Waiting::FirstPolicy => write!(f, "waiting for the first policy snapshot"),
        }
    }
}

/// What carries a certificate's expiry (the sidecar's TLS state; a bare time in tests).
pub trait Expiry {
    fn not_after(&self) -> Option<SystemTime>;
}

impl Expiry for Option<Arc<crate::tls::MeshTls>> {
    fn not_after(&self) -> Option<SystemTime> {
        self.as_ref().map(|t| t.creds.not_after)
    }
}

impl Expiry for Option<SystemTime> {
    fn not_after(&self) -> Option<SystemTime> {
        *self
    }
}

/// The inputs, each a watch the sidecar already keeps.
pub struct Inputs<C, P> {
    pub certificate: watch::Receiver<C>,
    /// The policy in force (`None` until the first snapshot was applied).
    pub policy: watch::Receiver<Option<P>>,
    /// Transparent mode: true once discovery has connected (never reset).
    pub discovery: Option<watch::Receiver<bool>>,
}

/// Starts tracking; the receiver always holds the current state.
pub fn spawn<C, P>(
    inputs: Inputs<C, P>,
    metrics: Arc<Metrics>,
) -> (watch::Receiver<Readiness>, tokio::task::JoinHandle<()>)
where
    C: Expiry + Send + Sync + 'static,
    P: Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(Readiness::NotReady(Waiting::FirstCertificate));
    (rx, tokio::spawn(track(inputs, tx, metrics)))
}

async fn track<C, P>(mut inputs: Inputs<C, P>, tx: watch::Sender<Readiness>, metrics: Arc<Metrics>)
where
    C: Expiry,
{
    // The expiry on tokio's clock, computed when a certificate arrives.
    let mut expiry: Option<(SystemTime, Instant)> = None;
    let mut certificate_changed = true;
    loop {
        if certificate_changed {
            expiry = inputs.certificate.borrow_and_update().not_after().map(|t| {
                let left = t
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                (t, Instant::now() + left)
            });
        }
        let state = evaluate(&inputs, expiry);
        metrics.ready.set(i64::from(state == Readiness::Ready));
        let previous = tx.send_replace(state.clone());
        if previous != state {
            match &state {
                Readiness::Ready => tracing::info!("ready"),
                Readiness::NotReady(w @ Waiting::CertificateExpired(_)) => {
                    tracing::error!("not ready: {w}")
                }
                Readiness::NotReady(w) => tracing::info!("not ready: {w}"),
            }
        }
        let wake = match expiry {
            Some((_, at)) if at > Instant::now() => at,
            // No certificate, or already expired: only an input change can help.
            _ => Instant::now() + Duration::from_secs(86_400 * 365),
        };
        let discovery = async {
            match inputs.discovery.as_mut() {
                Some(d) => d.changed().await,
                None => std::future::pending().await,
            }
        };
        certificate_changed = false;
        tokio::select! {
            changed = inputs.certificate.changed() => {
                if changed.is_err() { return; }
                certificate_changed = true;
            }
            changed = inputs.policy.changed() => if changed.is_err() { return; },
            changed = discovery => if changed.is_err() { return; },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn evaluate<C: Expiry, P>(
    inputs: &Inputs<C, P>,
    expiry: Option<(SystemTime, Instant)>,
) -> Readiness {
    let Some((not_after, at)) = expiry else {
        return Readiness::NotReady(Waiting::FirstCertificate);
    };
    // Either clock: tokio's for the timer, the wall clock in case it was stepped forward.
    if Instant::now() >= at || SystemTime::now() >= not_after {
        return Readiness::NotReady(Waiting::CertificateExpired(
            pqmesh_mtls::x509::unix_seconds(not_after),
        ));
    }
    if inputs.discovery.as_ref().is_some_and(|d| !*d.borrow()) {
        return Readiness::NotReady(Waiting::FirstDiscovery);
    }
    if inputs.policy.borrow().is_none() {
        return Readiness::NotReady(Waiting::FirstPolicy);
    }
    Readiness::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        certificate: watch::Sender<Option<SystemTime>>,
        policy: watch::Sender<Option<()>>,
        discovery: watch::Sender<bool>,
        ready: watch::Receiver<Readiness>,
        metrics: Arc<Metrics>,
    }

    fn fixture(transparent: bool) -> Fixture {
        let (certificate, c) = watch::channel(None);
        let (policy, p) = watch::channel(None);
        let (discovery, d) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let (ready, _task) = spawn(
            Inputs {
                certificate: c,
                policy: p,
                discovery: transparent.then_some(d),
            },
            metrics.clone(),
        );
        Fixture {
            certificate,
            policy,
            discovery,
            ready,
            metrics,
        }
    }

    /// Lets the tracking task run, then reads the state.
    async fn state(f: &Fixture) -> Readiness {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        f.ready.borrow().clone()
    }

    fn not_ready(w: Waiting) -> Readiness {
        Readiness::NotReady(w)
    }

    #[tokio::test(start_paused = true)]
    async fn ready_needs_certificate_discovery_once_and_policy() {
        let f = fixture(true);
        assert_eq!(state(&f).await, not_ready(Waiting::FirstCertificate));
        f.certificate
            .send_replace(Some(SystemTime::now() + Duration::from_secs(3600)));
        assert_eq!(state(&f).await, not_ready(Waiting::FirstDiscovery));
        f.discovery.send_replace(true);
        assert_eq!(state(&f).await, not_ready(Waiting::FirstPolicy));
        assert_eq!(f.metrics.ready.get(), 0);
        f.policy.send_replace(Some(()));
        assert_eq!(state(&f).await, Readiness::Ready);
        assert_eq!(f.metrics.ready.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn explicit_mode_does_not_wait_for_discovery() {
        let f = fixture(false);
        f.certificate
            .send_replace(Some(SystemTime::now() + Duration::from_secs(3600)));
        f.policy.send_replace(Some(()));
        assert_eq!(state(&f).await, Readiness::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_control_plane_outage_keeps_it_ready_until_the_certificate_expires() {
        let f = fixture(true);
        f.certificate
            .send_replace(Some(SystemTime::now() + Duration::from_secs(600)));
        f.discovery.send_replace(true);
        f.policy.send_replace(Some(()));
        assert_eq!(state(&f).await, Readiness::Ready);
        // The outage: nothing changes for almost the certificate's whole remaining lifetime
        // (renewals fail; the policy and discovery answers stay as they were).
        for _ in 0..59 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(state(&f).await, Readiness::Ready);
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(state(&f).await, Readiness::Ready);
        // The certificate expires: no peer accepts it any more.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            state(&f).await,
            Readiness::NotReady(Waiting::CertificateExpired(_))
        ));
        assert_eq!(f.metrics.ready.get(), 0);
        // The control plane returns and a renewal succeeds: ready again.
        f.certificate
            .send_replace(Some(SystemTime::now() + Duration::from_secs(3600)));
        assert_eq!(state(&f).await, Readiness::Ready);
        assert_eq!(f.metrics.ready.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_moves_the_expiry() {
        let f = fixture(false);
        f.certificate
            .send_replace(Some(SystemTime::now() + Duration::from_secs(60)));
        f.policy.send_replace(Some(()));
        assert_eq!(state(&f).await, Readiness::Ready);
        tokio::time::advance(Duration::from_secs(30)).await;
        // Renewed at half the lifetime (the wall clock stands still under the paused clock).
        f.certificate
            .send_replace(Some(SystemTime::now() + Duration::from_secs(120)));
        assert_eq!(state(&f).await, Readiness::Ready);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(state(&f).await, Readiness::Ready);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            state(&f).await,
            Readiness::NotReady(Waiting::CertificateExpired(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_already_expired_certificate_is_not_ready() {
        let f = fixture(false);
        f.policy.send_replace(Some(()));
        f.certificate
            .send_replace(Some(SystemTime::now() - Duration::from_secs(1)));
        assert!(matches!(
            state(&f).await,
            Readiness::NotReady(Waiting::CertificateExpired(_))
        ));
    }
}
