//! The JWT-policy scenario: an RSA key made at run time, a loopback JWKS server, the
//! TokenIssuer + AccessPolicy the server-side sidecar enforces (RS256 token with a scope on every
//! request), and the token the load generator sends. Test material only, never committed.

use std::net::SocketAddr;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The label the JWT pair's server sidecar carries; the AccessPolicy selects it.
pub const LABELS: &str = "bench=jwt";
const KID: &str = "bench-rsa-1";
const AUDIENCE: &str = "api";
pub const SCOPE: &str = "orders:read";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub struct Issuer {
    key: RsaKeyPair,
    /// Serves `GET /jwks`.
    pub addr: SocketAddr,
}

impl Issuer {
    /// A 2048-bit RSA key and a JWKS server on 127.0.0.1.
    pub async fn start() -> Self {
        let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let public = key.public_key();
        let jwks = json!({"keys": [{"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero())}]})
        .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind JWKS");
        let addr = listener.local_addr().expect("JWKS address");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_jwks(tcp, jwks.clone()));
            }
        });
        Issuer { key, addr }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/issuer", self.addr)
    }

    /// An RS256 access token with `SCOPE`, valid for two hours.
    pub fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = json!({"alg": "RS256", "kid": KID, "typ": "at+jwt"});
        let claims = json!({"iss": self.issuer(), "aud": AUDIENCE, "sub": "bench-user",
            "scope": format!("{SCOPE} profile"), "client_id": "bench", "iat": now, "exp": now + 7200,
            "jti": format!("{:x}", rand::random::<u64>())});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("RSA sign");
        format!("{input}.{}", b64(&sig))
    }

    /// Writes the TokenIssuer and the AccessPolicy into a local-mode control plane's directory
    /// (before it starts, so the first snapshot a sidecar receives has them).
    pub fn write_policy(&self, cp_dir: &Path) {
        let dir = cp_dir.join("policies");
        std::fs::create_dir_all(&dir).expect("policies dir");
        let yaml = format!(
            r#"apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {{name: bench, namespace: shop}}
spec:
  issuer: {iss}
  audiences: [{AUDIENCE}]
  jwksUri: http://{addr}/jwks
  allowedAlgorithms: [RS256]
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {{name: bench-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{bench: jwt}}}}
  peers: ["shop/web"]
  token: {{issuers: [bench]}}
  rules:
    - {{methods: [GET], paths: ["/orders/**"], scopes: ["{SCOPE}"]}}
"#,
            iss = self.issuer(),
            addr = self.addr
        );
        std::fs::write(dir.join("bench-jwt.yaml"), yaml).expect("write policy");
    }
}

async fn serve_jwks(mut tcp: tokio::net::TcpStream, jwks: String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = tcp.read(&mut chunk).await else {
            return;
        };
        if n == 0 || buf.len() > 64 * 1024 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        buf.drain(..end + 4);
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{jwks}",
            jwks.len()
        );
        if tcp.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Waits until the pair behind `entry` enforces the policy: a request without a token is refused
/// with 401 and one with `token` is answered 200 (the sidecar has its snapshot and the JWKS).
pub async fn wait_enforced(entry: SocketAddr, token: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let without = status(entry, "").await;
        let with = status(entry, &format!("Authorization: Bearer {token}\r\n")).await;
        if without == Some(401) && with == Some(200) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "JWT policy not enforced through {entry}: without a token {without:?}, with {with:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn status(entry: SocketAddr, extra: &str) -> Option<u16> {
    let mut tcp = tokio::net::TcpStream::connect(entry).await.ok()?;
    let req = format!("GET /orders/1 HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
