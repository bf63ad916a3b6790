//! TLS for outside clients: TLS 1.3 and 1.2, X25519MLKEM768 preferred and classical groups
//! allowed (browsers and curl differ), or X25519MLKEM768 only on a listener that requires PQ
//! (then TLS 1.3 only: TLS 1.2 has no hybrid group). Suites and groups come from the same
//! rustls-post-quantum provider the mesh uses.

use std::sync::Arc;

use rustls::ServerConfig;

use crate::load::CertFiles;

pub fn server_config(
    cert: &CertFiles,
    require_pq: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let mut provider = rustls_post_quantum::provider();
    provider.kx_groups = if require_pq {
        vec![kx_group::X25519MLKEM768]
    } else {
        vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ]
    };
    let versions: &[&rustls::SupportedProtocolVersion] = if require_pq {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `TLSv1_3` → `TLS1.3` (metric label).
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS1.2",
        _ => "other",
    }
}
