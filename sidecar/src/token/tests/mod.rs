//! Test fixtures: keys made at test time, token minting, and a fake OAuth server on loopback that
//! serves a JWKS and an introspection endpoint whose answers each test controls.

mod https;
mod jwt;
mod phantom;
mod prefetch;
mod robustness;
mod throttle;
mod verified_cache;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaEncoding, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use super::claims::unix_now;
use super::{IntrospectionConfig, IssuerConfig, TokenMetrics, Validator};

pub(super) const ISS: &str = "https://as.example";
pub(super) const CLIENT_ID: &str = "pqmesh-sidecar";

pub(super) struct Keys {
    pub rsa: RsaKeyPair,
    pub ec: EcdsaKeyPair,
    pub ed: Ed25519KeyPair,
    /// Never published: signs tokens that must fail verification.
    pub rogue_rsa: RsaKeyPair,
    /// Published only by tests that rotate keys.
    pub next_ec: EcdsaKeyPair,
}

// RSA generation is slow; every test shares one set.
pub(super) static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key"),
    ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key"),
    ed: Ed25519KeyPair::generate().expect("Ed25519 key"),
    rogue_rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key"),
    next_ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key"),
});

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) fn rsa_jwk(key: &RsaKeyPair, kid: &str) -> Value {
    let public = key.public_key();
    json!({
        "kty": "RSA", "kid": kid, "use": "sig",
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero()),
    })
}

pub(super) fn ec_jwk(key: &EcdsaKeyPair, kid: &str) -> Value {
    let point = key.public_key().as_ref();
    json!({
        "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    })
}

pub(super) fn ed_jwk(key: &Ed25519KeyPair, kid: &str) -> Value {
    json!({ "kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(key.public_key().as_ref()) })
}

/// The default published JWKS: rsa-1, ec-1, ed-1 (and a symmetric key that must be ignored).
pub(super) fn jwks() -> Value {
    json!({ "keys": [
        rsa_jwk(&KEYS.rsa, "rsa-1"),
        ec_jwk(&KEYS.ec, "ec-1"),
        ed_jwk(&KEYS.ed, "ed-1"),
        { "kty": "oct", "kid": "hmac-1", "k": b64(b"shared secret") },
    ]})
}

pub(super) enum Signer<'a> {
    Rsa(&'a RsaKeyPair, &'static dyn RsaEncoding),
    Ec(&'a EcdsaKeyPair),
    Ed(&'a Ed25519KeyPair),
    Hmac(&'a [u8]),
    /// Empty signature, as `alg: none` tokens have.
    Unsigned,
}

pub(super) fn rs256() -> Signer<'static> {
    Signer::Rsa(&KEYS.rsa, &signature::RSA_PKCS1_SHA256)
}

pub(super) fn sign(header: &Value, claims: &Value, signer: Signer<'_>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = match signer {
        Signer::Rsa(key, encoding) => {
            let mut sig = vec![0; key.public_modulus_len()];
            key.sign(encoding, &SystemRandom::new(), input.as_bytes(), &mut sig)
                .expect("RSA sign");
            sig
        }
        Signer::Ec(key) => key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("EC sign")
            .as_ref()
            .to_vec(),
        Signer::Ed(key) => key.sign(input.as_bytes()).as_ref().to_vec(),
        Signer::Hmac(secret) => {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
            aws_lc_rs::hmac::sign(&key, input.as_bytes())
                .as_ref()
                .to_vec()
        }
        Signer::Unsigned => Vec::new(),
    };
    format!("{input}.{}", b64(&sig))
}

pub(super) fn now() -> i64 {
    unix_now() as i64
}

/// Claims of a good access token for audience `api`.
pub(super) fn access_claims() -> Value {
    json!({
        "iss": ISS, "aud": "api", "sub": "alice", "scope": "read write",
        "iat": now(), "exp": now() + 300, "client_id": "web",
    })
}

pub(super) fn with(mut base: Value, changes: Value) -> Value {
    if let (Value::Object(b), Value::Object(c)) = (&mut base, changes) {
        for (k, v) in c {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
    base
}

pub(super) fn access_token() -> String {
    sign(
        &json!({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}),
        &access_claims(),
        rs256(),
    )
}

/// An RFC 9701 response as oidc-provider 9 shapes it, signed with rsa-1.
pub(super) fn introspection_jwt(aud: &str, token_introspection: Value) -> String {
    sign(
        &json!({"alg": "RS256", "kid": "rsa-1", "typ": "token-introspection+jwt"}),
        &json!({"iss": ISS, "aud": aud, "iat": now(), "token_introspection": token_introspection}),
        rs256(),
    )
}

pub(super) fn active(exp_in: i64) -> Value {
    json!({
        "active": true, "scope": "read write", "client_id": "web", "sub": "alice",
        "exp": now() + exp_in, "iat": now(), "iss": ISS, "token_type": "Bearer",
    })
}

#[derive(Clone, Debug)]
pub(super) struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn rfc9701(jwt: String) -> Reply {
        Reply {
            status: 200,
            content_type: Some("application/token-introspection+jwt".into()),
            // What OAuth servers send on every introspection response.
            cache_control: Some("no-store".into()),
            body: jwt,
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            content_type: None,
            cache_control: None,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

type Introspect = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// What the fake server saw of one introspection request.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub headers: HeaderMap,
    pub body: String,
}

pub(super) struct FakeAs {
    pub addr: SocketAddr,
    pub jwks: Arc<Mutex<Option<Value>>>,
    pub introspect: Arc<Mutex<Introspect>>,
    pub jwks_hits: Arc<AtomicUsize>,
    pub introspection_hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, `/jwks` accepts the request and answers only after a minute (a hung server).
    pub jwks_hang: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeAs {
    /// Serves `jwks()` and answers introspection with an active RFC 9701 response.
    pub async fn start() -> FakeAs {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let fake = FakeAs {
            addr: listener.local_addr().expect("addr"),
            jwks: Arc::new(Mutex::new(Some(jwks()))),
            introspect: Arc::new(Mutex::new(Arc::new(|_: &str| {
                Reply::rfc9701(introspection_jwt(CLIENT_ID, active(300)))
            }))),
            jwks_hits: Arc::default(),
            introspection_hits: Arc::default(),
            seen: Arc::default(),
            jwks_hang: Arc::default(),
        };
        let state = fake.handles();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.respond(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    fn handles(&self) -> Arc<FakeAs> {
        Arc::new(FakeAs {
            addr: self.addr,
            jwks: self.jwks.clone(),
            introspect: self.introspect.clone(),
            jwks_hits: self.jwks_hits.clone(),
            introspection_hits: self.introspection_hits.clone(),
            seen: self.seen.clone(),
            jwks_hang: self.jwks_hang.clone(),
        })
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let headers = req.headers().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let reply = match path.as_str() {
            "/jwks" => {
                self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                if self.jwks_hang.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                match self.jwks.lock().expect("lock").clone() {
                    Some(jwks) => Reply {
                        content_type: Some("application/json".into()),
                        body: jwks.to_string(),
                        ..Reply::status(200)
                    },
                    None => Reply::status(500),
                }
            }
            "/introspect" => {
                self.introspection_hits.fetch_add(1, Ordering::SeqCst);
                self.seen.lock().expect("lock").push(Seen {
                    headers,
                    body: body.clone(),
                });
                let token = body
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("token="))
                    .unwrap_or_default()
                    .to_string();
                let answer = self.introspect.lock().expect("lock").clone();
                answer(&token)
            }
            _ => Reply::status(404),
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut response = Response::builder().status(reply.status);
        if let Some(ct) = reply.content_type {
            response = response.header("content-type", ct);
        }
        if let Some(cc) = reply.cache_control {
            response = response.header("cache-control", cc);
        }
        response
            .body(Full::new(Bytes::from(reply.body)))
            .expect("response")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_jwks(&self, jwks: Option<Value>) {
        *self.jwks.lock().expect("lock") = jwks;
    }

    pub fn answer(&self, f: impl Fn(&str) -> Reply + Send + Sync + 'static) {
        *self.introspect.lock().expect("lock") = Arc::new(f);
    }

    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn introspection_hits(&self) -> usize {
        self.introspection_hits.load(Ordering::SeqCst)
    }

    /// Issuer settings for this server: audience `api`, no introspection.
    pub fn issuer(&self) -> IssuerConfig {
        let mut config = IssuerConfig::new("test-as", ISS, vec!["api".into()], self.url("/jwks"));
        config.allowed_algs = ["RS256", "PS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec();
        config
    }

    /// Issuer settings with introspection as client `CLIENT_ID`.
    pub fn introspecting_issuer(&self) -> IssuerConfig {
        let mut config = self.issuer();
        config.introspection = Some(IntrospectionConfig::new(
            self.url("/introspect"),
            CLIENT_ID,
            "s3cret",
        ));
        config
    }
}

pub(super) fn validator(config: IssuerConfig) -> (Validator, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = TokenMetrics::new(&registry).expect("metrics");
    (
        Validator::new(vec![config], metrics).expect("valid config"),
        registry,
    )
}

/// The value of one counter sample, 0 when absent.
pub(super) fn counter(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

pub(super) fn claims_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
