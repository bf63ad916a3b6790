//! Root rotation without downtime, under continuous traffic: A (shop/web) calls B (shop/api)
//! through both sidecars, with a new connection (a full handshake) per request plus one
//! keep-alive connection, while the operator runs the three steps (`rotation::prepare`,
//! `activate`, `finish`), waiting between steps until every sidecar runs the current CA version.
//! Every request must succeed; the counts are printed. Also ECDSA → ML-DSA-65.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pqmesh_control_plane::rotation;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_sidecar::RunningSidecar;
use pqmesh_tests::*;
use tokio::net::TcpStream;

pub struct Mesh {
    pub cp: ControlPlane,
    pub a: RunningSidecar,
    pub b: RunningSidecar,
    pub app_stats: Arc<http_app::AppStats>,
}

/// CP with a `root_alg` root; B serves an HTTP app and admits shop/web; A sends everything to B.
pub async fn mesh(root_alg: KeyAlgorithm, b_extra: &[(&str, &str)]) -> Mesh {
    let cp = ControlPlane::start(root_alg, &["web", "api", "other"]).await;
    let (app, _tcp, app_stats) = http_app::start("b").await;
    let mut b_env = with(
        cp.sidecar_env("api", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &app.to_string()),
            ("PQMESH_INBOUND_ALLOW", "shop/*"),
        ],
    );
    b_env = with(b_env, b_extra);
    let b = sidecar(b_env).await;
    let a = client(&cp, "web", &b).await;
    Mesh {
        cp,
        a,
        b,
        app_stats,
    }
}

/// A client sidecar for `sa` whose outbound goes to B.
pub async fn client(cp: &ControlPlane, sa: &str, b: &RunningSidecar) -> RunningSidecar {
    sidecar(with(
        cp.sidecar_env(sa, KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_OUTBOUND_PEER_ADDR", &b.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    ))
    .await
}

/// One HTTP/1.1 GET over `send`; Ok(body) only for a 200 from B's app naming the caller.
pub async fn get_on(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<String, String> {
    let req = Request::get(path)
        .header("host", "b.shop")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 || !body.contains("app=b") {
        return Err(format!("{status}: {body}"));
    }
    Ok(body)
}

pub async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// A GET on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut send = connect(addr).await?;
    tokio::time::timeout(Duration::from_secs(10), get_on(&mut send, path))
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Continuous traffic: `workers` loops of new-connection requests plus one keep-alive loop.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = {
            let (ok, failed, errors) = (ok.clone(), failed.clone(), errors.clone());
            move |r: Result<String, String>| match r {
                Ok(_) => {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.lock().unwrap().push(e);
                }
            }
        };
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (stop, record) = (stop.clone(), record.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    record(get(addr, "/new-connection").await);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        let (stop2, record) = (stop.clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            let mut send = match connect(addr).await {
                Ok(s) => s,
                Err(e) => return record(Err(e)),
            };
            while !stop2.load(Ordering::SeqCst) {
                record(get_on(&mut send, "/keep-alive").await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        Self {
            stop,
            ok,
            failed,
            errors,
            tasks,
        }
    }

    /// Stops and returns (succeeded, failed, the first few errors).
    pub async fn stop(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let errors = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errors,
        )
    }
}

/// Waits until the control plane's CA version differs from `previous` (it loaded the step), both
/// sidecars hold certificates issued under it and the control plane counts them as current;
/// returns that CA version.
async fn all_on_current_ca(m: &Mesh, step: &str, previous: &str) -> String {
    let cp_ca = m.cp.running.ca.clone();
    let tracker = m.cp.running.policy_tracker.clone();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    loop {
        let version = cp_ca.borrow().version();
        let on = |s: &RunningSidecar| s.current().is_some_and(|t| t.ca_version == version);
        if version != previous && on(&m.a) && on(&m.b) && tracker.on_ca_version(&version) == 2 {
            println!(
                "{step}: both sidecars re-certified under CA {version} in {} ms",
                started.elapsed().as_millis()
            );
            return version;
        }
        assert!(
            Instant::now() < deadline,
            "{step}: sidecars did not re-certify"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rotate_under_load(from: KeyAlgorithm, to: KeyAlgorithm) {
    let m = mesh(from, &[]).await;
    let dir = m.cp.dir.path().to_owned();
    let old_root = m.cp.running.ca.borrow().root_der().clone();
    let first = all_on_current_ca(&m, "start", "").await;
    let outbound = m.a.outbound_addr.unwrap();
    let load = Load::start(outbound, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("{}", rotation::prepare(&dir, TRUST_DOMAIN, to).unwrap());
    let staged = all_on_current_ca(&m, "prepare", &first).await;
    assert_ne!(staged, first);
    assert_eq!(m.a.current().unwrap().creds.bundle.roots().len(), 2);
    assert_eq!(
        m.cp.running.ca.borrow().root_der(),
        &old_root,
        "the old root still signs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("{}", rotation::activate(&dir, TRUST_DOMAIN).unwrap());
    let active = all_on_current_ca(&m, "activate", &staged).await;
    assert_ne!(active, staged);
    let new_root = m.cp.running.ca.borrow().root_der().clone();
    assert_ne!(new_root, old_root, "the new root signs");
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("{}", rotation::finish(&dir).unwrap());
    all_on_current_ca(&m, "finish", &active).await;
    for s in [&m.a, &m.b] {
        let tls = s.current().unwrap();
        assert_eq!(
            tls.creds.bundle.roots(),
            std::slice::from_ref(&new_root),
            "only the new root is trusted"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, errors) = load.stop().await;
    println!(
        "rotation {from} -> {to}: {ok} requests succeeded, {failed} failed across the whole rotation {errors:?}"
    );
    assert!(ok > 50, "traffic ran throughout ({ok} requests)");
    assert_eq!(failed, 0, "zero failed requests");

    // The old root is gone: a client holding a leaf of the old root is refused by B, and a new
    // sidecar bootstrapped from the rewritten trust-bundle.pem joins under the new root.
    let bundle = std::fs::read_to_string(&m.cp.running.trust_bundle_path).unwrap();
    assert_eq!(
        pqmesh_mtls::x509::certs_from_pem(&bundle).unwrap(),
        vec![new_root.clone()]
    );
    let late = client(&m.cp, "other", &m.b).await;
    get(late.outbound_addr.unwrap(), "/late").await.unwrap();
    assert_eq!(
        metric(
            &m.cp.running.metrics.registry,
            "pqmesh_ca_reloads_total",
            &[("outcome", "invalid")]
        ),
        0.0,
        "no step was seen half-done"
    );
    assert!(m.app_stats.requests.load(Ordering::SeqCst) >= ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_root_rotation_under_load_fails_no_request() {
    rotate_under_load(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_an_ecdsa_to_an_ml_dsa_65_root_fails_no_request() {
    rotate_under_load(KeyAlgorithm::EcdsaP256, KeyAlgorithm::MlDsa65).await;
}

#[tokio::test]
async fn an_invalid_ca_change_changes_nothing() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let before = all_on_current_ca(&m, "start", "").await;
    let paths = pqmesh_control_plane::ca::CaPaths::in_dir(m.cp.dir.path());
    std::fs::write(
        &paths.extra_roots,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let registry = m.cp.running.metrics.registry.clone();
    eventually("the bad edit was seen and refused", || {
        metric(
            &registry,
            "pqmesh_ca_reloads_total",
            &[("outcome", "invalid")],
        ) >= 1.0
    })
    .await;
    assert_eq!(m.cp.running.ca.borrow().version(), before);
    assert_eq!(m.a.current().unwrap().ca_version, before);
    get(m.a.outbound_addr.unwrap(), "/still-fine")
        .await
        .unwrap();
}

/// An operator who activates without waiting after `prepare`: the control plane's serving
/// certificate already chains to a root the sidecars' certificates do not carry. They still
/// re-certify, because the bundle pushed on the policy stream is trusted for the control plane
/// (without it they would be locked out of Certify for good).
#[tokio::test]
async fn activating_without_waiting_does_not_lock_sidecars_out() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let dir = m.cp.dir.path().to_owned();
    let first = all_on_current_ca(&m, "start", "").await;
    rotation::prepare(&dir, TRUST_DOMAIN, KeyAlgorithm::MlDsa65).unwrap();
    rotation::activate(&dir, TRUST_DOMAIN).unwrap();
    all_on_current_ca(&m, "prepare+activate at once", &first).await;
    let new_root = m.cp.running.ca.borrow().root_der().clone();
    for s in [&m.a, &m.b] {
        assert!(s
            .current()
            .unwrap()
            .creds
            .bundle
            .roots()
            .contains(&new_root));
    }
    get(m.a.outbound_addr.unwrap(), "/after").await.unwrap();
}
