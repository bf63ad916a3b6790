//! Certificate verification for mesh peers: chain to the trust bundle (any of its roots), then
//! the peer's SPIFFE ID. WebPKI name checks do not apply (mesh leaves carry only a URI SAN).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::spiffe::SpiffeId;
use crate::x509;

/// Why a peer's certificate is unacceptable after its chain verified.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer certificate has no usable SPIFFE ID: {0}")]
    NoIdentity(#[from] x509::CertError),
    #[error("peer identity {actual} is not the expected {expected}")]
    WrongIdentity {
        expected: Box<SpiffeId>,
        actual: Box<SpiffeId>,
    },
}

/// Verifies a server (the destination sidecar or the control plane) by chain and exact SPIFFE ID.
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: SpiffeId,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            roots,
            expected,
            provider,
        }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected.to_string())
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_identity(end_entity, &self.expected).map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The configs are TLS 1.3 only; a TLS 1.2 signature here means something is wrong.
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks that a verified leaf names exactly `expected`.
pub fn check_identity(leaf: &[u8], expected: &SpiffeId) -> Result<(), PeerIdentityError> {
    let actual = x509::spiffe_id(leaf)?;
    if &actual != expected {
        return Err(PeerIdentityError::WrongIdentity {
            expected: Box::new(expected.clone()),
            actual: Box::new(actual),
        });
    }
    Ok(())
}

/// Verifies `chain` (leaf first) against `roots` as a TLS peer would, both as server and client
/// (mesh leaves carry both EKUs), at `now`.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    roots: &RootCertStore,
    provider: &CryptoProvider,
    now: UnixTime,
) -> Result<(), Error> {
    let (leaf, intermediates) = chain.split_first().ok_or(Error::NoCertificatesPresented)?;
    let cert = ParsedCertificate::try_from(leaf)?;
    verify_server_cert_signed_by_trust_anchor(
        &cert,
        roots,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )
}

/// The TLS 1.3 signature scheme a leaf's key implies (exact for the key types pqmesh issues).
pub fn signature_scheme_name(leaf: &[u8]) -> &'static str {
    use der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(leaf) else {
        return "unknown";
    };
    let spki = &cert.tbs_certificate.subject_public_key_info;
    match spki.algorithm.oid.to_string().as_str() {
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                .map(|o| o.to_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ecdsa_secp256r1_sha256",
                Some("1.3.132.0.34") => "ecdsa_secp384r1_sha384",
                _ => "ecdsa_other",
            }
        }
        "2.16.840.1.101.3.4.3.17" => "ML-DSA-44",
        "2.16.840.1.101.3.4.3.18" => "ML-DSA-65",
        "2.16.840.1.101.3.4.3.19" => "ML-DSA-87",
        "1.3.101.112" => "ed25519",
        _ => "other",
    }
}
