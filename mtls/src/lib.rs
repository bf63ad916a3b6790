//! Shared by the pqmesh control plane and sidecar: SPIFFE identities, the hybrid post-quantum
//! crypto provider, peer verification, TLS configs and workload key/CSR generation.
#![forbid(unsafe_code)]

pub mod admin;
pub mod env;
pub mod grpc_tls;
pub mod keys;
pub mod logging;
pub mod process_metrics;
pub mod provider;
#[cfg(feature = "kubernetes")]
pub mod reflect;
pub mod spiffe;
pub mod tls;
pub mod verify;
pub mod x509;

pub use keys::KeyAlgorithm;
pub use provider::{crypto_provider, KeyExchangePolicy};
pub use spiffe::{PeerPattern, SpiffeId};
pub use tls::{Credentials, TrustBundle};

/// A short, bounded label for why a handshake failed (a metric label: never peer-controlled text).
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E, PeerIncompatible as P};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                "connection_closed"
            }
            _ => "io",
        };
    };
    match tls {
        E::InvalidCertificate(C::Other(other))
            if other
                .0
                .downcast_ref::<verify::PeerIdentityError>()
                .is_some() =>
        {
            "wrong_identity"
        }
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "untrusted_certificate",
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "certificate_validity",
        E::InvalidCertificate(_) => "invalid_certificate",
        E::NoCertificatesPresented => "no_client_certificate",
        E::PeerIncompatible(P::NoKxGroupsInCommon) => "no_common_group",
        E::PeerIncompatible(
            P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::SupportedVersionsExtensionRequired,
        ) => "protocol_version",
        E::PeerIncompatible(_) => "peer_incompatible",
        E::NoApplicationProtocol => "alpn",
        E::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}
