//! Harness for the end-to-end tests: a real control plane in local mode on a temporary directory,
//! real sidecars configured through the same `PQMESH_*` map the binary reads, and small apps.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod crd_schema;
pub mod differential;
pub mod fixtures;
pub mod forge;
pub mod gateway_api_schema;
pub mod http_app;
pub mod oauth;
pub mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pqmesh_control_plane::RunningControlPlane;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_sidecar::RunningSidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const TRUST_DOMAIN: &str = "cluster.local";

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pqmesh-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A control plane with a bootstrap token per service account in namespace `shop`.
pub struct ControlPlane {
    pub running: RunningControlPlane,
    pub dir: TempDir,
    tokens: HashMap<String, String>,
}

impl ControlPlane {
    pub async fn start(root_alg: KeyAlgorithm, service_accounts: &[&str]) -> Self {
        Self::start_with(root_alg, service_accounts, |_| {}).await
    }

    /// As `start`, with the configuration adjusted first (e.g. a leaf lifetime below the
    /// 5-minute minimum the environment accepts, to see certificates expire).
    pub async fn start_with(
        root_alg: KeyAlgorithm,
        service_accounts: &[&str],
        adjust: impl FnOnce(&mut pqmesh_control_plane::config::Config),
    ) -> Self {
        let dir = TempDir::new("cp");
        let mut tokens = HashMap::new();
        let mut yaml = String::from("tokens:\n");
        for sa in service_accounts {
            let token = format!("tok-{sa}-{:032x}", rand::random::<u128>());
            yaml.push_str(&format!(
                "  - token: {token}\n    namespace: shop\n    serviceAccount: {sa}\n"
            ));
            tokens.insert(sa.to_string(), token);
        }
        std::fs::write(dir.path().join("bootstrap-tokens.yaml"), yaml).unwrap();
        let env: HashMap<String, String> = [
            ("PQMESH_GRPC_ADDR", "127.0.0.1:0"),
            ("PQMESH_ADMIN_ADDR", "127.0.0.1:0"),
            ("PQMESH_CA_KEY_ALG", root_alg.name()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut config =
            pqmesh_control_plane::config::Config::from_env(dir.path().to_owned(), &env).unwrap();
        adjust(&mut config);
        let running = pqmesh_control_plane::start(config)
            .await
            .expect("control plane starts");
        Self {
            running,
            dir,
            tokens,
        }
    }

    /// Replaces `endpoints.yaml` (discovery data) and waits until the control plane has loaded
    /// `expected` endpoints from it.
    pub async fn set_endpoints(&self, yaml: &str, expected: usize) {
        let path = self.dir.path().join("endpoints.yaml");
        std::fs::write(&path, yaml).unwrap();
        // Make every write visibly newer, even on filesystems with coarse timestamps.
        static STEP: AtomicUsize = AtomicUsize::new(1);
        let t = std::time::SystemTime::now()
            + std::time::Duration::from_secs(STEP.fetch_add(1, Ordering::SeqCst) as u64);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let registry = &self.running.metrics.registry;
        eventually("the control plane reloaded endpoints.yaml", || {
            metric(registry, "pqmesh_endpoints", &[]) == expected as f64
        })
        .await;
        // The reload and the push to connected streams happen together; give the push a moment.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    /// Writes `policies/<file>` (TokenIssuer/AccessPolicy YAML) and waits until the control plane
    /// holds `expected` resources.
    pub async fn write_policy(&self, file: &str, yaml: &str, expected: usize) {
        let dir = self.dir.path().join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), yaml).unwrap();
        let registry = &self.running.metrics.registry;
        eventually("the control plane loaded the policies", || {
            metric(registry, "pqmesh_policy_resources", &[]) == expected as f64
        })
        .await;
    }

    /// Writes `revocations.yaml` (revoked identities, denied clients and subjects) with a visibly
    /// new modification time, so that the control plane's poll sees a change even within one
    /// second of the last write.
    pub fn write_revocations(&self, yaml: &str) {
        let path = self.dir.path().join("revocations.yaml");
        std::fs::write(&path, yaml).unwrap();
        let t = std::time::SystemTime::now()
            + std::time::Duration::from_secs(rand::random::<u8>() as u64 + 1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// Writes `secrets.yaml` (mode 0600).
    pub fn write_secrets(&self, yaml: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("secrets.yaml");
        std::fs::write(&path, yaml).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Kills the control plane like a crash and starts a new one on the same directory (same CA,
    /// tokens, policies) and the same gRPC address, as a restarted pod behind its Service.
    pub async fn restart(self) -> Self {
        self.restart_after(std::time::Duration::ZERO).await
    }

    /// As `restart`, with the control plane down for `down` in between (an outage).
    pub async fn restart_after(self, down: std::time::Duration) -> Self {
        let ControlPlane {
            running,
            dir,
            tokens,
        } = self;
        let grpc = running.grpc_addr;
        running.kill();
        tokio::time::sleep(down).await;
        let env: HashMap<String, String> = [
            ("PQMESH_GRPC_ADDR", grpc.to_string()),
            ("PQMESH_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config =
            pqmesh_control_plane::config::Config::from_env(dir.path().to_owned(), &env).unwrap();
        // The old listener closes once its accept task notices the server is gone.
        let mut attempts = 0;
        let running = loop {
            match pqmesh_control_plane::start(config.clone()).await {
                Ok(r) => break r,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("control plane did not restart: {e}"),
            }
        };
        ControlPlane {
            running,
            dir,
            tokens,
        }
    }

    pub fn token(&self, sa: &str) -> &str {
        &self.tokens[sa]
    }

    /// The `PQMESH_*` settings a sidecar for `sa` needs to reach this control plane.
    pub fn sidecar_env(&self, sa: &str, key_alg: KeyAlgorithm) -> HashMap<String, String> {
        [
            (
                "PQMESH_CONTROL_PLANE_ADDR",
                self.running.grpc_addr.to_string(),
            ),
            (
                "PQMESH_TRUST_BUNDLE",
                self.running.trust_bundle_path.display().to_string(),
            ),
            ("PQMESH_BOOTSTRAP_TOKEN", self.token(sa).to_owned()),
            ("PQMESH_KEY_ALG", key_alg.name().to_owned()),
            ("PQMESH_INBOUND_ADDR", "127.0.0.1:0".to_owned()),
            ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0".to_owned()),
            ("PQMESH_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{sa}")
}

/// Starts a sidecar from an environment map and waits for its first certificate.
pub async fn sidecar(env: HashMap<String, String>) -> RunningSidecar {
    sidecar_redirected(env, None).await
}

/// As `sidecar`, with every intercepted connection "originally going" to `original_dst`
/// (what iptables REDIRECT + SO_ORIGINAL_DST give in a pod).
pub async fn sidecar_redirected(
    env: HashMap<String, String>,
    original_dst: Option<SocketAddr>,
) -> RunningSidecar {
    let config = pqmesh_sidecar::config::Config::from_env(&env).expect("valid sidecar config");
    let running = match original_dst {
        Some(addr) => {
            pqmesh_sidecar::start_with(
                config,
                Arc::new(pqmesh_sidecar::original_dst::FixedOriginalDst(addr)),
            )
            .await
        }
        None => pqmesh_sidecar::start(config).await,
    }
    .expect("sidecar starts");
    tokio::time::timeout(std::time::Duration::from_secs(20), running.ready())
        .await
        .expect("sidecar got a certificate");
    running
}

pub fn with(mut env: HashMap<String, String>, pairs: &[(&str, &str)]) -> HashMap<String, String> {
    for (k, v) in pairs {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// An app that echoes every byte and, once the client half-closes, writes `EOF-SEEN` and closes.
/// Counts the connections it accepted, so tests can prove a refused peer never reached it.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

pub const EOF_TRAILER: &[u8] = b"EOF-SEEN";

impl EchoApp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) => {
                                let _ = tcp.write_all(EOF_TRAILER).await;
                                let _ = tcp.shutdown().await;
                                return;
                            }
                            Ok(n) => {
                                if tcp.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads a counter or gauge sample from a sidecar's or control plane's registry.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
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
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// Waits up to 5 s for `cond` (counters are bumped by the peer's task, after the wire event
/// a test observes).
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// PEM files for a TLS client outside pqmesh (OpenSSL, Node): a leaf for `shop/<sa>` issued by
/// the control plane's CA for a key made here, at test time. Fake test fixtures, deleted with `dir`.
pub struct ClientFixture {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub fn client_fixture(cp: &ControlPlane, sa: &str, alg: KeyAlgorithm, dir: &Path) -> ClientFixture {
    use pqmesh_control_plane::ca::{CaPaths, CertificateAuthority};
    let ca = CertificateAuthority::load_or_create(
        &CaPaths::in_dir(cp.dir.path()),
        TRUST_DOMAIN,
        alg,
        std::time::Duration::from_secs(3600),
    )
    .expect("reopen the test CA");
    let key = alg.generate().unwrap();
    let id: pqmesh_mtls::SpiffeId = spiffe(sa).parse().unwrap();
    let leaf = ca.issue_serving(&key, &id, &[]).unwrap();
    let fixture = ClientFixture {
        cert: dir.join(format!("{sa}-cert.pem")),
        key: dir.join(format!("{sa}-key.pem")),
        ca: cp.running.trust_bundle_path.clone(),
    };
    std::fs::write(&fixture.cert, pqmesh_mtls::x509::certs_to_pem(&leaf.chain)).unwrap();
    std::fs::write(&fixture.key, key.serialize_pem()).unwrap();
    fixture
}

/// Path of an external tool for the `external_*` tests: `$var` if set, else `default` on PATH.
/// Panics with the fix when missing: these tests are run by ./test.sh, which installs them.
pub fn external_tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let found = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || std::process::Command::new(&path)
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    assert!(
        found,
        "{} not found ({var} or PATH): run ./test.sh, which installs the external peers",
        path.display()
    );
    path
}

/// As `eventually`, for conditions that need to await.
pub async fn eventually_async<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
