//! `policy-fanout [N...]`: how long until N connected sidecars run a changed policy.
//! Starts a real control plane (local mode), opens N `Policy/Watch` streams over hybrid-PQ mTLS
//! (one connection each, as N sidecars would), waits for every initial snapshot and ACK, then
//! edits the policy file and measures the time until all N streams ACKed the new version.
//! The figure includes local mode's file polling (up to 250 ms); the push itself is reported as
//! "reload → all ACKed". Prints a table and one `RESULT {json}` line per size; no thresholds.
//! The streams live in child processes (this binary with `--client`), at most
//! `STREAMS_PER_PROCESS` each: one process cannot hold 10,000 client and 10,000 server
//! connections under the 20,000 open-file limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pqmesh_mtls::tls::ALPN_H2;
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy};
use pqmesh_proto::policy::v1::policy_client::PolicyClient;
use pqmesh_proto::policy::v1::watch_request::Kind;
use pqmesh_proto::policy::v1::{Ack, WatchRequest, Workload};
use pqmesh_sidecar::config::TokenSource;
use pqmesh_sidecar::identity::{obtain, GrpcCertifier};
use pqmesh_tests::{metric, ControlPlane};
use tokio::sync::mpsc;

fn policy(scope: &str) -> String {
    format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n  peers: [\"shop/*\"]\n  rules: [{{methods: [GET], paths: [\"/{scope}/**\"]}}]\n"
    )
}

const STREAMS_PER_PROCESS: usize = 2500;

#[tokio::main]
async fn main() {
    pqmesh_mtls::provider::install_default();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        return client_process(&args[2..]).await;
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    println!("| sidecars | connect + first snapshot ACKed | file write → all ACKed | reload → all ACKed | per-ACK p50 / p99 (control plane histogram) |");
    println!("|---:|---:|---:|---:|---:|");
    for n in sizes {
        run(n).await;
    }
}

async fn run(n: usize) {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    cp.write_policy("orders.yaml", &policy("v1"), 1).await;
    let started = Instant::now();
    let exe = std::env::current_exe().expect("own path");
    let mut children = Vec::new();
    let mut first = 0;
    while first < n {
        let count = STREAMS_PER_PROCESS.min(n - first);
        children.push(
            std::process::Command::new(&exe)
                .arg("--client")
                .arg(cp.running.grpc_addr.to_string())
                .arg(&cp.running.trust_bundle_path)
                .arg(cp.running.identity.to_string())
                .arg(cp.token("web"))
                .arg(first.to_string())
                .arg(count.to_string())
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("start a client process"),
        );
        first += count;
    }
    let tracker = cp.running.policy_tracker.clone();
    wait_until(Duration::from_secs(300), || {
        let (acked, connected) = tracker.acked_count();
        acked == n && connected == n
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "only {:?} of {n} sidecars ACKed the first snapshot",
            tracker.acked_count()
        )
    });
    let connect = started.elapsed();

    let registry = &cp.running.metrics.registry;
    let reloads_before = metric(
        registry,
        "pqmesh_policy_reloads_total",
        &[("outcome", "ok")],
    );
    let t0 = Instant::now();
    std::fs::write(cp.dir.path().join("policies/orders.yaml"), policy("v2")).unwrap();
    let mut reloaded_at = None;
    let done = wait_until(Duration::from_secs(300), || {
        if reloaded_at.is_none()
            && metric(
                registry,
                "pqmesh_policy_reloads_total",
                &[("outcome", "ok")],
            ) > reloads_before
        {
            reloaded_at = Some(Instant::now());
        }
        let streams = tracker.streams();
        streams.len() == n
            && streams
                .iter()
                .all(|s| s.acked_version.is_some() && s.acked_version == s.sent_version)
            && metric(registry, "pqmesh_policy_acks_total", &[]) >= (2 * n) as f64
    })
    .await;
    let t_done = Instant::now();
    assert!(done.is_some(), "not all sidecars ACKed the change");
    let total = t_done - t0;
    let push = reloaded_at.map(|r| t_done - r).unwrap_or_default();
    let (p50, p99) = quantiles(registry);
    println!(
        "| {n} | {:.0} ms | {:.0} ms | {:.0} ms | {p50} / {p99} |",
        connect.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        push.as_secs_f64() * 1e3,
    );
    println!(
        "RESULT {{\"sidecars\":{n},\"connect_ms\":{:.1},\"write_to_all_acked_ms\":{:.1},\"reload_to_all_acked_ms\":{:.1}}}",
        connect.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        push.as_secs_f64() * 1e3,
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    cp.running.kill();
}

/// `--client ADDR TRUST_BUNDLE CP_ID TOKEN FIRST COUNT`: gets a certificate like a sidecar, opens
/// COUNT Watch streams (pods FIRST..), ACKs every snapshot; ends when stdin closes (the parent
/// exits or kills it).
async fn client_process(args: &[String]) {
    let [addr, bundle, cp_id, token, first, count] = args else {
        panic!("usage: policy-fanout --client ADDR TRUST_BUNDLE CP_ID TOKEN FIRST COUNT");
    };
    let (first, count): (usize, usize) =
        (first.parse().expect("FIRST"), count.parse().expect("COUNT"));
    let cp_id: pqmesh_mtls::SpiffeId = cp_id.parse().expect("CP_ID");
    let bundle = pqmesh_mtls::TrustBundle::from_pem(
        &std::fs::read_to_string(bundle).expect("read trust bundle"),
    )
    .expect("trust bundle");
    let certifier = GrpcCertifier {
        addr: addr.clone(),
        server_id: cp_id.clone(),
        kx: KeyExchangePolicy::HybridOnly,
        token: TokenSource::Inline(token.clone()),
        bundle: std::sync::Mutex::new(bundle),
    };
    let creds = obtain(
        &certifier,
        KeyAlgorithm::EcdsaP256,
        KeyExchangePolicy::HybridOnly,
        None,
    )
    .await
    .expect("certificate");
    let config = creds
        .creds
        .client_config(&cp_id, KeyExchangePolicy::HybridOnly, &[ALPN_H2])
        .expect("client config");
    for i in first..first + count {
        let (config, addr) = (config.clone(), addr.clone());
        tokio::spawn(async move { fake_sidecar(i, addr, config).await });
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    // Parent gone → stdin closes → exit.
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
}

fn note_retry(i: usize, e: &tonic::transport::Error) {
    if i.is_multiple_of(1000) {
        eprintln!("stream {i}: connect failed ({e}), retrying");
    }
}

async fn fake_sidecar(i: usize, addr: String, config: Arc<rustls::ClientConfig>) {
    // Like a real sidecar, retry with jittered back-off: in a 10,000-connection storm the
    // listen backlog overflows and some handshakes are reset.
    let mut attempt = 0u32;
    let channel = loop {
        match tonic::transport::Endpoint::from_static("http://pqmesh-control-plane")
            .connect_timeout(Duration::from_secs(60))
            .connect_with_connector(pqmesh_mtls::grpc_tls::tls_connector(
                addr.clone(),
                config.clone(),
            ))
            .await
        {
            Ok(c) => break c,
            Err(e) if attempt < 20 => {
                attempt += 1;
                let ms = 100 * u64::from(attempt.min(10)) + rand::random::<u64>() % 200;
                note_retry(i, &e);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Err(e) => panic!("stream {i}: connect failed 20 times: {e}"),
        }
    };
    let (tx, rx) = mpsc::channel(4);
    let hello = Workload {
        namespace: "shop".into(),
        pod_name: format!("orders-{i}"),
        labels: [("app".to_owned(), "orders".to_owned())].into(),
        ports: vec![],
        current_version: String::new(),
        ..Default::default()
    };
    tx.send(WatchRequest {
        kind: Some(Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let mut stream = PolicyClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    while let Ok(Some(snapshot)) = stream.message().await {
        // A real sidecar decodes and applies here; the bench ACKs what it received.
        let _ = tx
            .send(WatchRequest {
                kind: Some(Kind::Ack(Ack {
                    version: snapshot.version,
                    ..Default::default()
                })),
            })
            .await;
    }
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(())
}

/// p50/p99 of `pqmesh_policy_push_seconds` (bucket upper bounds).
fn quantiles(registry: &prometheus::Registry) -> (String, String) {
    let fams = registry.gather();
    let Some(h) = fams
        .iter()
        .find(|f| f.name() == "pqmesh_policy_push_seconds")
        .and_then(|f| f.get_metric().first())
    else {
        return ("-".into(), "-".into());
    };
    let h = h.get_histogram();
    let total = h.get_sample_count() as f64;
    let q = |p: f64| {
        h.get_bucket()
            .iter()
            .find(|b| b.cumulative_count() as f64 >= p * total)
            .map(|b| format!("≤{} ms", b.upper_bound() * 1e3))
            .unwrap_or_else(|| "> 2.5 s".into())
    };
    (q(0.5), q(0.99))
}
