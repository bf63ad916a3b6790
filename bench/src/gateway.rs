//! The edge-gateway scenario (issue 13): outside HTTPS into `pqmesh-gateway` (one HTTPRoute,
//! PathPrefix `/`, no EdgePolicy) → mesh mTLS → the backend's pqmesh sidecar → the HTTP/1.1
//! backend every pair uses, next to nginx as an HTTPS reverse proxy with the same route, in the
//! same run, with the same load generator (rustls, TLS 1.3, keep-alive, `Host`/SNI `localhost`,
//! the listener's hostname). nginx straight to the backend has one hop fewer than the gateway;
//! `edge-nginx-mtls` adds the hop (nginx HTTPS → nginx mTLS, stream → backend) so the hop counts
//! match. All keys and certificates are made at run time (`peers::make_peer_certs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use crate::load::{self, Connect, Request, TlsTarget};
use crate::peers::{self, free_port, ControlPlaneProcess, PEER_SERVER_NAME};
use crate::procstat::{self, CpuMeter};
use crate::report::{added, med, Results, Run};

/// `mesh-bench --only gateway` selects every system below.
pub const SCENARIO: &str = "gateway";
pub const GATEWAY: &str = "pqmesh-gateway";
/// nginx (http module) as an HTTPS reverse proxy straight to the backend.
pub const NGINX: &str = "edge-nginx";
/// The same nginx, forwarding over mTLS to a second nginx (the peers' stream server) → backend.
pub const NGINX_MTLS: &str = "edge-nginx-mtls";
/// The gateway's service account (bootstrap token in the control plane).
pub const GATEWAY_SA: &str = "gateway";

/// Durations and load of one measurement (mesh-bench's options).
pub struct Load {
    pub rate: u32,
    pub conns: u32,
    pub sat_conns: u32,
    pub warmup: Duration,
    pub seconds: u64,
}

/// One edge proxy: `front` faces the load generator; `back` is the second hop (the backend's
/// sidecar, or nginx's mTLS stream server), if any.
pub struct Edge {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub front: u32,
    pub back: Option<u32>,
    /// The outside key exchange the load generator's client negotiated.
    pub group: String,
    children: Vec<Child>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        peers::stop(&mut self.children);
    }
}

/// TLS 1.3 only, no client certificate, trusting the run's CA; offers X25519MLKEM768, X25519
/// and P-256 (the server picks: the gateway prefers the hybrid, nginx on OpenSSL 3.0 has none).
pub fn outside_client(dir: &Path) -> Arc<ClientConfig> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![
        kx_group::X25519MLKEM768,
        kx_group::X25519,
        kx_group::SECP256R1,
    ];
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// The gateway's local-mode directory: one HTTPS listener (hostname `localhost`, the run's
/// ECDSA P-256 server certificate), one HTTPRoute `/` → Service `shop/app` served by `sidecar`.
fn gateway_dir(dir: &Path, work: &Path, port: u16, sidecar: SocketAddr) {
    use std::os::unix::fs::PermissionsExt;
    write(&dir.join("config/edge.yaml"), &format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: pqmesh}}\nspec: {{controllerName: pqmesh.io/gateway}}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  gatewayClassName: pqmesh\n  listeners:\n    - name: https\n      port: {port}\n      protocol: HTTPS\n      hostname: {PEER_SERVER_NAME}\n      tls: {{certificateRefs: [{{name: edge-cert}}]}}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: shop}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n    - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n      backendRefs: [{{name: app, port: 80}}]\n"
    ));
    write(&dir.join("backends.yaml"), &format!(
        "services:\n  - name: shop/app\n    port: 80\n    endpoints: [{{address: \"{sidecar}\", identity: \"{}\"}}]\n",
        peers::API_ID
    ));
    let secrets = dir.join("secrets.yaml");
    write(&secrets, "secrets: []\n");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let certs = dir.join("certs/shop/edge-cert");
    std::fs::create_dir_all(&certs).expect("certs dir");
    std::fs::copy(work.join("server.pem"), certs.join("tls.crt")).expect("tls.crt");
    std::fs::copy(work.join("server.key"), certs.join("tls.key")).expect("tls.key");
}

fn start_gateway(bin: &Path, work: &Path, cp: &ControlPlaneProcess, backend: SocketAddr) -> Edge {
    let (addr, sidecar, admins) = (free_port(), free_port(), [free_port(), free_port()]);
    let mesh = |c: &mut Command, sa: &str| {
        c.env("PQMESH_CONTROL_PLANE_ADDR", cp.grpc.to_string())
            .env("PQMESH_TRUST_BUNDLE", cp.trust_bundle())
            .env("PQMESH_BOOTSTRAP_TOKEN", cp.token(sa))
            .env("PQMESH_KEY_ALG", "ecdsa-p256")
            .env("PQMESH_LOG", "warn");
    };
    // The backend's sidecar, as the `pqmesh` pair's server side, admitting only the gateway.
    let mut s = Command::new(bin.join("pqmesh-sidecar"));
    mesh(&mut s, "api");
    s.env("PQMESH_ADMIN_ADDR", admins[0].to_string())
        .env("PQMESH_INBOUND_ADDR", sidecar.to_string())
        .env("PQMESH_INBOUND_APP_ADDR", backend.to_string())
        .env("PQMESH_INBOUND_ALLOW", format!("shop/{GATEWAY_SA}"))
        .env("PQMESH_OUTBOUND_ADDR", free_port().to_string());
    let s = peers::spawn(&mut s, &work.join("edge-sidecar.log"));
    let dir = work.join("gateway");
    gateway_dir(&dir, work, addr.port(), sidecar);
    let mut g = Command::new(bin.join("pqmesh-gateway"));
    mesh(&mut g, GATEWAY_SA);
    g.env("PQMESH_GATEWAY_DIR", &dir)
        .env("PQMESH_GATEWAY_LISTEN_HOST", "127.0.0.1")
        .env("PQMESH_GATEWAY_ADMIN_ADDR", admins[1].to_string());
    let g = peers::spawn(&mut g, &work.join("gateway.log"));
    for admin in admins {
        peers::wait_ready(admin);
    }
    Edge {
        name: GATEWAY,
        addr,
        front: g.id(),
        back: Some(s.id()),
        group: String::new(),
        children: vec![g, s],
    }
}

/// nginx's http module: HTTPS in (TLS 1.3, X25519, the run's ECDSA P-256 certificate), one
/// `location /` to a keep-alive upstream; `mtls`: that upstream is the peers' nginx stream server
/// (mTLS) in front of the backend instead of the backend itself.
fn start_nginx(work: &Path, backend: SocketAddr, mtls: bool) -> Edge {
    let (addr, d) = (free_port(), work.display());
    let name = if mtls { NGINX_MTLS } else { NGINX };
    let common = |side: &str| {
        format!(
            "daemon off;\nmaster_process on;\nworker_processes auto;\nworker_rlimit_nofile 20000;\npid {d}/{side}.pid;\nerror_log {d}/{side}.log warn;\nevents {{ worker_connections 20000; }}\n"
        )
    };
    let (mut children, mut back, upstream) = (Vec::new(), None, free_port());
    let (server, scheme, ssl) = if mtls {
        let s = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n".to_owned()
            + &common(&format!("{name}-back"))
            + &format!(
            "stream {{ server {{ listen {upstream} ssl; ssl_protocols TLSv1.3; ssl_ecdh_curve X25519; ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key; ssl_client_certificate {d}/ca.pem; ssl_verify_client on; ssl_session_cache shared:edge:10m; proxy_pass {backend}; }} }}\n"
        );
        let ssl = format!("proxy_ssl_protocols TLSv1.3; proxy_ssl_certificate {d}/client.pem; proxy_ssl_certificate_key {d}/client.key; proxy_ssl_trusted_certificate {d}/ca.pem; proxy_ssl_verify on; proxy_ssl_name {PEER_SERVER_NAME}; proxy_ssl_server_name on; proxy_ssl_session_reuse on;");
        (upstream, "https", (s, ssl))
    } else {
        (backend, "http", (String::new(), String::new()))
    };
    if mtls {
        let cfg = work.join(format!("{name}-back.cfg"));
        write(&cfg, &ssl.0);
        let mut c = Command::new("nginx");
        c.arg("-p").arg(work).arg("-c").arg(&cfg);
        let c = peers::spawn(&mut c, &work.join(format!("{name}-back.out")));
        back = Some(c.id());
        children.push(c);
        peers::wait_listening(upstream, "nginx mTLS hop");
    }
    let front = common(name) + &format!(
        "http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  upstream app {{ server {server}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}\n  server {{\n    listen {addr} ssl;\n    server_name {PEER_SERVER_NAME};\n    ssl_protocols TLSv1.3;\n    ssl_ecdh_curve X25519;\n    ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;\n    location / {{ proxy_pass {scheme}://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; {} }}\n  }}\n}}\n",
        ssl.1
    );
    let cfg = work.join(format!("{name}.cfg"));
    write(&cfg, &front);
    let mut c = Command::new("nginx");
    c.arg("-p").arg(work).arg("-c").arg(&cfg);
    let c = peers::spawn(&mut c, &work.join(format!("{name}.out")));
    let front = c.id();
    children.insert(0, c);
    peers::wait_listening(addr, name);
    Edge {
        name,
        addr,
        front,
        back,
        group: String::new(),
        children,
    }
}

/// One request through `t`; the negotiated outside group and TLS version.
async fn probe(t: &TlsTarget, request: &Request) -> std::io::Result<String> {
    let mut tls = t.connect().await?;
    tls.write_all(request.bytes()).await?;
    load::read_response(&mut tls, &mut Vec::new()).await?;
    let conn = tls.get_ref().1;
    let group = conn.negotiated_key_exchange_group().map(|g| g.name());
    Ok(format!(
        "{} ({})",
        group
            .map(|g| format!("{g:?}"))
            .unwrap_or_else(|| "?".into()),
        conn.protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
    )
    .replace("TLSv1_3", "TLS 1.3"))
}

/// The edge systems of the run, started and answering 200 through their route.
pub struct EdgeBench {
    pub edges: Vec<Edge>,
    client: Arc<ClientConfig>,
    pub request: Request,
}

impl EdgeBench {
    pub async fn start(
        bin: &Path,
        work: &Path,
        cp: &ControlPlaneProcess,
        backend: SocketAddr,
    ) -> Self {
        let mut edges = vec![
            start_gateway(bin, work, cp, backend),
            start_nginx(work, backend, false),
            start_nginx(work, backend, true),
        ];
        let b = EdgeBench {
            edges: Vec::new(),
            client: outside_client(work),
            request: Request::with_host(PEER_SERVER_NAME),
        };
        for e in &mut edges {
            let t = b.target(e);
            let deadline = Instant::now() + Duration::from_secs(30);
            e.group = loop {
                match probe(&t, &b.request).await {
                    Ok(g) => break g,
                    Err(err) if Instant::now() > deadline => panic!("{}: {err}", e.name),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            eprintln!(
                "{}: front pid {}, back pid {:?}, outside {}",
                e.name, e.front, e.back, e.group
            );
        }
        EdgeBench { edges, ..b }
    }

    fn target(&self, e: &Edge) -> TlsTarget {
        TlsTarget {
            addr: e.addr,
            connector: TlsConnector::from(self.client.clone()),
            server_name: PEER_SERVER_NAME,
        }
    }

    /// One repeat of every edge system (rotated order): latency and CPU at the fixed rate, then
    /// saturation; appended to `systems`.
    pub async fn measure(&self, l: &Load, repeat: usize, systems: &mut BTreeMap<String, Vec<Run>>) {
        let mut order: Vec<&Edge> = self.edges.iter().collect();
        let shift = repeat % order.len().max(1);
        order.rotate_left(shift);
        for e in order {
            let t = self.target(e);
            let pids: Vec<u32> = [Some(e.front), e.back].into_iter().flatten().collect();
            let meter = CpuMeter::start(&pids);
            let secs = Duration::from_secs(l.seconds);
            let lat =
                load::latency(t.clone(), &self.request, l.rate, l.conns, l.warmup, secs).await;
            let cpu = meter.vcpu();
            let per_k = 1000.0 / lat.achieved_rps.max(1.0);
            let sat = load::saturation(t, &self.request, l.sat_conns, l.warmup, secs).await;
            let run = Run {
                p50_ms: lat.ms(0.5),
                p99_ms: lat.ms(0.99),
                p999_ms: lat.ms(0.999),
                achieved_rps: lat.achieved_rps,
                errors: lat.errors + sat.errors,
                cpu_client: cpu[0] * per_k,
                cpu_server: cpu.get(1).map_or(0.0, |c| c * per_k),
                sat_rps: sat.per_second,
                rss_after_client: procstat::rss_mib(e.front),
                rss_after_server: e.back.map_or(0.0, procstat::rss_mib),
                ..Default::default()
            };
            eprintln!(
                "  {:15} p50 {:.3} ms  p99 {:.3} ms  {:.0} rps  cpu {:.3}+{:.3}  saturation {:.0} rps  errors {}",
                e.name, run.p50_ms, run.p99_ms, run.achieved_rps, run.cpu_client, run.cpu_server,
                run.sat_rps, run.errors
            );
            systems.entry(e.name.into()).or_default().push(run);
        }
    }

    /// (system, outside group) for the report.
    pub fn groups(&self) -> Vec<(String, String)> {
        self.edges
            .iter()
            .map(|e| (e.name.to_owned(), e.group.clone()))
            .collect()
    }
}

fn f(v: f64, d: usize) -> String {
    if v.is_finite() {
        format!("{v:.d$}")
    } else {
        "–".into()
    }
}

/// Every edge system's medians, as figures (system, added p50, added p99, saturation, vCPU/1k
/// front, back).
fn figures(systems: &BTreeMap<String, Vec<Run>>) -> Vec<(&'static str, [f64; 5])> {
    let none = Vec::new();
    let direct = systems.get("direct").unwrap_or(&none);
    [GATEWAY, NGINX, NGINX_MTLS]
        .into_iter()
        .filter_map(|n| {
            let x = systems.get(n)?;
            Some((
                n,
                [
                    added(x, direct, |r| r.p50_ms),
                    added(x, direct, |r| r.p99_ms),
                    med(x, |r| r.sat_rps),
                    med(x, |r| r.cpu_client),
                    med(x, |r| r.cpu_server),
                ],
            ))
        })
        .collect()
}

/// One stderr line per edge system, with the ratios to nginx (`--no-extras` runs print these).
pub fn summary(systems: &BTreeMap<String, Vec<Run>>) {
    let figs = figures(systems);
    let nginx = figs.iter().find(|(n, _)| *n == NGINX).map(|x| x.1);
    for (n, v) in &figs {
        let r = |i: usize| nginx.map_or(f64::NAN, |g| v[i] / g[i]);
        eprintln!(
            "EDGE {n}: added p50 {} ms p99 {} ms; saturation {} rps; vCPU/1k rps {} + {}; vs {NGINX}: p50 {}× p99 {}× saturation {}× vCPU {}×",
            f(v[0], 3), f(v[1], 3), f(v[2], 0), f(v[3], 3), f(v[4], 3),
            f(r(0), 2), f(r(1), 2), f(r(2), 2), f((v[3] + v[4]) / nginx.map_or(f64::NAN, |g| g[3] + g[4]), 2)
        );
    }
}

/// The edge rows of the Targets table (empty when the scenario did not run).
pub fn target_rows(r: &Results) -> String {
    let figs = figures(&r.systems);
    let Some((_, g)) = figs.iter().find(|(n, _)| *n == GATEWAY) else {
        return String::new();
    };
    let others: Vec<_> = figs.iter().filter(|(n, _)| *n != GATEWAY).collect();
    let nginx = others.iter().find(|(n, _)| *n == NGINX).map(|x| x.1);
    let ratio = |i: usize| f(g[i] / nginx.map_or(f64::NAN, |x| x[i]), 2) + "×";
    let list = |cell: &dyn Fn(&[f64; 5]) -> String| {
        others
            .iter()
            .map(|(n, v)| format!("{n} {}", cell(v)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let group = |n: &str| {
        r.edge_groups
            .iter()
            .find(|(s, _)| s == n)
            .map_or("?".into(), |x| x.1.clone())
    };
    let total = |v: &[f64; 5]| v[3] + v[4];
    let mut s = String::new();
    let _ = writeln!(s, "| edge gateway: added latency p50 / p99, outside HTTPS ({} rps, keep-alive, 1 KiB) → {GATEWAY} → mesh mTLS → backend sidecar → app; outside key exchange {} | report, vs nginx HTTPS reverse proxy | {} / {} ms | {} (nginx: {}) | {} / {} of {NGINX} | reported |", r.rate, group(GATEWAY), f(g[0], 3), f(g[1], 3), list(&|v| format!("{} / {} ms", f(v[0], 3), f(v[1], 3))), group(NGINX), ratio(0), ratio(1));
    let _ = writeln!(s, "| edge gateway: requests/s at saturation, outside HTTPS, {} keep-alive connections | report | {} rps | {} | {} of {NGINX} | reported |", r.sat_conns, f(g[2], 0), list(&|v| format!("{} rps", f(v[2], 0))), ratio(2));
    let nt = nginx.map_or(f64::NAN, |x| total(&x));
    let _ = writeln!(s, "| edge gateway: vCPU per 1,000 rps, gateway + backend sidecar | report | {} vCPU ({} + {}) | {} | {}× of {NGINX} | reported |", f(total(g), 3), f(g[3], 3), f(g[4], 3), list(&|v| format!("{} vCPU", f(total(v), 3))), f(total(g) / nt, 2));
    s
}

/// The "Edge gateway" detail table (empty when the scenario did not run).
pub fn section(r: &Results) -> String {
    let figs = figures(&r.systems);
    if figs.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n### Edge gateway (issue 13; medians, outside HTTPS)\n\n");
    s += "`pqmesh-gateway`: load generator → HTTPS → gateway → mesh mTLS (X25519MLKEM768) → the backend's sidecar → app. `edge-nginx`: → HTTPS → nginx (http module, reverse proxy, keep-alive upstream) → app, one hop fewer. `edge-nginx-mtls`: → HTTPS → nginx → mTLS (X25519) → nginx (stream) → app, the gateway's hop count. Front = the process the client reaches, back = the second hop.\n\n";
    s += "| system | p50 / p99 / p99.9 ms | added p50 / p99 ms | achieved rps | vCPU/1k rps front + back | saturation rps | RSS after front / back MiB | outside key exchange | errors |\n|---|---:|---:|---:|---:|---:|---:|---|---:|\n";
    for (n, v) in &figs {
        let x = &r.systems[*n];
        let group = r.edge_groups.iter().find(|(s, _)| s == n);
        let _ = writeln!(
            s,
            "| {n} | {} / {} / {} | {} / {} | {} | {} + {} | {} | {} / {} | {} | {} |",
            f(med(x, |r| r.p50_ms), 3),
            f(med(x, |r| r.p99_ms), 3),
            f(med(x, |r| r.p999_ms), 3),
            f(v[0], 3),
            f(v[1], 3),
            f(med(x, |r| r.achieved_rps), 0),
            f(v[3], 3),
            f(v[4], 3),
            f(v[2], 0),
            f(med(x, |r| r.rss_after_client), 1),
            f(med(x, |r| r.rss_after_server), 1),
            group.map_or("?", |g| g.1.as_str()),
            x.iter().map(|r| r.errors).sum::<u64>()
        );
    }
    s += "\nPer repeat (p50 / p99 ms, saturation rps):\n\n";
    for (n, _) in &figs {
        let cells: Vec<String> = r.systems[*n]
            .iter()
            .map(|r| {
                format!(
                    "{} / {}, {}",
                    f(r.p50_ms, 3),
                    f(r.p99_ms, 3),
                    f(r.sat_rps, 0)
                )
            })
            .collect();
        let _ = writeln!(s, "- {n}: {}", cells.join(" · "));
    }
    s + "\n"
}
