//! Criterion micro-benchmarks of the per-request and per-issuance work: JWT validation (ES256,
//! RS256), policy evaluation, phantom-token cache hits, CSR verification + leaf signing (ECDSA
//! P-256, ML-DSA-65). Keys and tokens are made here at run time. `cargo bench -p pqmesh-bench`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use pqmesh_sidecar::token::{IntrospectionConfig, IssuerConfig, TokenMetrics, Validator};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS: &str = "http://127.0.0.1/bench-issuer";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Keys {
    ec: EcdsaKeyPair,
    rsa: RsaKeyPair,
}

impl Keys {
    fn new() -> Self {
        Keys {
            ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC"),
            rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA"),
        }
    }
    fn jwks(&self) -> String {
        let point = self.ec.public_key().as_ref();
        let rsa = self.rsa.public_key();
        json!({"keys": [
            {"kty": "EC", "kid": "ec-1", "crv": "P-256", "alg": "ES256", "x": b64(&point[1..33]), "y": b64(&point[33..65])},
            {"kty": "RSA", "kid": "rsa-1", "alg": "RS256",
             "n": b64(rsa.modulus().big_endian_without_leading_zero()),
             "e": b64(rsa.exponent().big_endian_without_leading_zero())},
        ]})
        .to_string()
    }
    fn sign(&self, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = if header["alg"] == "RS256" {
            let mut sig = vec![0; self.rsa.public_modulus_len()];
            self.rsa
                .sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("RSA sign");
            sig
        } else {
            self.ec
                .sign(&SystemRandom::new(), input.as_bytes())
                .expect("EC sign")
                .as_ref()
                .to_vec()
        };
        format!("{input}.{}", b64(&sig))
    }
    fn access_token(&self, alg: &str, kid: &str) -> String {
        self.access_token_numbered(alg, kid, 0)
    }

    /// Distinct tokens (by `jti`) defeat the verified-token cache.
    fn access_token_numbered(&self, alg: &str, kid: &str, n: usize) -> String {
        self.sign(
            json!({"alg": alg, "kid": kid, "typ": "at+jwt"}),
            json!({"iss": ISS, "aud": "api", "sub": "alice", "scope": "orders:read orders:write",
                   "iat": now(), "exp": now() + 3600, "client_id": "web", "jti": format!("t{n}")}),
        )
    }
}

/// A loopback HTTP server answering the JWKS on GET and an RFC 9701 introspection JWT on POST.
async fn issuer_server(jwks: String, introspection: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (jwks, introspection) = (jwks.clone(), introspection.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut have = 0;
                loop {
                    let Ok(n) = tcp.read(&mut buf[have..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    let text = String::from_utf8_lossy(&buf[..have]).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if have < end + 4 + len {
                        continue;
                    }
                    let (ctype, body) = if text.starts_with("POST") {
                        ("application/token-introspection+jwt", &introspection)
                    } else {
                        ("application/json", &jwks)
                    };
                    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if tcp.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    have = 0;
                }
            });
        }
    });
    addr
}

fn tokens(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let keys = Keys::new();
    let introspection = keys.sign(
        json!({"alg": "ES256", "kid": "ec-1", "typ": "token-introspection+jwt"}),
        json!({"iss": ISS, "aud": "pqmesh-sidecar", "iat": now(), "token_introspection": {
            "active": true, "scope": "orders:read", "client_id": "web", "sub": "alice",
            "exp": now() + 3600, "iat": now(), "iss": ISS, "token_type": "Bearer"}}),
    );
    let addr = rt.block_on(issuer_server(keys.jwks(), introspection));
    let mut config = IssuerConfig::new(
        "bench",
        ISS,
        vec!["api".into()],
        format!("http://{addr}/jwks"),
    );
    config.introspection = Some(IntrospectionConfig::new(
        format!("http://{addr}/introspect"),
        "pqmesh-sidecar",
        "bench-client-secret",
    ));
    let registry = prometheus::Registry::new();
    let validator = Arc::new(
        Validator::new(vec![config], TokenMetrics::new(&registry).expect("metrics"))
            .expect("validator"),
    );
    let es256 = keys.access_token("ES256", "ec-1");
    let rs256 = keys.access_token("RS256", "rsa-1");
    let opaque = "opaque-bench-token-0123456789abcdef".to_owned();
    // Fill the JWKS cache and the phantom-token cache once.
    rt.block_on(async {
        validator
            .authenticate(&es256)
            .await
            .expect("ES256 token accepted");
        validator
            .authenticate(&rs256)
            .await
            .expect("RS256 token accepted");
        let a = validator
            .authenticate(&opaque)
            .await
            .expect("opaque token exchanged");
        assert!(a.phantom);
    });
    // Twice the verified-token cache's capacity, cycled: every look-up is a miss (the soonest
    // to expire, i.e. the oldest, is evicted first), so these measure a full verification.
    let distinct = |alg: &str, kid: &str| -> Vec<String> {
        (1..=2048)
            .map(|n| keys.access_token_numbered(alg, kid, n))
            .collect()
    };
    let (es256_many, rs256_many) = (distinct("ES256", "ec-1"), distinct("RS256", "rsa-1"));
    let mut g = c.benchmark_group("token");
    g.bench_function("jwt_validate_es256", |b| {
        let mut next = es256_many.iter().cycle();
        b.iter(|| {
            rt.block_on(validator.authenticate(next.next().expect("cycle")))
                .expect("valid")
        })
    });
    g.bench_function("jwt_validate_rs256", |b| {
        let mut next = rs256_many.iter().cycle();
        b.iter(|| {
            rt.block_on(validator.authenticate(next.next().expect("cycle")))
                .expect("valid")
        })
    });
    g.bench_function("jwt_cache_hit_rs256", |b| {
        b.iter(|| rt.block_on(validator.authenticate(&rs256)).expect("valid"))
    });
    g.bench_function("phantom_token_cache_hit", |b| {
        b.iter(|| {
            rt.block_on(validator.authenticate(&opaque))
                .expect("cached")
        })
    });
    g.finish();
}

fn policy(c: &mut Criterion) {
    let yaml = r#"
apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {name: corp, namespace: shop}
spec:
  issuer: https://login.example.com
  audiences: [orders]
  jwksUri: https://login.example.com/jwks
  allowedAlgorithms: [ES256]
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  ports: [8080]
  mtls: STRICT
  peers: ["shop/*", "spiffe://cluster.local/ns/gateway/sa/ingress"]
  token: {issuers: [corp]}
  rules:
    - {methods: [GET], paths: ["/healthz"]}
    - {methods: [DELETE], paths: ["/orders/**"], scopes: ["orders:admin"]}
    - {methods: [POST], paths: ["/orders"], scopes: ["orders:write"], claims: [{name: tenant, values: [acme]}]}
    - {methods: [GET], paths: ["/orders/**"], scopes: ["orders:read"]}
"#;
    let resources = pqmesh_policy::parse_documents(yaml, "bench.yaml").expect("policy parses");
    let set = pqmesh_policy::PolicySet::build(resources, "cluster.local").expect("policy builds");
    struct NoSecrets;
    impl pqmesh_policy::Secrets for NoSecrets {
        fn get(&self, _: &str, _: &str, _: &str) -> Option<String> {
            None
        }
    }
    let workload = pqmesh_policy::Workload {
        namespace: "shop".into(),
        labels: BTreeMap::from([("app".to_owned(), "orders".to_owned())]),
    };
    let compiled = set.compile(&workload, &NoSecrets).expect("compiles");
    let peer: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().expect("id");
    let claims = json!({"scope": "orders:read orders:write", "tenant": "acme"});
    let claims = claims.as_object().expect("object").clone();
    let mut g = c.benchmark_group("policy");
    g.bench_function("evaluate_get_with_scope", |b| {
        b.iter(|| {
            let path = pqmesh_policy::path::normalize("/orders/./123//items").expect("path");
            let d = compiled.evaluate(&pqmesh_policy::Request {
                port: 8080,
                peer: Some(&peer),
                trust_domain: "cluster.local",
                http: Some(pqmesh_policy::HttpRequest {
                    method: "GET",
                    path: &path,
                    token: pqmesh_policy::TokenState::Valid {
                        issuer: "shop/corp",
                        claims: &claims,
                    },
                }),
            });
            assert!(matches!(d, pqmesh_policy::Decision::Allow { .. }), "{d:?}");
        })
    });
    g.finish();
}

fn ca(c: &mut Criterion) {
    use pqmesh_control_plane::ca::{CaPaths, CertificateAuthority};
    use pqmesh_mtls::KeyAlgorithm;
    let mut g = c.benchmark_group("ca");
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::MlDsa65] {
        let dir = std::env::temp_dir().join(format!(
            "pqmesh-bench-ca-{}-{}",
            alg.name(),
            std::process::id()
        ));
        let ca = CertificateAuthority::load_or_create(
            &CaPaths::in_dir(&dir),
            "cluster.local",
            alg,
            std::time::Duration::from_secs(3600),
        )
        .expect("CA");
        let key = alg.generate().expect("key");
        let csr = pqmesh_mtls::keys::workload_csr(&key).expect("csr");
        let id: pqmesh_mtls::SpiffeId =
            "spiffe://cluster.local/ns/shop/sa/web".parse().expect("id");
        g.bench_function(format!("csr_verify_and_sign_{}", alg.name()), |b| {
            b.iter(|| {
                let verified = pqmesh_control_plane::csr::verify_csr(&csr).expect("CSR verifies");
                ca.issue(&verified, &id).expect("issued")
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

criterion_group!(benches, tokens, policy, ca);
criterion_main!(benches);
