//! Renewal timing and back-off, on tokio's paused clock, with real certificates from a
//! throw-away rcgen CA standing in for the control plane.

use super::*;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::time::Instant;

#[test]
fn renewal_is_between_40_and_50_percent_of_lifetime() {
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let na = nb + Duration::from_secs(3600);
    assert_eq!(renew_at(nb, na, 0.0), nb + Duration::from_secs(1800));
    assert_eq!(renew_at(nb, na, 1.0), nb + Duration::from_secs(1440));
    for j in [0.1, 0.5, 0.9] {
        let at = renew_at(nb, na, j);
        assert!(at > nb + Duration::from_secs(1440) && at < nb + Duration::from_secs(1800));
    }
    // An inverted validity never yields a time in the past of not_before.
    assert_eq!(renew_at(na, nb, 0.5), na);
}

#[test]
fn backoff_doubles_with_jitter_and_caps_at_a_minute() {
    assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
    assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
    assert_eq!(backoff(2, 1.0), Duration::from_secs(2));
    assert_eq!(backoff(5, 1.0), Duration::from_secs(16));
    assert_eq!(backoff(7, 1.0), MAX_BACKOFF);
    assert_eq!(backoff(u32::MAX, 1.0), MAX_BACKOFF);
    assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF / 2);
}

type Published = watch::Receiver<Option<Arc<MeshTls>>>;

/// Issues real leaves for `spiffe://test.local/ns/app/sa/web` until the plan says fail.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root: Vec<u8>,
    lifetime: Duration,
    /// true = succeed, false = fail; empty = succeed.
    plan: Mutex<VecDeque<bool>>,
    calls: tokio::sync::mpsc::UnboundedSender<Instant>,
    /// What the sidecar had published when each call was made.
    published: Arc<Mutex<Option<Published>>>,
    serial_at_call: Arc<Mutex<Vec<String>>>,
}

impl TestCa {
    fn new(
        lifetime: Duration,
        plan: &[bool],
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let root = params.self_signed(&key).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let ca = TestCa {
            issuer: rcgen::Issuer::new(params, key),
            root: root.der().to_vec(),
            lifetime,
            plan: Mutex::new(plan.iter().copied().collect()),
            calls: tx,
            published: Arc::new(Mutex::new(None)),
            serial_at_call: Arc::new(Mutex::new(Vec::new())),
        };
        (ca, rx)
    }
}

impl Certifier for TestCa {
    async fn certify(&self, csr_der: Vec<u8>) -> Result<CertifyResponse, IdentityError> {
        let _ = self.calls.send(Instant::now());
        if let Some(rx) = self.published.lock().unwrap().as_ref() {
            self.serial_at_call.lock().unwrap().push(serial(rx));
        }
        if !self.plan.lock().unwrap().pop_front().unwrap_or(true) {
            return Err(IdentityError::Unreachable("planned outage".into()));
        }
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.into()).unwrap();
        let now = SystemTime::now();
        csr.params.not_before = now.into();
        csr.params.not_after = (now + self.lifetime).into();
        csr.params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://test.local/ns/app/sa/web".try_into().unwrap(),
        )];
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        csr.params.serial_number =
            Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 8]>()));
        let leaf = csr.signed_by(&self.issuer).unwrap();
        Ok(CertifyResponse {
            chain_der: vec![leaf.der().to_vec()],
            trust_bundle_der: vec![self.root.clone()],
            not_after: 0,
            ca_version: String::new(),
        })
    }
}

fn spawn(ca: TestCa) -> (watch::Receiver<Option<Arc<MeshTls>>>, mpsc::Sender<()>) {
    let (tx, rx) = watch::channel(None);
    *ca.published.lock().unwrap() = Some(rx.clone());
    let (renew_tx, renew_rx) = mpsc::channel(1);
    tokio::spawn(maintain(
        ca,
        KeyAlgorithm::EcdsaP256,
        KeyExchangePolicy::HybridOnly,
        tx,
        renew_rx,
        Arc::new(Metrics::new()),
    ));
    (rx, renew_tx)
}

fn serial(rx: &watch::Receiver<Option<Arc<MeshTls>>>) -> String {
    rx.borrow()
        .as_ref()
        .map(|t| t.creds.serial_hex.clone())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_lifetime_with_jitter() {
    let lifetime = Duration::from_secs(3600);
    let (ca, mut calls) = TestCa::new(lifetime, &[]);
    let (rx, _renew) = spawn(ca);
    let mut last = calls.recv().await.unwrap();
    for _ in 0..4 {
        let next = calls.recv().await.unwrap();
        let gap = next - last;
        // 40..50 % of the lifetime; rcgen truncates notBefore to whole seconds, hence the slack.
        assert!(
            gap >= Duration::from_secs(1440 - 2) && gap <= Duration::from_secs(1800),
            "renewed after {gap:?}"
        );
        last = next;
    }
    assert!(rx.borrow().is_some());
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_and_keeps_the_valid_certificate() {
    let lifetime = Duration::from_secs(3600);
    // First issue works, then six failures in a row, then recovery.
    let (ca, mut calls) = TestCa::new(
        lifetime,
        &[true, false, false, false, false, false, false, true],
    );
    let serial_at_call = ca.serial_at_call.clone();
    let (mut rx, _renew) = spawn(ca);
    let first = calls.recv().await.unwrap();
    rx.wait_for(|t| t.is_some()).await.unwrap();
    let original = serial(&rx);
    let mut last = calls.recv().await.unwrap();
    assert!(
        last - first >= Duration::from_secs(1438),
        "first renewal only after ~half the lifetime"
    );
    for attempt in 1..=6u32 {
        let next = calls.recv().await.unwrap();
        let gap = next - last;
        let step = Duration::from_secs(1 << (attempt - 1)).min(MAX_BACKOFF);
        assert!(
            gap >= step / 2 && gap <= step,
            "retry {attempt} after {gap:?}, step {step:?}"
        );
        last = next;
    }
    calls.recv().await.unwrap();
    rx.wait_for(|t| t.as_ref().is_some_and(|t| t.creds.serial_hex != original))
        .await
        .unwrap();
    let seen = serial_at_call.lock().unwrap().clone();
    // Calls 2..=8 (the failing ones and the recovery) all happened while the first certificate
    // was still the one published.
    assert!(seen.len() >= 8, "{seen:?}");
    assert!(
        seen[1..8].iter().all(|s| *s == original),
        "{seen:?} vs {original}"
    );
    // And the call after the recovery saw the new certificate.
    if let Some(after) = seen.get(8) {
        assert_ne!(*after, original);
    }
}

#[tokio::test(start_paused = true)]
async fn renew_now_reissues_immediately() {
    let (ca, mut calls) = TestCa::new(Duration::from_secs(3600), &[]);
    let (mut rx, renew) = spawn(ca);
    let first = calls.recv().await.unwrap();
    rx.wait_for(|t| t.is_some()).await.unwrap();
    let original = serial(&rx);
    renew.send(()).await.unwrap();
    let second = calls.recv().await.unwrap();
    assert!(second - first < Duration::from_secs(1), "re-issued at once");
    rx.changed().await.unwrap();
    assert_ne!(serial(&rx), original);
}

#[tokio::test(start_paused = true)]
async fn refuses_a_chain_that_does_not_verify() {
    // A certifier whose bundle is a different root: the leaf must be rejected before use.
    struct WrongBundle(TestCa, Vec<u8>);
    impl Certifier for WrongBundle {
        async fn certify(&self, csr: Vec<u8>) -> Result<CertifyResponse, IdentityError> {
            let mut r = self.0.certify(csr).await?;
            r.trust_bundle_der = vec![self.1.clone()];
            Ok(r)
        }
    }
    let (ca, _calls) = TestCa::new(Duration::from_secs(3600), &[]);
    let (other, _c) = TestCa::new(Duration::from_secs(3600), &[]);
    let wrong = WrongBundle(ca, other.root.clone());
    let err = obtain(
        &wrong,
        KeyAlgorithm::EcdsaP256,
        KeyExchangePolicy::HybridOnly,
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("does not verify"), "{err}");
}
