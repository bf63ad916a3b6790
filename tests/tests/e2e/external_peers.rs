//! pqmesh's inbound listener checked by peers that share no code with it: Debian's OpenSSL 3.0
//! (no ML-KEM) and Node 24's OpenSSL 3.5 (X25519MLKEM768 and ML-DSA). They need those tools, so
//! they are `#[ignore]`d for a plain `cargo test`; `./test.sh` installs the tools and runs them,
//! and they fail loudly there if a tool is missing. (The packet-level checks — key share 0x11ec,
//! no plaintext on the wire — are in `tests/netns/run.sh`: loopback cannot be captured on this
//! kernel, so they capture on veth links between network namespaces.)

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use std::process::{Command, Stdio};

async fn server(alg: KeyAlgorithm) -> (ControlPlane, EchoApp, pqmesh_sidecar::RunningSidecar) {
    let cp = ControlPlane::start(alg, &["web", "api"]).await;
    let app = EchoApp::start().await;
    let b = sidecar(with(
        cp.sidecar_env("api", alg),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &app.addr.to_string()),
            ("PQMESH_INBOUND_ALLOW", &spiffe("web")),
        ],
    ))
    .await;
    (cp, app, b)
}

fn node_probe(b: &pqmesh_sidecar::RunningSidecar, f: &ClientFixture) -> serde_json_lite::Value {
    let node = external_tool("PQMESH_NODE24", "node");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/external/tls_probe.mjs");
    let out = Command::new(node)
        .args([script, "127.0.0.1", &b.inbound_addr.port().to_string()])
        .arg(&f.cert)
        .arg(&f.key)
        .arg(&f.ca)
        .arg(spiffe("api"))
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    serde_json_lite::parse(text.trim()).unwrap_or_else(|| {
        panic!(
            "node said {text:?} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Tiny JSON field reader for the probe's one-line output (avoids a JSON dependency here).
mod serde_json_lite {
    pub struct Value(pub String);
    pub fn parse(s: &str) -> Option<Value> {
        (s.starts_with('{') && s.ends_with('}')).then(|| Value(s.to_owned()))
    }
    impl Value {
        pub fn has(&self, key: &str, value: &str) -> bool {
            self.0.contains(&format!("\"{key}\":{value}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs openssl and Node 24; run by ./test.sh"]
async fn external_openssl_classical_client_is_refused_and_node_openssl35_hybrid_client_is_admitted()
{
    let (cp, app, b) = server(KeyAlgorithm::EcdsaP256).await;
    let dir = TempDir::new("fixtures");
    let f = client_fixture(&cp, "web", KeyAlgorithm::EcdsaP256, dir.path());

    // OpenSSL from the distribution (3.0 on Debian 12: no ML-KEM at all), offering classical groups.
    let openssl = external_tool("PQMESH_OPENSSL", "openssl");
    let mut child = Command::new(&openssl)
        .args([
            "s_client",
            "-connect",
            &b.inbound_addr.to_string(),
            "-tls1_3",
            "-groups",
            "X25519:P-256",
            "-alpn",
            "pqmesh/1",
        ])
        .arg("-cert")
        .arg(&f.cert)
        .arg("-key")
        .arg(&f.key)
        .arg("-CAfile")
        .arg(&f.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child.stdin.take().unwrap().write_all_sync(b"ping\n");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("handshake failure"),
        "OpenSSL classical client was not refused:\n{all}"
    );
    assert!(
        all.contains("Cipher is (NONE)"),
        "no session may be established:\n{all}"
    );
    assert_eq!(app.connections(), 0);

    // Node 24 / OpenSSL 3.5 offering only X25519MLKEM768 completes mutual TLS and reaches the app.
    let v = node_probe(&b, &f);
    assert!(
        v.has("ok", "true") && v.has("protocol", "\"TLSv1.3\"") && v.has("alpn", "\"pqmesh/1\""),
        "{}",
        v.0
    );
    assert!(
        v.0.contains("URI:spiffe://cluster.local/ns/shop/sa/api"),
        "{}",
        v.0
    );
    assert_eq!(app.connections(), 1);
    eventually("B recorded the hybrid handshake", || {
        metric(
            &b.metrics.registry,
            "pqmesh_tls_handshakes_total",
            &[("group", "X25519MLKEM768")],
        ) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Node 24; run by ./test.sh"]
async fn external_node_openssl35_completes_mutual_tls_with_ml_dsa_65_certificates() {
    let (cp, app, b) = server(KeyAlgorithm::MlDsa65).await;
    let dir = TempDir::new("fixtures");
    let f = client_fixture(&cp, "web", KeyAlgorithm::MlDsa65, dir.path());
    let v = node_probe(&b, &f);
    assert!(v.has("ok", "true"), "{}", v.0);
    assert_eq!(app.connections(), 1);
    eventually("B saw the client sign with ML-DSA-65", || {
        metric(
            &b.metrics.registry,
            "pqmesh_tls_handshakes_total",
            &[("signature_scheme", "ML-DSA-65")],
        ) == 1.0
    })
    .await;
}

trait WriteAllSync {
    fn write_all_sync(self, data: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, data: &[u8]) {
        use std::io::Write;
        let _ = self.write_all(data);
    }
}
