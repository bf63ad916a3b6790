//! `mesh-bench`: every proxy scenario of docs/benchmarks.md in one run, pqmesh and the classical
//! peers side by side, repeated; writes the Markdown report and SVG plots. Started by
//! `bench/run.sh` (which installs the peers and builds in release). No pass/fail thresholds:
//! the report states each target, the measured value and whether it was met.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pqmesh_bench::load::{self, LatencyResult};
use pqmesh_bench::peers::{self, Pair, PEER_SERVER_NAME};
use pqmesh_bench::procstat::{self, CpuMeter};
use pqmesh_bench::report::{self, Fanout, IdleConnections, Issuance, Results, Run};
use pqmesh_bench::{backend, gateway, issuance, jwt};
use pqmesh_mtls::tls::ALPN_MESH;
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy};
use pqmesh_sidecar::config::TokenSource;
use pqmesh_sidecar::identity::{obtain, GrpcCertifier};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The pqmesh pair whose server side enforces the JWT AccessPolicy.
const JWT: &str = "pqmesh-jwt";
/// The pqmesh pair with ML-DSA-65 certificates (handshakes only).
const MLDSA: &str = "pqmesh-mldsa";
/// The pqmesh pair whose server side relays HTTP/1.1 unparsed (`PQMESH_HTTP_RELAY_PORTS`).
const RELAY: &str = "pqmesh-relay";

struct Options {
    repeats: usize,
    seconds: u64,
    warmup: Duration,
    rate: u32,
    conns: u32,
    /// Closed-loop connections of the saturation scenario.
    sat_conns: u32,
    idle_conns: usize,
    idle_conns_peers: usize,
    fanout: Vec<usize>,
    bin_dir: PathBuf,
    out: PathBuf,
    plots: PathBuf,
    command: String,
    /// Only these pairs (default: all).
    only: Option<Vec<String>>,
    /// Latency/CPU only: no bulk, handshakes, idle connections, CA or fan-out (for profiling).
    latency_only: bool,
    /// Skip idle connections, CA issuance and fan-out (A/B runs of the proxy scenarios).
    no_extras: bool,
    /// Saturation only (closed loop), nothing else: for profiling the saturated sidecar.
    saturation_only: bool,
    /// With --no-extras: also the idle-connection memory of every pqmesh pair (A/B of memory).
    ab_idle: bool,
    /// A second pqmesh pair from another build ("pqmesh-baseline", and "pqmesh-jwt-baseline" /
    /// "pqmesh-relay-baseline" when those pairs are wanted), measured in the same run as the
    /// current one: before/after comparisons of a change (with --latency-only or
    /// --no-extras only; the report has no row for it).
    baseline_bin_dir: Option<PathBuf>,
}

const USAGE: &str = "usage: mesh-bench [--smoke] [--repeats N] [--seconds S] [--rate RPS] \
[--conns N] [--sat-conns N] [--idle-conns N] [--idle-conns-peers N] [--fanout N,M] [--bin-dir DIR] \
[--out FILE] [--plots DIR] [--command TEXT] [--only a,b] [--latency-only] [--no-extras] \
[--saturation-only] [--ab-idle] [--baseline-bin-dir DIR]
Runs every scenario of docs/benchmarks.md (pqmesh and the classical peers) and rewrites the
report (--out, default docs/benchmarks.md); bench/run.sh installs the peers and builds first.";

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    const FLAGS: [&str; 6] = [
        "--smoke",
        "--latency-only",
        "--no-extras",
        "--saturation-only",
        "--ab-idle",
        "--help",
    ];
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        let with_value = USAGE.contains(&format!("[{a} "));
        if with_value {
            rest.next();
        } else if !FLAGS.contains(&a.as_str()) {
            eprintln!("mesh-bench: unknown option {a:?}\n{USAGE}");
            std::process::exit(2);
        }
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num =
        |name: &str, default: u64| value(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut o = Options {
        repeats: num("--repeats", 3) as usize,
        seconds: num("--seconds", 10),
        warmup: Duration::from_secs(2),
        rate: num("--rate", 1000) as u32,
        conns: num("--conns", 16) as u32,
        sat_conns: num("--sat-conns", 32) as u32,
        idle_conns: num("--idle-conns", 10_000) as usize,
        idle_conns_peers: num("--idle-conns-peers", 4_000) as usize,
        fanout: value("--fanout")
            .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_else(|| vec![1000, 10_000]),
        bin_dir: value("--bin-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| "target/release".into()),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| "docs/benchmarks.md".into()),
        plots: value("--plots")
            .map(PathBuf::from)
            .unwrap_or_else(|| "docs/benchmarks".into()),
        command: value("--command").unwrap_or_else(|| "bench/run.sh".into()),
        only: value("--only").map(|v| v.split(',').map(str::to_owned).collect()),
        latency_only: args.iter().any(|a| a == "--latency-only"),
        no_extras: args.iter().any(|a| a == "--no-extras"),
        saturation_only: args.iter().any(|a| a == "--saturation-only"),
        ab_idle: args.iter().any(|a| a == "--ab-idle"),
        baseline_bin_dir: value("--baseline-bin-dir").map(PathBuf::from),
    };
    if o.baseline_bin_dir.is_some() && !(o.latency_only || o.no_extras || o.saturation_only) {
        eprintln!(
            "mesh-bench: --baseline-bin-dir needs --latency-only, --saturation-only or --no-extras"
        );
        std::process::exit(2);
    }
    if smoke {
        o.repeats = 1;
        o.seconds = 1;
        o.warmup = Duration::from_millis(300);
        o.rate = 200;
        o.conns = 4;
        o.idle_conns = 200;
        o.idle_conns_peers = 100;
        o.fanout = vec![50];
    }
    o
}

fn classical_config(dir: &Path, resume: bool) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("client.pem"))
        .expect("client.pem")
        .map(|c| c.expect("client cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).expect("client.key");
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

async fn pqmesh_config(
    cp: &peers::ControlPlaneProcess,
    alg: KeyAlgorithm,
    resume: bool,
) -> Arc<ClientConfig> {
    let bundle = pqmesh_mtls::TrustBundle::from_pem(
        &std::fs::read_to_string(cp.trust_bundle()).expect("trust bundle"),
    )
    .expect("bundle");
    let certifier = GrpcCertifier {
        addr: cp.grpc.to_string(),
        server_id: peers::CP_ID.parse().expect("id"),
        kx: KeyExchangePolicy::HybridOnly,
        token: TokenSource::Inline(cp.token("web").to_owned()),
        bundle: std::sync::Mutex::new(bundle),
    };
    let tls = obtain(&certifier, alg, KeyExchangePolicy::HybridOnly, None)
        .await
        .expect("certificate for the load generator");
    let config = tls
        .creds
        .client_config(
            &peers::API_ID.parse().expect("id"),
            KeyExchangePolicy::HybridOnly,
            &[ALPN_MESH],
        )
        .expect("client config");
    let mut config = (*config).clone();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// What is measured on a system.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// The load generator straight to the backend.
    Direct,
    /// Every scenario (pqmesh and the TLS peers).
    Pair,
    /// The plaintext floor: no handshakes.
    Floor,
    /// pqmesh with the JWT AccessPolicy: latency/CPU and saturation with a bearer token.
    JwtPolicy,
    /// pqmesh with an HTTP relay port: latency/CPU, saturation and bulk (handshakes are the
    /// `pqmesh` pair's: the same TLS).
    Relay,
    /// pqmesh with ML-DSA-65 certificates: handshakes only.
    HandshakesOnly,
}

struct Target<'a> {
    name: String,
    kind: Kind,
    request: load::Request,
    pair: Option<&'a Pair>,
    full: Option<Arc<ClientConfig>>,
    resumed: Option<Arc<ClientConfig>>,
    server_name: &'static str,
}

async fn handshake_rates(o: &Options, t: &Target<'_>, run: &mut Run) {
    if let (Some(p), Some(full), Some(resumed)) = (t.pair, &t.full, &t.resumed) {
        let secs = Duration::from_secs(o.seconds.div_ceil(2));
        let f = load::handshakes(p.tls, full.clone(), t.server_name, 8, secs).await;
        let r = load::handshakes(p.tls, resumed.clone(), t.server_name, 8, secs).await;
        run.hs_full = f.per_second;
        run.hs_full_p99_ms = f.hist.value_at_quantile(0.99) as f64 / 1000.0;
        run.hs_resumed = r.per_second;
        run.hs_resumed_fraction = r.resumed_fraction;
        run.errors += f.errors + r.errors;
    }
}

async fn saturate(o: &Options, t: &Target<'_>, entry: SocketAddr, run: &mut Run) {
    let secs = Duration::from_secs(o.seconds);
    let s = load::saturation(entry, &t.request, o.sat_conns, o.warmup, secs).await;
    eprintln!(
        "  {:8} saturation {:.0} rps ({} connections, closed loop), errors {}",
        t.name, s.per_second, o.sat_conns, s.errors
    );
    run.sat_rps = s.per_second;
    run.errors += s.errors;
}

fn rss_after(t: &Target<'_>, run: &mut Run) {
    if let Some(p) = t.pair {
        run.rss_after_client = procstat::rss_mib(p.client_pid);
        run.rss_after_server = procstat::rss_mib(p.server_pid);
    }
}

async fn measure(o: &Options, t: &Target<'_>, backend: SocketAddr, idle: (f64, f64)) -> Run {
    let entry = t.pair.map(|p| p.entry).unwrap_or(backend);
    if t.kind == Kind::HandshakesOnly {
        let nan = f64::NAN;
        let mut run = Run {
            rss_idle_client: idle.0,
            rss_idle_server: idle.1,
            p50_ms: nan,
            p99_ms: nan,
            p999_ms: nan,
            achieved_rps: nan,
            cpu_client: nan,
            cpu_server: nan,
            rss_load_client: nan,
            rss_load_server: nan,
            bulk_mib_s: nan,
            sat_rps: nan,
            ..Default::default()
        };
        handshake_rates(o, t, &mut run).await;
        rss_after(t, &mut run);
        eprintln!(
            "  {:8} hs {:.0}/{:.0} ({:.0}% resumed)  errors {}",
            t.name,
            run.hs_full,
            run.hs_resumed,
            run.hs_resumed_fraction * 100.0,
            run.errors
        );
        return run;
    }
    if o.saturation_only {
        let mut run = Run::default();
        saturate(o, t, entry, &mut run).await;
        return run;
    }
    let pids: Vec<u32> = t
        .pair
        .map(|p| vec![p.client_pid, p.server_pid])
        .unwrap_or_default();
    let meter = CpuMeter::start(&pids);
    let lat: LatencyResult = load::latency(
        entry,
        &t.request,
        o.rate,
        o.conns,
        o.warmup,
        Duration::from_secs(o.seconds),
    )
    .await;
    let cpu = meter.vcpu();
    let mut run = Run {
        p50_ms: lat.ms(0.5),
        p99_ms: lat.ms(0.99),
        p999_ms: lat.ms(0.999),
        achieved_rps: lat.achieved_rps,
        errors: lat.errors,
        curve: report::quantile_points()
            .into_iter()
            .map(|q| (q, lat.ms(q)))
            .collect(),
        rss_idle_client: idle.0,
        rss_idle_server: idle.1,
        ..Default::default()
    };
    if let Some(p) = t.pair {
        let per_k = 1000.0 / lat.achieved_rps.max(1.0);
        run.cpu_client = cpu[0] * per_k;
        run.cpu_server = cpu[1] * per_k;
        run.rss_load_client = procstat::rss_mib(p.client_pid);
        run.rss_load_server = procstat::rss_mib(p.server_pid);
    }
    if o.latency_only {
        return run;
    }
    saturate(o, t, entry, &mut run).await;
    if t.kind == Kind::JwtPolicy {
        rss_after(t, &mut run);
        (run.bulk_mib_s, run.hs_full, run.hs_full_p99_ms) = (f64::NAN, f64::NAN, f64::NAN);
        (run.hs_resumed, run.hs_resumed_fraction) = (f64::NAN, f64::NAN);
        eprintln!(
            "  {:8} p50 {:.3} ms  p99 {:.3} ms  {:.0} rps  cpu {:.3}/{:.3}  errors {}",
            t.name,
            run.p50_ms,
            run.p99_ms,
            run.achieved_rps,
            run.cpu_client,
            run.cpu_server,
            run.errors
        );
        return run;
    }
    run.bulk_mib_s = load::bulk(
        entry,
        4,
        o.warmup / 2,
        Duration::from_secs(o.seconds.div_ceil(2)),
    )
    .await
        / (1024.0 * 1024.0);
    if t.kind == Kind::Relay {
        rss_after(t, &mut run);
        (run.hs_full, run.hs_full_p99_ms) = (f64::NAN, f64::NAN);
        (run.hs_resumed, run.hs_resumed_fraction) = (f64::NAN, f64::NAN);
        eprintln!(
            "  {:8} p50 {:.3} ms  p99 {:.3} ms  {:.0} rps  cpu {:.3}/{:.3}  bulk {:.0} MiB/s  errors {}",
            t.name, run.p50_ms, run.p99_ms, run.achieved_rps, run.cpu_client, run.cpu_server,
            run.bulk_mib_s, run.errors
        );
        return run;
    }
    handshake_rates(o, t, &mut run).await;
    rss_after(t, &mut run);
    eprintln!(
        "  {:8} p50 {:.3} ms  p99 {:.3} ms  {:.0} rps  cpu {:.3}/{:.3}  bulk {:.0} MiB/s  hs {:.0}/{:.0} ({:.0}% resumed)  errors {}",
        t.name, run.p50_ms, run.p99_ms, run.achieved_rps, run.cpu_client, run.cpu_server,
        run.bulk_mib_s, run.hs_full, run.hs_resumed, run.hs_resumed_fraction * 100.0, run.errors
    );
    run
}

async fn idle_connections(
    pair: &Pair,
    config: Arc<ClientConfig>,
    server_name: &'static str,
    n: usize,
) -> IdleConnections {
    let before = procstat::rss_mib(pair.server_pid);
    let t0 = Instant::now();
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = pair.tls;
    let held = load::idle_connections(n, 16, || {
        load::open_idle(connector.clone(), target, server_name)
    })
    .await;
    let open_seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procstat::rss_mib(pair.server_pid);
    let connections = held.len();
    drop(held);
    IdleConnections {
        connections,
        rss_before_mib: before,
        rss_after_mib: after,
        open_seconds,
    }
}

fn fanout(o: &Options) -> Vec<Fanout> {
    let mut cmd = std::process::Command::new(o.bin_dir.join("policy-fanout"));
    cmd.args(o.fanout.iter().map(|n| n.to_string()));
    let out = cmd.output().expect("run policy-fanout");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "policy-fanout failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .map(|v| Fanout {
            sidecars: v["sidecars"].as_u64().unwrap_or(0) as usize,
            connect_ms: v["connect_ms"].as_f64().unwrap_or(f64::NAN),
            write_ms: v["write_to_all_acked_ms"].as_f64().unwrap_or(f64::NAN),
            reload_ms: v["reload_to_all_acked_ms"].as_f64().unwrap_or(f64::NAN),
        })
        .collect()
}

#[tokio::main]
async fn main() {
    pqmesh_mtls::provider::install_default();
    let o = options();
    let work = std::env::temp_dir().join(format!("pqmesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let started = Instant::now();
    peers::make_peer_certs(&work);
    let backend = backend::start().await;
    let wanted = |name: &str| {
        o.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    };
    // The JWT-policy pair's issuer and policy live beside the ECDSA control plane's files.
    let issuer = jwt::Issuer::start().await;
    issuer.write_policy(&work.join("cp-ecdsa"));
    let bearer = load::Request::with_bearer(&issuer.token());
    let cp = peers::ControlPlaneProcess::start(
        &o.bin_dir,
        &work.join("cp-ecdsa"),
        "ecdsa-p256",
        &["web", "api", gateway::GATEWAY_SA],
    );
    let cp_mldsa = wanted(MLDSA).then(|| {
        peers::ControlPlaneProcess::start(
            &o.bin_dir,
            &work.join("cp-mldsa"),
            "ml-dsa-65",
            &["web", "api"],
        )
    });
    let mut pairs = Vec::new();
    if wanted("pqmesh") {
        pairs.push(peers::start_pqmesh(
            "pqmesh",
            &o.bin_dir,
            &cp,
            "ecdsa-p256",
            backend,
            "",
        ));
    }
    if let Some(dir) = &o.baseline_bin_dir {
        pairs.push(peers::start_pqmesh(
            "pqmesh-baseline",
            dir,
            &cp,
            "ecdsa-p256",
            backend,
            "",
        ));
    }
    if wanted(JWT) {
        pairs.push(peers::start_pqmesh(
            JWT,
            &o.bin_dir,
            &cp,
            "ecdsa-p256",
            backend,
            jwt::LABELS,
        ));
        jwt::wait_enforced(pairs.last().expect("pair").entry, &issuer.token()).await;
    }
    if let Some(dir) = o.baseline_bin_dir.as_ref().filter(|_| wanted(JWT)) {
        pairs.push(peers::start_pqmesh(
            &format!("{JWT}-baseline"),
            dir,
            &cp,
            "ecdsa-p256",
            backend,
            jwt::LABELS,
        ));
        jwt::wait_enforced(pairs.last().expect("pair").entry, &issuer.token()).await;
    }
    if wanted(RELAY) {
        pairs.push(peers::start_pqmesh_with(
            RELAY,
            &o.bin_dir,
            &cp,
            "ecdsa-p256",
            backend,
            "",
            &[("PQMESH_HTTP_RELAY_PORTS", backend.port().to_string())],
        ));
    }
    if let Some(dir) = o.baseline_bin_dir.as_ref().filter(|_| wanted(RELAY)) {
        pairs.push(peers::start_pqmesh_with(
            &format!("{RELAY}-baseline"),
            dir,
            &cp,
            "ecdsa-p256",
            backend,
            "",
            &[("PQMESH_HTTP_RELAY_PORTS", backend.port().to_string())],
        ));
    }
    if let Some(cp) = &cp_mldsa {
        pairs.push(peers::start_pqmesh(
            MLDSA,
            &o.bin_dir,
            cp,
            "ml-dsa-65",
            backend,
            "",
        ));
    }
    for name in peers::PEERS
        .into_iter()
        .chain([peers::FLOOR])
        .filter(|n| wanted(n))
    {
        pairs.push(peers::start_peer(name, &work, backend));
    }
    let edge = match wanted(gateway::SCENARIO) {
        true => Some(gateway::EdgeBench::start(&o.bin_dir, &work, &cp, backend).await),
        false => None,
    };
    for p in &pairs {
        eprintln!(
            "{}: client pid {}, server pid {}",
            p.name, p.client_pid, p.server_pid
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Idle memory: started, certificates in hand, no traffic yet.
    let idle: Vec<(f64, f64)> = pairs
        .iter()
        .map(|p| {
            (
                procstat::rss_mib(p.client_pid),
                procstat::rss_mib(p.server_pid),
            )
        })
        .collect();
    let mut targets = vec![Target {
        name: "direct".into(),
        kind: Kind::Direct,
        request: load::Request::default(),
        pair: None,
        full: None,
        resumed: None,
        server_name: PEER_SERVER_NAME,
    }];
    for p in &pairs {
        if p.name == peers::FLOOR {
            // Plaintext: latency, CPU and bulk only, no handshakes or idle mTLS connections.
            targets.push(Target {
                name: p.name.clone(),
                kind: Kind::Floor,
                request: load::Request::default(),
                pair: Some(p),
                full: None,
                resumed: None,
                server_name: PEER_SERVER_NAME,
            });
            continue;
        }
        let kind = if p.name.starts_with(JWT) {
            Kind::JwtPolicy
        } else if p.name == RELAY {
            Kind::Relay
        } else if p.name == MLDSA {
            Kind::HandshakesOnly
        } else {
            Kind::Pair
        };
        let (full, resumed, server_name) = if p.name == MLDSA {
            let cp = cp_mldsa.as_ref().expect("ML-DSA control plane");
            (
                pqmesh_config(cp, KeyAlgorithm::MlDsa65, false).await,
                pqmesh_config(cp, KeyAlgorithm::MlDsa65, true).await,
                "pqmesh.mesh",
            )
        } else if p.name.starts_with("pqmesh") {
            (
                pqmesh_config(&cp, KeyAlgorithm::EcdsaP256, false).await,
                pqmesh_config(&cp, KeyAlgorithm::EcdsaP256, true).await,
                "pqmesh.mesh",
            )
        } else {
            (
                classical_config(&work, false),
                classical_config(&work, true),
                PEER_SERVER_NAME,
            )
        };
        targets.push(Target {
            name: p.name.clone(),
            kind,
            request: if kind == Kind::JwtPolicy {
                bearer.clone()
            } else {
                load::Request::default()
            },
            pair: Some(p),
            full: Some(full),
            resumed: Some(resumed),
            server_name,
        });
    }
    let mut systems: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for repeat in 0..o.repeats {
        eprintln!(
            "repeat {}/{} (direct, then the pairs in rotated order)",
            repeat + 1,
            o.repeats
        );
        let mut order: Vec<usize> = (1..targets.len()).collect();
        let shift = repeat % order.len().max(1);
        order.rotate_left(shift);
        order.insert(0, 0);
        for i in order {
            let idle = if i == 0 { (0.0, 0.0) } else { idle[i - 1] };
            let run = measure(&o, &targets[i], backend, idle).await;
            systems
                .entry(targets[i].name.clone())
                .or_default()
                .push(run);
        }
        if let Some(edge) = &edge {
            let (rate, conns, sat_conns, warmup) = (o.rate, o.conns, o.sat_conns, o.warmup);
            let l = gateway::Load {
                rate,
                conns,
                sat_conns,
                warmup,
                seconds: o.seconds,
            };
            edge.measure(&l, repeat, &mut systems).await;
        }
    }
    gateway::summary(&systems);
    let edge_groups = edge.as_ref().map(|e| e.groups()).unwrap_or_default();
    drop(edge);
    if o.latency_only || o.no_extras || o.saturation_only {
        for (name, runs) in &systems {
            let m = |f: fn(&Run) -> f64| report::med(runs, f);
            eprintln!(
                "{name}: p50 {:.3} ms p99 {:.3} ms cpu {:.3}/{:.3} vCPU per 1k rps, saturation {:.0} rps, idle RSS {:.1}/{:.1} MiB, RSS after load {:.1}/{:.1} MiB, bulk {:.0} MiB/s, handshakes {:.0}/s (medians of {})",
                m(|r| r.p50_ms), m(|r| r.p99_ms), m(|r| r.cpu_client), m(|r| r.cpu_server), m(|r| r.sat_rps),
                m(|r| r.rss_idle_client), m(|r| r.rss_idle_server), m(|r| r.rss_after_client), m(|r| r.rss_after_server),
                m(|r| r.bulk_mib_s), m(|r| r.hs_full), runs.len()
            );
        }
        if o.ab_idle {
            for t in targets[1..]
                .iter()
                .filter(|t| matches!(t.kind, Kind::Pair | Kind::Relay))
            {
                let (Some(p), Some(cfg)) = (t.pair, &t.resumed) else {
                    continue;
                };
                let r = idle_connections(p, cfg.clone(), t.server_name, o.idle_conns).await;
                eprintln!(
                    "{}: {} idle connections: {:.1} → {:.1} MiB, {:.1} KiB per connection",
                    t.name,
                    r.connections,
                    r.rss_before_mib,
                    r.rss_after_mib,
                    (r.rss_after_mib - r.rss_before_mib) * 1024.0 / r.connections.max(1) as f64
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        return;
    }
    eprintln!("idle connections");
    let mut idle_rows = Vec::new();
    for t in targets[1..]
        .iter()
        .filter(|t| matches!(t.kind, Kind::Pair | Kind::Relay))
    {
        let (Some(p), Some(cfg)) = (t.pair, &t.resumed) else {
            continue;
        };
        // Relays hold an app connection per client connection: the same count as the peers,
        // within the descriptor limit.
        let n = if t.name == "pqmesh" {
            o.idle_conns
        } else {
            o.idle_conns_peers
        };
        let r = idle_connections(p, cfg.clone(), t.server_name, n).await;
        eprintln!(
            "  {:8} {} connections: {:.1} → {:.1} MiB",
            t.name, r.connections, r.rss_before_mib, r.rss_after_mib
        );
        idle_rows.push((t.name.clone(), r));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(targets);
    drop(pairs);
    drop(cp);
    drop(cp_mldsa);
    eprintln!("CA issuance");
    let mut issuance_runs = Vec::new();
    for repeat in 0..o.repeats {
        let mut rows = Vec::new();
        for (alg, name) in [
            (KeyAlgorithm::EcdsaP256, "ecdsa-p256"),
            (KeyAlgorithm::MlDsa65, "ml-dsa-65"),
        ] {
            let cp = peers::ControlPlaneProcess::start(
                &o.bin_dir,
                &work.join(format!("cp-{name}-{repeat}")),
                name,
                &["web"],
            );
            let bundle = std::fs::read_to_string(cp.trust_bundle()).expect("bundle");
            let r = issuance::certify_rate(
                cp.grpc,
                &bundle,
                cp.token("web"),
                alg,
                16,
                Duration::from_secs(o.seconds.div_ceil(2)),
            )
            .await;
            eprintln!(
                "  {name}: {:.0}/s p50 {:.2} ms p99 {:.2} ms errors {}",
                r.per_second, r.p50_ms, r.p99_ms, r.errors
            );
            rows.push(Issuance {
                alg: name.into(),
                per_second: r.per_second,
                p50_ms: r.p50_ms,
                p99_ms: r.p99_ms,
                errors: r.errors,
            });
        }
        issuance_runs.push(rows);
    }
    eprintln!("PQ share of a handshake (in memory, same stack)");
    let mut pq_cost = Vec::new();
    for _ in 0..o.repeats {
        let secs = Duration::from_millis(o.seconds * 1000 / 2);
        let hybrid = pqmesh_bench::pqcost::handshakes_per_second(
            &work,
            PEER_SERVER_NAME,
            rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
            secs,
        );
        let classical = pqmesh_bench::pqcost::handshakes_per_second(
            &work,
            PEER_SERVER_NAME,
            rustls::crypto::aws_lc_rs::kx_group::X25519,
            secs,
        );
        eprintln!("  X25519MLKEM768 {hybrid:.0}/s, X25519 {classical:.0}/s");
        pq_cost.push((hybrid, classical));
    }
    eprintln!("policy fan-out");
    let mut fanout_runs = Vec::new();
    for _ in 0..o.repeats {
        let rows = fanout(&o);
        for r in &rows {
            eprintln!("  {} sidecars: connect {:.0} ms, write → all ACKed {:.0} ms, reload → all ACKed {:.0} ms", r.sidecars, r.connect_ms, r.write_ms, r.reload_ms);
        }
        fanout_runs.push(rows);
    }
    let results = Results {
        systems,
        idle: idle_rows,
        issuance: issuance_runs,
        fanout: fanout_runs,
        pq_cost,
        rate: o.rate,
        sat_conns: o.sat_conns,
        seconds: o.seconds,
        repeats: o.repeats,
        edge_groups,
    };
    let took = started.elapsed();
    pqmesh_bench::markdown::write(&results, &o.out, &o.plots, &o.command, took);
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "wrote {} and plots in {} ({:.0} s)",
        o.out.display(),
        o.plots.display(),
        took.as_secs_f64()
    );
}
