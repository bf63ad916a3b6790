//! The chart's dashboards and alert rules against a real Prometheus (Debian's `prometheus`
//! package, which `./test.sh` installs) scraping a running local mesh: a control plane, two
//! sidecars (A calls B through its outbound, transparent mode with discovery) and a real OAuth
//! server for token policies. Traffic goes both ways through the mesh (allowed, denied by rule,
//! refused for a missing token), one bad `endpoints.yaml` edit is made and undone; then EVERY
//! panel query of every dashboard in charts/pqmesh/files/dashboards (Grafana variables
//! substituted) must return at least one series through Prometheus's HTTP API, the alert rules
//! must load, and the request counts both sides report must agree with the traffic sent.
//! Fails (never skips) when `prometheus` is missing. `#[ignore]`d for a bare `cargo test` (it
//! needs Node 24 and oidc-provider too); `./test.sh` always runs it.
//!
//! Opt-in, for a picture of a dashboard from real data: with `PQMESH_RENDER_DASHBOARD=out.png`
//! set, the test then sends about a minute more of traffic in three phases and has
//! tests/prometheus/render/render.mjs (pqmesh's own minimal renderer of the Grafana JSON, not
//! Grafana; needs `npm install` there and Debian's `chromium`) draw
//! `PQMESH_RENDER_DASHBOARD_FILE` (default `pqmesh-overview.json`) from this Prometheus into
//! out.png; the test fails when rendering fails. Unset, nothing of this runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::oauth::{self, OAuthServer};
use pqmesh_tests::*;
use serde_json::Value;
use tokio::net::TcpStream;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;
/// What the dashboards' `$__rate_interval` becomes: several 1-second scrapes.
const RATE_INTERVAL: &str = "15s";

fn chart_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/pqmesh")
        .join(rel)
}

/// A `prometheus` server on a free loopback port, killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(binary: &Path, control_plane: SocketAddr, sidecars: &[SocketAddr]) -> Self {
        let dir = TempDir::new("prometheus");
        let targets = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{rules}\"]\n\
             scrape_configs:\n\
             \x20 - job_name: control-plane\n    static_configs: [{{targets: [{cp}]}}]\n\
             \x20 - job_name: sidecar\n    static_configs: [{{targets: [{sc}]}}]\n",
            rules = chart_file("files/alerts.yaml").display(),
            cp = targets(&[control_plane]),
            sc = targets(sidecars),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while get(addr, "/-/ready").await.map(|(s, _)| s) != Some(200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not become ready on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    /// An instant query: the result vector (or scalar, as one element).
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = get(self.addr, &path)
            .await
            .ok_or("prometheus unreachable")?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        match &json["data"]["result"] {
            Value::Array(v) => Ok(v.clone()),
            other => Ok(vec![other.clone()]),
        }
    }

    /// The sum of an instant query's sample values.
    async fn sum(&self, promql: &str) -> f64 {
        self.query(promql)
            .await
            .unwrap_or_else(|e| panic!("{promql}: {e}"))
            .iter()
            .filter_map(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 GET: (status, body); `None` when the connection fails.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "prometheus")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A request through A's outbound; returns the status B's side answered.
async fn call(out: SocketAddr, path: &str, bearer: Option<&str>) -> u16 {
    let tcp = TcpStream::connect(out).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "orders.shop");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

fn policies(oauth: &OAuthServer, app_port: u16) -> String {
    let issuer = fixtures::corp_issuer(oauth, "  maxTokenLifetimeSeconds: 3600\n", "");
    let rules = "    - {methods: [GET], paths: [\"/orders/**\"], scopes: [\"orders:read\"]}\n";
    format!(
        "{issuer}---\n{}",
        fixtures::orders_policy(&[app_port], r#"["shop/*"]"#, rules)
    )
}

/// Every `(dashboard, panel title, expr)` of the shipped dashboards, Grafana's variables
/// replaced by what a user picking "All" over the last hour would send.
fn panel_queries() -> Vec<(String, String, String)> {
    let dir = chart_file("files/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "dashboards in {}: {files:?}",
        dir.display()
    );
    let mut out = Vec::new();
    for file in files {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let dashboard = json["title"].as_str().unwrap_or("?").to_owned();
        let panels = json["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{dashboard} has no panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{dashboard} / {title} has no query");
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{dashboard} / {title}: a target without expr"))
                    .replace("$__rate_interval", RATE_INTERVAL)
                    .replace("$__range", "1h")
                    .replace("$namespace", ".*")
                    .replace("$instance", ".*");
                assert!(
                    !expr.contains('$'),
                    "{dashboard} / {title}: unsubstituted variable in {expr}"
                );
                out.push((dashboard.clone(), title.clone(), expr));
            }
        }
    }
    out
}

#[tokio::test]
#[ignore = "needs prometheus, Node 24 + oidc-provider; run by ./test.sh"]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    // First, so a missing prometheus fails at once with the fix, before any set-up.
    let binary = external_tool("PQMESH_PROMETHEUS", "prometheus");
    let queries = panel_queries();
    let oauth = OAuthServer::start(300).await;
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let (app, _tcp, _app_stats) = http_app::start("orders").await;
    cp.write_secrets(&format!(
        "secrets:\n  - namespace: shop\n    name: gateway\n    data: {{client-secret: {}}}\n",
        oauth::GATEWAY_CLIENT_SECRET
    ));
    cp.write_policy("orders.yaml", &policies(&oauth, app.port()), 2)
        .await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[("PQMESH_WORKLOAD_LABELS", "app=orders")],
        ),
        Some(app),
    )
    .await;
    let endpoints = format!(
        "endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n",
        b.inbound_addr.port()
    );
    cp.set_endpoints(&endpoints, 1).await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    let out = a.outbound_addr.unwrap();

    let started = std::time::SystemTime::now();
    let prometheus = Prometheus::start(
        &binary,
        cp.running.admin_addr,
        &[a.admin_addr, b.admin_addr],
    )
    .await;
    let mut up = 0.0;
    for _ in 0..100 {
        up = prometheus.sum("sum(up)").await;
        if up == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up, 3.0, "all three targets scraped");

    // A bad endpoints.yaml edit (second entry, line 6), then the good file again.
    let path = cp.dir.path().join("endpoints.yaml");
    std::fs::write(
        &path,
        format!("{endpoints}  - ip: 10.0.0.300\n    namespace: shop\n    serviceAccount: x\n"),
    )
    .unwrap();
    let registry = &cp.running.metrics.registry;
    eventually("the bad edit is counted", || {
        metric(
            registry,
            "pqmesh_config_reloads_total",
            &[("file", "endpoints.yaml"), ("outcome", "invalid")],
        ) == 1.0
    })
    .await;

    // Traffic over a few scrape intervals: allowed, denied by rule, refused for no token.
    let token = oauth.token("orders:read").await;
    let mut sent = 0u32;
    let mut statuses = std::collections::BTreeMap::new();
    for round in 0..8 {
        for (path, bearer) in [
            ("/orders/1", Some(token.as_str())),
            ("/admin", Some(token.as_str())),
            ("/orders/2", None),
        ] {
            *statuses.entry(call(out, path, bearer).await).or_insert(0) += 1;
            sent += 1;
        }
        if round == 3 {
            cp.set_endpoints(&endpoints, 1).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        statuses,
        [(200, 8), (401, 8), (403, 8)].into_iter().collect(),
        "allowed, no rule matched, token missing"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every panel query returns at least one series.
    let mut empty = Vec::new();
    println!("{} panel queries:", queries.len());
    for (dashboard, title, expr) in &queries {
        match prometheus.query(expr).await {
            Ok(result) if !result.is_empty() => {
                let first = result[0]["value"][1].as_str().unwrap_or("?").to_owned();
                println!(
                    "  {dashboard} / {title}: {} series (first {first})",
                    result.len()
                );
            }
            Ok(_) => empty.push(format!("{dashboard} / {title}: no series for {expr}")),
            Err(e) => empty.push(format!("{dashboard} / {title}: {e} for {expr}")),
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    // The numbers agree with the traffic, on both sides.
    let sent = f64::from(sent);
    for (what, promql, want) in [
        (
            "outbound requests counted by A (every status class)",
            "sum(pqmesh_http_request_duration_seconds_count{direction=\"outbound\"})",
            sent,
        ),
        (
            "inbound requests counted by B",
            "sum(pqmesh_http_request_duration_seconds_count{direction=\"inbound\"})",
            sent,
        ),
        (
            "A's outbound 4xx towards B's identity",
            "sum(pqmesh_peer_requests_total{direction=\"outbound\",status_class=\"4xx\",peer=\"spiffe://cluster.local/ns/shop/sa/api\"})",
            16.0,
        ),
        (
            "B's inbound 2xx from A's identity",
            "sum(pqmesh_peer_requests_total{direction=\"inbound\",status_class=\"2xx\",peer=\"spiffe://cluster.local/ns/shop/sa/web\"})",
            8.0,
        ),
        (
            "B's denials by rule",
            "sum(pqmesh_policy_decisions_total{direction=\"inbound\",decision=\"deny\",reason=\"no_rule_matched\"})",
            8.0,
        ),
        (
            "B's denials for a missing token",
            "sum(pqmesh_policy_decisions_total{direction=\"inbound\",decision=\"deny\",reason=\"token_missing\"})",
            8.0,
        ),
        (
            "bad endpoints.yaml edits counted",
            "sum(pqmesh_config_reloads_total{file=\"endpoints.yaml\",outcome=\"invalid\"})",
            1.0,
        ),
        (
            "endpoints.yaml valid again",
            "min(pqmesh_config_valid{file=\"endpoints.yaml\"})",
            1.0,
        ),
        ("build_info from all three", "count(pqmesh_build_info)", 3.0),
        (
            "resident memory reported by all three",
            "count(process_resident_memory_bytes > 0)",
            3.0,
        ),
    ] {
        let got = prometheus.sum(promql).await;
        println!("  {what}: {got} (want {want})");
        assert_eq!(got, want, "{what}: {promql}");
    }
    assert!(
        prometheus
            .sum("sum(pqmesh_token_authentications_total{outcome=\"accepted\"})")
            .await
            >= 8.0,
        "token authentications counted"
    );

    // The real Prometheus loaded the chart's alert rules.
    let (status, rules) = get(prometheus.addr, "/api/v1/rules").await.unwrap();
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let groups = rules["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(status, 200);
    assert!(
        groups.len() >= 4
            && groups
                .iter()
                .all(|g| g["health"].is_null() || g["health"] != "err"),
        "rule groups loaded: {rules}"
    );
    let alerting = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["type"] == "alerting" && r["health"] == "ok")
        .count();
    assert!(alerting >= 13, "alerting rules evaluated ok: {alerting}");

    if let Some(png) = std::env::var_os("PQMESH_RENDER_DASHBOARD") {
        render_dashboard(&prometheus, out, &token, started, Path::new(&png)).await;
    }
}

/// The opt-in picture (see the top of this file): about a minute of traffic whose mix changes
/// every 20 s (allowed only; then half denied by rule; then a third without a token), so the
/// lines have a shape, then render.mjs over the whole run. Bounded: 180 rounds, loopback only.
async fn render_dashboard(
    prometheus: &Prometheus,
    out: SocketAddr,
    token: &str,
    started: std::time::SystemTime,
    png: &Path,
) {
    for round in 0..180u32 {
        let phase = round / 60;
        call(out, "/orders/1", Some(token)).await;
        if phase == 1 || round % 3 == 0 {
            call(out, "/orders/2", Some(token)).await;
        }
        if phase == 1 {
            call(out, "/admin", Some(token)).await;
        }
        if phase == 2 && round % 2 == 0 {
            call(out, "/orders/3", None).await;
        }
        tokio::time::sleep(Duration::from_millis(330)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string()
    };
    let file = std::env::var("PQMESH_RENDER_DASHBOARD_FILE")
        .unwrap_or_else(|_| "pqmesh-overview.json".to_owned());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/render/render.mjs");
    let mut cmd = std::process::Command::new(oauth::node24());
    cmd.arg(&script)
        .arg("--dashboard")
        .arg(chart_file(&format!("files/dashboards/{file}")))
        .arg("--prometheus")
        .arg(format!("http://{}", prometheus.addr))
        .arg("--from")
        .arg(unix(started))
        .arg("--to")
        .arg(unix(std::time::SystemTime::now()))
        .arg("--rate-interval")
        .arg(RATE_INTERVAL)
        .arg("--require-data")
        .arg("--out")
        .arg(png);
    println!("rendering: {cmd:?}");
    // Off the runtime: the sidecars Prometheus scrapes meanwhile run on it.
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("node {}: {e}", script.display()));
    assert!(status.success(), "render.mjs failed ({status})");
    assert!(png.is_file(), "no {}", png.display());
}
