//! The workload's identity: generate a key in memory, Certify it at the control plane, verify
//! what comes back, publish it to new connections; renew at ~50 % of the lifetime (with jitter),
//! back off exponentially (with jitter) on failure while the still-valid certificate keeps serving.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pqmesh_mtls::tls::{anonymous_client_config, ALPN_H2};
use pqmesh_mtls::{Credentials, KeyAlgorithm, KeyExchangePolicy, SpiffeId, TrustBundle};
use pqmesh_proto::identity::v1::identity_client::IdentityClient;
use pqmesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};

use crate::config::TokenSource;
use crate::metrics::Metrics;
use crate::tls::MeshTls;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    #[error("control plane refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("bootstrap token: {0}")]
    Token(String),
    #[error("key generation: {0}")]
    Key(#[from] pqmesh_mtls::keys::KeyError),
    #[error("issued credentials rejected: {0}")]
    Rejected(String),
}

/// Something that turns a CSR into a signed chain (the control plane, or a test double).
pub trait Certifier: Send + Sync + 'static {
    fn certify(
        &self,
        csr_der: Vec<u8>,
    ) -> impl Future<Output = Result<CertifyResponse, IdentityError>> + Send;
}

/// Certify over gRPC with hybrid-PQ TLS, pinning the control plane's SPIFFE ID.
pub struct GrpcCertifier {
    pub addr: String,
    pub server_id: SpiffeId,
    pub kx: KeyExchangePolicy,
    pub token: TokenSource,
    /// Roots trusted for the control plane: the bootstrap file, then each Certify's bundle.
    /// Roots trusted for the control plane: the bootstrap file, then each Certify's bundle or the
    /// bundle pushed on the policy stream, whichever came last.
    pub bundle: std::sync::Mutex<TrustBundle>,
}

impl Certifier for GrpcCertifier {
    async fn certify(&self, csr_der: Vec<u8>) -> Result<CertifyResponse, IdentityError> {
        let token = self.token.read().map_err(IdentityError::Token)?;
        let bundle = self
            .bundle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tls = anonymous_client_config(&bundle, &self.server_id, self.kx, &[ALPN_H2])
            .map_err(|e| IdentityError::Unreachable(e.to_string()))?;
        let endpoint = tonic::transport::Endpoint::from_static("http://pqmesh-control-plane")
            .connect_timeout(CERTIFY_TIMEOUT)
            .timeout(CERTIFY_TIMEOUT);
        let channel = endpoint
            .connect_with_connector(pqmesh_mtls::grpc_tls::tls_connector(self.addr.clone(), tls))
            .await
            .map_err(|e| IdentityError::Unreachable(error_chain(&e)))?;
        let response = IdentityClient::new(channel)
            .certify(CertifyRequest { token, csr_der })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                    IdentityError::Unreachable(s.message().to_owned())
                }
                code => IdentityError::Refused {
                    code,
                    message: s.message().to_owned(),
                },
            })?
            .into_inner();
        if let Ok(next) = TrustBundle::new(
            response
                .trust_bundle_der
                .iter()
                .cloned()
                .map(CertificateDer::from)
                .collect(),
        ) {
            *self.bundle.lock().unwrap_or_else(|p| p.into_inner()) = next;
        }
        Ok(response)
    }
}

/// Shared: the sidecar's identity task certifies, its policy task updates the bundle.
impl<C: Certifier> Certifier for Arc<C> {
    fn certify(
        &self,
        csr_der: Vec<u8>,
    ) -> impl Future<Output = Result<CertifyResponse, IdentityError>> + Send {
        (**self).certify(csr_der)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// When to renew: between 40 % and 50 % of the lifetime (`jitter` in [0, 1) spreads a fleet
/// that started together).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let fraction = 0.5 - 0.1 * jitter.clamp(0.0, 1.0);
    not_before + lifetime.mul_f64(fraction)
}

/// Delay before retry `attempt` (1-based): exponential from 1 s, capped at 60 s, "equal jitter"
/// (between half and all of the step) so retries of many sidecars do not synchronise.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let step = INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
        .min(MAX_BACKOFF);
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Runs one Certify: fresh key, CSR, verify the result before anyone can use it.
pub async fn obtain<C: Certifier>(
    certifier: &C,
    alg: KeyAlgorithm,
    kx: KeyExchangePolicy,
    current_id: Option<&SpiffeId>,
) -> Result<Arc<MeshTls>, IdentityError> {
    let key = alg.generate()?;
    let csr = pqmesh_mtls::keys::workload_csr(&key)?;
    let response = certifier.certify(csr).await?;
    let ca_version = response.ca_version.clone();
    let chain: Vec<CertificateDer<'static>> = response
        .chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let bundle = TrustBundle::new(
        response
            .trust_bundle_der
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
    )
    .map_err(|e| IdentityError::Rejected(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::Rejected("empty chain".into()))?;
    let issued_id =
        pqmesh_mtls::x509::spiffe_id(leaf).map_err(|e| IdentityError::Rejected(e.to_string()))?;
    if let Some(current) = current_id {
        if *current != issued_id {
            return Err(IdentityError::Rejected(format!(
                "identity changed from {current} to {issued_id}; refusing to switch identities while running"
            )));
        }
    }
    let creds = Credentials::verified(chain, key.serialize_der(), bundle, &issued_id)
        .map_err(|e| IdentityError::Rejected(e.to_string()))?;
    MeshTls::new(creds, kx, ca_version).map_err(|e| IdentityError::Rejected(e.to_string()))
}

/// Keeps `tx` holding valid credentials for as long as the task runs. A message on `renew_now`
/// forces an immediate re-issue (trust-bundle change, operator request).
pub async fn maintain<C: Certifier>(
    certifier: C,
    alg: KeyAlgorithm,
    kx: KeyExchangePolicy,
    tx: watch::Sender<Option<Arc<MeshTls>>>,
    mut renew_now: mpsc::Receiver<()>,
    metrics: Arc<Metrics>,
) {
    let mut failures: u32 = 0;
    loop {
        let current = tx.borrow().clone();
        let current_id = current.as_ref().map(|t| t.creds.id.clone());
        match obtain(&certifier, alg, kx, current_id.as_ref()).await {
            Ok(tls) => {
                failures = 0;
                metrics.cert_renewals.with_label_values(&["ok"]).inc();
                metrics
                    .cert_expiry
                    .set(pqmesh_mtls::x509::unix_seconds(tls.creds.not_after) as f64);
                metrics
                    .trust_bundle_roots
                    .set(tls.creds.bundle.roots().len() as i64);
                tracing::info!(
                    spiffe_id = %tls.creds.id,
                    serial = %tls.creds.serial_hex,
                    ca_version = %tls.ca_version,
                    not_after = pqmesh_mtls::x509::unix_seconds(tls.creds.not_after),
                    "certificate issued"
                );
                let _ = tx.send(Some(tls));
            }
            Err(e) => {
                failures += 1;
                metrics.cert_renewals.with_label_values(&["error"]).inc();
                let still_valid = current
                    .as_ref()
                    .is_some_and(|t| t.creds.not_after > SystemTime::now());
                tracing::warn!(error = %e, attempt = failures, still_valid, "certify failed; backing off");
            }
        }
        let delay = match (&*tx.borrow(), failures) {
            (Some(tls), 0) => renew_at(tls.creds.not_before, tls.creds.not_after, rand::random())
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            _ => backoff(failures, rand::random()),
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            msg = renew_now.recv() => {
                if msg.is_none() {
                    // The sidecar is shutting down.
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
