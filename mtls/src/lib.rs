//! Shared by the pqmesh control plane and sidecar: SPIFFE identities, the hybrid post-quantum
//! crypto provider, peer verification, TLS configs and workload key/CSR generation.
#![forbid(unsafe_code)]

pub mod admin;
pub mod env;
pub mod grpc_tls;
pub mod keys;
pub mod logging;
pub mod provider;
pub mod spiffe;
pub mod tls;
pub mod verify;
pub mod x509;

pub use keys::KeyAlgorithm;
pub use provider::{crypto_provider, KeyExchangePolicy};
pub use spiffe::{PeerPattern, SpiffeId};
pub use tls::{Credentials, TrustBundle};

/// A short, bounded label for why a handshake failed (metric label; no peer-controlled text).
pub fn handshake_failure_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    let reason = if text.contains("NoKxGroupsInCommon") || text.contains("no kx groups") || text.contains("HandshakeFailure") {
        "no_common_group_or_params"
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "untrusted_certificate"
    } else if text.contains("expected identity") || text.contains("not the expected") {
        "wrong_identity"
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        "certificate_validity"
    } else if text.contains("NoCertificatesPresented") || text.contains("no client certificate") {
        "no_client_certificate"
    } else if text.contains("ProtocolVersion") || text.contains("protocol version") {
        "protocol_version"
    } else if text.contains("NoApplicationProtocol") || text.contains("application protocol") {
        "alpn"
    } else if text.contains("eof") || text.contains("EOF") || text.contains("reset") {
        "connection_closed"
    } else {
        "other"
    };
    reason.to_owned()
}
