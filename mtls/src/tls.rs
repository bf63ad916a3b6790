//! TLS configs for mesh connections and the control plane, built from workload credentials.
//! TLS 1.3 only; key exchange per [`KeyExchangePolicy`]; both sides verify chain and SPIFFE ID.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::provider::{crypto_provider, KeyExchangePolicy};
use crate::spiffe::SpiffeId;
use crate::verify::{check_identity, verify_chain, SpiffeServerVerifier};
use crate::x509;

/// ALPN spoken between sidecars.
pub const ALPN_MESH: &[u8] = b"pqmesh/1";
/// ALPN spoken to the control plane (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust bundle is empty")]
    EmptyBundle,
    #[error("trust bundle root rejected: {0}")]
    BadRoot(rustls::Error),
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("issued chain does not verify against the trust bundle: {0}")]
    ChainInvalid(rustls::Error),
    #[error("issued certificate does not carry the expected identity: {0}")]
    Identity(#[from] crate::verify::PeerIdentityError),
    #[error("private key does not match the certificate: {0}")]
    KeyMismatch(rustls::Error),
    #[error("building the TLS config failed: {0}")]
    Build(rustls::Error),
    #[error("building the client verifier failed: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
    #[error("certificate is unreadable: {0}")]
    Cert(#[from] x509::CertError),
}

/// A trust bundle: the list of roots a mesh trusts (several during a root rotation).
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots_der: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
}

impl TrustBundle {
    pub fn new(roots_der: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if roots_der.is_empty() {
            return Err(TlsError::EmptyBundle);
        }
        let mut store = RootCertStore::empty();
        for root in &roots_der {
            store.add(root.clone()).map_err(TlsError::BadRoot)?;
        }
        Ok(Self {
            roots_der,
            store: Arc::new(store),
        })
    }

    pub fn from_pem(text: &str) -> Result<Self, String> {
        let certs = x509::certs_from_pem(text)?;
        Self::new(certs).map_err(|e| e.to_string())
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots_der
    }

    pub fn store(&self) -> Arc<RootCertStore> {
        self.store.clone()
    }
}

/// A workload's verified credentials: chain (leaf first), its in-memory private key, identity.
pub struct Credentials {
    pub chain: Vec<CertificateDer<'static>>,
    key_pkcs8: PrivatePkcs8KeyDer<'static>,
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial_hex: String,
    pub bundle: TrustBundle,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id.to_string())
            .field("serial", &self.serial_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Checks everything before the credentials may be used: the chain verifies against the
    /// bundle now, the leaf names `expected`, and the key matches the leaf.
    pub fn verified(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
        bundle: TrustBundle,
        expected: &SpiffeId,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::EmptyChain)?.clone();
        let provider = crypto_provider(KeyExchangePolicy::HybridOnly);
        verify_chain(&chain, &bundle.store, &provider, UnixTime::now())
            .map_err(TlsError::ChainInvalid)?;
        check_identity(&leaf, expected)?;
        let key_pkcs8 = PrivatePkcs8KeyDer::from(key_pkcs8);
        let certified = rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            PrivateKeyDer::Pkcs8(key_pkcs8.clone_key()),
            &provider,
        )
        .map_err(TlsError::KeyMismatch)?;
        certified.keys_match().map_err(TlsError::KeyMismatch)?;
        let summary = x509::summary(&leaf)?;
        Ok(Self {
            chain,
            key_pkcs8,
            id: expected.clone(),
            not_before: summary.not_before,
            not_after: summary.not_after,
            serial_hex: summary.serial_hex,
            bundle,
        })
    }

    /// The private key, for tests that build their own TLS clients from mesh credentials.
    #[doc(hidden)]
    pub fn key_pkcs8_for_tests(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key_pkcs8
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_pkcs8.clone_key())
    }

    /// Server side of a mesh or control-plane listener. `client_auth_optional` lets clients
    /// without a certificate in (the control plane's Certify, before a workload has a cert).
    pub fn server_config(
        &self,
        kx: KeyExchangePolicy,
        alpn: &[&[u8]],
        client_auth_optional: bool,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = crypto_provider(kx);
        let builder =
            WebPkiClientVerifier::builder_with_provider(self.bundle.store(), provider.clone());
        let builder = if client_auth_optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let verifier = builder.build().map_err(TlsError::Verifier)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Build)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key())
            .map_err(TlsError::Build)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Client side towards a peer that must present `peer`.
    pub fn client_config(
        &self,
        peer: &SpiffeId,
        kx: KeyExchangePolicy,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = crypto_provider(kx);
        let verifier =
            SpiffeServerVerifier::new(self.bundle.store(), peer.clone(), provider.clone());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Build)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key())
            .map_err(TlsError::Build)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Client config for a workload that has no certificate yet (its first Certify): server-auth only.
pub fn anonymous_client_config(
    bundle: &TrustBundle,
    server: &SpiffeId,
    kx: KeyExchangePolicy,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider(kx);
    let verifier = SpiffeServerVerifier::new(bundle.store(), server.clone(), provider.clone());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Build)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The negotiated properties of an established mesh connection, for logs and metrics.
#[derive(Clone, Debug)]
pub struct HandshakeInfo {
    pub group: String,
    pub peer_scheme: &'static str,
    pub peer_id: Option<SpiffeId>,
    /// The peer leaf's serial number, upper-case hex (revocation checks).
    pub peer_serial: Option<String>,
    pub alpn: Option<Vec<u8>>,
}

impl HandshakeInfo {
    pub fn of(conn: &rustls::CommonState) -> Self {
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        Self {
            group: conn
                .negotiated_key_exchange_group()
                .map(|g| crate::provider::group_name(g.name()))
                .unwrap_or_else(|| "none".to_owned()),
            peer_scheme: leaf
                .map(|c| crate::verify::signature_scheme_name(c))
                .unwrap_or("none"),
            peer_id: leaf.and_then(|c| x509::spiffe_id(c).ok()),
            peer_serial: leaf
                .and_then(|c| x509::summary(c).ok())
                .map(|s| s.serial_hex),
            alpn: conn.alpn_protocol().map(|a| a.to_vec()),
        }
    }
}
