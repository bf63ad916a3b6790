//! The one rustls `CryptoProvider` pqmesh uses: rustls-post-quantum (aws-lc-rs, ML-DSA signature
//! support) restricted to TLS 1.3 key exchange with X25519MLKEM768, optionally plus classical groups.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::NamedGroup;

/// Which key-exchange groups a listener or client offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyExchangePolicy {
    /// X25519MLKEM768 only: a classical-only peer fails the handshake.
    #[default]
    HybridOnly,
    /// X25519MLKEM768 preferred, X25519 and P-256 accepted (migration setting).
    AllowClassical,
}

impl KeyExchangePolicy {
    pub fn from_allow_classical(allow: bool) -> Self {
        if allow {
            KeyExchangePolicy::AllowClassical
        } else {
            KeyExchangePolicy::HybridOnly
        }
    }
}

/// How logs and status show it: the groups offered, as the settings name them.
impl std::fmt::Display for KeyExchangePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyExchangePolicy::HybridOnly => "hybrid-only",
            KeyExchangePolicy::AllowClassical => "allow-classical",
        })
    }
}

/// Builds the provider for a key-exchange policy.
pub fn crypto_provider(kx: KeyExchangePolicy) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let mut provider = rustls_post_quantum::provider();
    provider.kx_groups = match kx {
        KeyExchangePolicy::HybridOnly => vec![kx_group::X25519MLKEM768],
        KeyExchangePolicy::AllowClassical => vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ],
    };
    // TLS 1.3 suites only; TLS 1.2 is additionally excluded by the protocol versions we build with.
    provider
        .cipher_suites
        .retain(|suite| matches!(suite, rustls::SupportedCipherSuite::Tls13(_)));
    Arc::new(provider)
}

/// Installs the hybrid-only provider as the process default, once. Every config pqmesh builds
/// names its provider explicitly; this only guards libraries that fall back to the default.
pub fn install_default() {
    let _ = crypto_provider(KeyExchangePolicy::HybridOnly)
        .as_ref()
        .clone()
        .install_default();
}

/// Human name of a key-exchange group for logs and metric labels.
pub fn group_name(group: NamedGroup) -> String {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768".to_owned(),
        NamedGroup::X25519 => "X25519".to_owned(),
        NamedGroup::secp256r1 => "secp256r1".to_owned(),
        NamedGroup::MLKEM768 => "MLKEM768".to_owned(),
        other => format!("{other:?}"),
    }
}
