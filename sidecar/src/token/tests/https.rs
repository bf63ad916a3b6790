//! The OAuth-server client over real TLS, and the types the proxy will share across tasks.

use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use pqmesh_mtls::{crypto_provider, KeyExchangePolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::token::http::HttpClient;

#[tokio::test]
async fn jwks_is_fetched_over_hybrid_post_quantum_tls() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let cert = certified.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    // A hybrid-only server: the handshake succeeds only if the client offers X25519MLKEM768.
    let server =
        rustls::ServerConfig::builder_with_provider(crypto_provider(KeyExchangePolicy::HybridOnly))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = jwks().to_string();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("handshake");
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        let mut request = vec![0; 4096];
        let _ = tls.read(&mut request).await;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(response.as_bytes()).await.expect("write");
        tls.shutdown().await.ok();
        group
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = HttpClient::with_roots(roots).expect("client");
    let uri: Uri = format!("https://{addr}/jwks").parse().expect("uri");
    let fetched = client
        .get(&uri, "application/json", 64 * 1024, Duration::from_secs(5))
        .await
        .expect("fetched over TLS");
    assert_eq!(fetched.status, 200);
    let (keys, _) = crate::token::jwk::parse_jwks(&fetched.body).expect("jwks");
    assert_eq!(keys.len(), 3, "the symmetric key is dropped");
    let group = server_task.await.expect("server");
    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_an_error_not_a_fallback() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(crypto_provider(
        KeyExchangePolicy::AllowClassical,
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    // The webpki roots do not include a self-signed test certificate.
    let client = HttpClient::new().expect("client");
    let uri: Uri = format!("https://{addr}/jwks").parse().expect("uri");
    let err = client
        .get(&uri, "application/json", 1024, Duration::from_secs(5))
        .await
        .map(|_| ())
        .expect_err("untrusted");
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn the_validator_and_its_future_can_cross_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let (validator, _) = validator(IssuerConfig::new(
        "as",
        ISS,
        vec!["api".into()],
        "https://as.example/jwks",
    ));
    send_sync(&validator);
    send(validator.authenticate("token"));
}
