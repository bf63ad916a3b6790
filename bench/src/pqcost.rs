//! The post-quantum share of a handshake, isolated: full mutual TLS 1.3 handshakes in memory (no
//! sockets, one thread), same rustls + aws-lc, same ECDSA P-256 certificates and chain checks on
//! both sides, once with X25519MLKEM768 and once with X25519. The socket-level handshake figures
//! compare pqmesh with other TLS stacks; this one compares only the key exchange.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::SupportedKxGroup;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Handshakes per second with one key-exchange group, certificates from `dir` (the peers' set:
/// `ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`, server name `server_name`).
pub fn handshakes_per_second(
    dir: &Path,
    server_name: &str,
    group: &'static dyn SupportedKxGroup,
    duration: Duration,
) -> f64 {
    let provider = || {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.kx_groups = vec![group];
        Arc::new(p)
    };
    let certs = |f: &str| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(dir.join(f))
            .expect("certificate file")
            .map(|c| c.expect("certificate"))
            .collect()
    };
    let key = |f: &str| PrivateKeyDer::from_pem_file(dir.join(f)).expect("key file");
    let mut roots = RootCertStore::empty();
    for c in certs("ca.pem") {
        roots.add(c).expect("root");
    }
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .expect("client verifier");
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs("server.pem"), key("server.key"))
        .expect("server certificate");
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs("client.pem"), key("client.key"))
        .expect("client certificate");
    client.resumption = rustls::client::Resumption::disabled();
    let (server, client) = (Arc::new(server), Arc::new(client));
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < duration {
        let c = ClientConnection::new(client.clone(), name.clone()).expect("client");
        let s = ServerConnection::new(server.clone()).expect("server");
        let negotiated = handshake(c, s);
        assert_eq!(
            negotiated,
            Some(group.name()),
            "the handshake used another group"
        );
        done += 1;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// Moves records between the two ends until neither has anything left to send.
fn handshake(c: ClientConnection, s: ServerConnection) -> Option<rustls::NamedGroup> {
    let (mut c, mut s) = (Connection::Client(c), Connection::Server(s));
    loop {
        let sent = transfer(&mut c, &mut s) | transfer(&mut s, &mut c);
        if !sent {
            assert!(
                !c.is_handshaking() && !s.is_handshaking(),
                "handshake stalled"
            );
            return c.negotiated_key_exchange_group().map(|g| g.name());
        }
    }
}

/// Sends what `from` has to `to`; false when it had nothing.
fn transfer(from: &mut Connection, to: &mut Connection) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write_tls");
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls");
        to.process_new_packets().expect("handshake failed");
    }
    !buf.is_empty()
}
