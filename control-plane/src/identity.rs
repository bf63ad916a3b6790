//! `pqmesh.identity.v1.Identity`: authenticate the token, verify the CSR, issue the leaf.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use pqmesh_mtls::grpc_tls::PeerInfo;
use pqmesh_mtls::SpiffeId;
use pqmesh_proto::identity::v1::identity_server::Identity;
use pqmesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};

use crate::ca::CertificateAuthority;
use crate::csr::{verify_csr, CsrError};
use crate::metrics::Metrics;
use crate::token_review::TokenReviewer;
use crate::tokens::{AuthError, BootstrapTokens};

/// How a workload proves who it is.
#[derive(Clone)]
pub enum Authenticator {
    /// Local mode: a bootstrap token from `DIR/bootstrap-tokens.yaml`.
    Bootstrap(Arc<BootstrapTokens>),
    /// Kubernetes: a projected service-account token, checked by TokenReview.
    TokenReview(Arc<TokenReviewer>),
}

impl Authenticator {
    pub async fn authenticate(&self, token: &str, now: SystemTime) -> Result<SpiffeId, AuthError> {
        match self {
            Authenticator::Bootstrap(tokens) => tokens.authenticate(token, now),
            Authenticator::TokenReview(reviewer) => reviewer.authenticate(token, now).await,
        }
    }
}

pub struct IdentityService {
    pub ca: Arc<CertificateAuthority>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
}

/// A refusal with a bounded metric reason and the status the caller sees.
struct Refusal {
    reason: &'static str,
    status: Status,
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let reason = match e {
            AuthError::Missing => "token_missing",
            AuthError::Unknown => "token_unknown",
            AuthError::Expired { .. } => "token_expired",
            AuthError::Unavailable(_) => "token_review_unavailable",
            AuthError::Rejected(_) => "token_rejected",
        };
        let status = match e {
            AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        };
        Refusal { reason, status }
    }
}

impl From<CsrError> for Refusal {
    fn from(e: CsrError) -> Self {
        let reason = match e {
            CsrError::Empty | CsrError::TooLarge(_) | CsrError::Malformed(_) => "csr_malformed",
            CsrError::RequestsSans(_) => "csr_requests_sans",
            CsrError::UnsupportedKey(_) | CsrError::SignatureAlgorithmMismatch { .. } => {
                "csr_unsupported_key"
            }
            CsrError::BadSignature => "csr_bad_signature",
        };
        Refusal {
            reason,
            status: Status::invalid_argument(e.to_string()),
        }
    }
}

impl IdentityService {
    async fn certify_inner(
        &self,
        req: &CertifyRequest,
    ) -> Result<(CertifyResponse, String, &'static str), Refusal> {
        // Authenticate first: an anonymous caller learns nothing about CSR parsing.
        let id = self
            .auth
            .authenticate(&req.token, SystemTime::now())
            .await?;
        let csr = verify_csr(&req.csr_der)?;
        let leaf = self.ca.issue(&csr, &id).map_err(|e| {
            tracing::error!(error = %e, %id, "signing failed");
            Refusal {
                reason: "internal",
                status: Status::internal("certificate signing failed"),
            }
        })?;
        let response = CertifyResponse {
            chain_der: leaf.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: self
                .ca
                .bundle()
                .roots()
                .iter()
                .map(|c| c.to_vec())
                .collect(),
            not_after: pqmesh_mtls::x509::unix_seconds(leaf.not_after) as i64,
        };
        Ok((response, id.to_string(), csr.alg.name()))
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let started = Instant::now();
        let remote = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.remote.to_string())
            .unwrap_or_default();
        let result = self.certify_inner(request.get_ref()).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok((response, id, alg)) => {
                self.metrics
                    .certificates_issued
                    .with_label_values(&[alg])
                    .inc();
                self.metrics
                    .certify_duration
                    .with_label_values(&["issued"])
                    .observe(elapsed);
                tracing::info!(%remote, spiffe_id = %id, key_alg = alg, not_after = response.not_after, "certificate issued");
                Ok(Response::new(response))
            }
            Err(refusal) => {
                self.metrics
                    .certificates_refused
                    .with_label_values(&[refusal.reason])
                    .inc();
                self.metrics
                    .certify_duration
                    .with_label_values(&["refused"])
                    .observe(elapsed);
                tracing::warn!(%remote, reason = refusal.reason, detail = %refusal.status.message(), "certify refused");
                Err(refusal.status)
            }
        }
    }
}
