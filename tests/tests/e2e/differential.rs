//! Differential suite: the app must receive exactly what the policy checked, judged by servers we
//! did not write. Every variant of `tests/differential/corpus.jsonl` (raw HTTP/1.1 bytes, h2c
//! upgrades, HTTP/2 frames) is sent over a real PQ mTLS connection with a valid `shop/web`
//! certificate (or plaintext to a PERMISSIVE port) to an in-process sidecar (`shop/api`, policies
//! pushed by a local-mode control plane) in front of a stock server — Python's wsgiref, gunicorn
//! (stock, and with `--header-map dangerous` as gunicorn < 22 behaves), Node 24's http/http2, the
//! JDK's com.sun.net.httpserver — running an echo app that logs what *that server* interpreted.
//! One oracle (`pqmesh_tests::differential::oracle`) then checks every request an app received:
//! (a) the identity it read is the caller's (absent for plaintext), (b) the method and path it
//! interpreted are allowed by the policy's intent under every reading a server might apply, and
//! (c) variants the contract refuses never reached it. A fourth port has the identity-only policy
//! and is an HTTP relay port (`PQMESH_HTTP_RELAY_PORTS`: bytes relayed unparsed): every HTTP/1
//! variant goes there too, and the app must never read an identity or get a protocol switch.
//! The table goes to
//! `target/reliability/differential-<server>.md`.
//!
//! What it cannot show: servers not in the list (Tomcat, IIS, nginx, Go's net/http) are only
//! approximated by the oracle's path readings; frameworks above the server (routing, method
//! overrides honoured by a middleware) are modelled, not run; it sends each variant once, so
//! timing-dependent races (a request split across reads, slow upgrades) are not explored; only
//! Node gets the HTTP/2 prior-knowledge variants (the others do not speak it); and it judges the
//! sidecar's inbound side only (no outbound, no token policies).
//! Needs python3 with gunicorn, Node 24 and a JDK (`./test.sh` installs them): `#[ignore]` for a
//! bare `cargo test`, run by ./test.sh, and a missing runtime fails the test.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_mtls::KeyExchangePolicy;
use pqmesh_tests::differential::corpus::{self, Expect, Over, Variant};
use pqmesh_tests::differential::servers::{self, Kind, StockServer};
use pqmesh_tests::differential::{oracle, wire, RoutedOriginalDst};
use pqmesh_tests::*;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

fn policies(ports: &servers::Ports) -> String {
    format!(
        r#"
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {{name: echo-rules, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  ports: [{rules}]
  peers: ["shop/web"]
  rules: [{{methods: [GET], paths: ["/orders/**"]}}]
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {{name: echo-plaintext, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  peers: ["*"]
  ports: [{plain}]
  mtls: PERMISSIVE
  rules: [{{methods: [GET], paths: ["/orders/**"]}}]
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {{name: echo-identity-only, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  ports: [{peers}, {relay}]
  peers: ["shop/web"]
"#,
        rules = ports.rules,
        plain = ports.plain,
        peers = ports.peers,
        relay = ports.relay,
    )
}

struct Outcome {
    variant: usize,
    over: Over,
    status: String,
    received: Vec<oracle::Received>,
    violations: Vec<String>,
}

/// Runs the whole corpus against one stock server behind a fresh mesh, prints and saves the
/// table, and fails with every violation.
async fn differential(kind: Kind) {
    let corpus = corpus::load();
    let server = servers::start(kind).await;
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    cp.write_policy("echo.yaml", &policies(&server.ports), 3)
        .await;
    let routes = Arc::new(RoutedOriginalDst::default());
    let relay_port = server.ports.relay.to_string();
    let env = with(
        cp.sidecar_env("api", ECDSA),
        &[
            ("PQMESH_WORKLOAD_LABELS", "app=echo"),
            ("PQMESH_HTTP_RELAY_PORTS", &relay_port),
        ],
    );
    let config = pqmesh_sidecar::config::Config::from_env(&env).expect("sidecar config");
    let b = pqmesh_sidecar::start_with(config, routes.clone())
        .await
        .expect("sidecar starts");
    tokio::time::timeout(Duration::from_secs(20), b.ready())
        .await
        .expect("sidecar got a certificate");
    eventually("the sidecar runs the three pushed policies", || {
        b.policy().is_some_and(|p| p.policy.policies.len() == 3)
    })
    .await;
    let creds = crate::handshake_policy::credentials_for(&cp, "web").await;
    let api_id = spiffe("api").parse().expect("SPIFFE ID");
    let tls = creds
        .creds
        .client_config(
            &api_id,
            KeyExchangePolicy::HybridOnly,
            &[pqmesh_sidecar::ALPN_MESH],
        )
        .expect("client config");
    let caller = spiffe("web");

    // The four ports (three policies; the identity-only one also on the HTTP relay port) run
    // side by side; the app logs which port a request came in on.
    let server = Arc::new(server);
    let corpus = Arc::new(corpus);
    let (routes, inbound) = (routes.clone(), b.inbound_addr);
    let mut runs = Vec::new();
    for over in [Over::Mtls, Over::Plain, Over::PeersOnly, Over::Relay] {
        let (server, corpus, routes, tls) =
            (server.clone(), corpus.clone(), routes.clone(), tls.clone());
        let caller = caller.clone();
        runs.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for (i, variant) in corpus.iter().enumerate() {
                let sent = match over {
                    // HTTP/2 with prior knowledge is never relayed (the sniffer sends it to the
                    // HTTP/2 path), so the relay port gets every HTTP/1 variant and nothing else.
                    Over::Relay => !variant.prior_knowledge_h2(),
                    _ => {
                        variant.over.contains(&over) && (!variant.prior_knowledge_h2() || server.h2)
                    }
                };
                if !sent {
                    continue;
                }
                let app_port = server.ports.for_over(over);
                server.take_received(app_port); // stragglers of the previous variant are not this one's
                let config = (over != Over::Plain).then(|| tls.clone());
                let status = match wire::connect(inbound, app_port, &routes, config).await {
                    Ok(io) => wire::statuses(&wire::exchange(io, &variant.parts).await),
                    Err(e) => format!("connect: {e}"),
                };
                tokio::time::sleep(Duration::from_millis(40)).await;
                let received = server.take_received(app_port);
                let violations = oracle::judge(variant, over, &caller, &received);
                outcomes.push(Outcome {
                    variant: i,
                    over,
                    status,
                    received,
                    violations,
                });
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for run in runs {
        outcomes.extend(run.await.expect("a run panicked"));
    }
    outcomes.sort_by_key(|o| (o.variant, o.over as u8));
    report(&server, &corpus, &outcomes);
}

fn report(server: &StockServer, corpus: &[Variant], outcomes: &[Outcome]) {
    let mut md = format!(
        "Differential suite against {} — corpus: {} variants from {} lines, {} runs here\n\n\
         | variant | over | expect | app received | status | verdict |\n|---|---|---|---:|---|---|\n",
        server.version,
        corpus.len(),
        corpus::lines(),
        outcomes.len()
    );
    let mut failures = String::new();
    let mut failed = 0;
    for o in outcomes {
        let v = &corpus[o.variant];
        let expect = match v.expect {
            Expect::Refuse => "refuse",
            Expect::Receive => "receive",
            Expect::Any => "-",
        };
        let verdict = if o.violations.is_empty() {
            "ok"
        } else {
            "**FAIL**"
        };
        let _ = writeln!(
            md,
            "| {} | {} | {expect} | {} | {} | {verdict} |",
            v.id.escape_debug().to_string().replace('|', "\\|"),
            o.over.name(),
            o.received.len(),
            o.status,
        );
        if !o.violations.is_empty() {
            failed += 1;
            let _ = writeln!(
                failures,
                "\n- {} [{}] on {} (status {}):\n  bytes: {}",
                v.id.escape_debug(),
                o.over.name(),
                server.name,
                o.status,
                v.shown()
            );
            for why in &o.violations {
                let _ = writeln!(failures, "  * {why}");
            }
            for r in &o.received {
                let _ = writeln!(failures, "  app got: {}", r.line);
            }
        }
    }
    let _ = writeln!(
        md,
        "\n{failed} of {} runs violate the contract.",
        outcomes.len()
    );
    println!("\n{md}");
    let dir = report::results_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join(format!("differential-{}.md", server.name)),
            format!("{md}\n## Violations\n{failures}"),
        );
    }
    assert!(
        failed == 0,
        "{failed} of {} runs against {} let the app receive what the policy did not check:{failures}",
        outcomes.len(),
        server.version
    );
}

macro_rules! against {
    ($($name:ident => $kind:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs python3 + gunicorn, Node 24 and a JDK; run by ./test.sh"]
        async fn $name() {
            differential($kind).await;
        }
    )*};
}

against! {
    differential_wsgiref => Kind::Wsgiref,
    differential_gunicorn => Kind::Gunicorn,
    differential_gunicorn_header_map_dangerous => Kind::GunicornDangerous,
    differential_node_http => Kind::Node,
    differential_java_httpserver => Kind::Java,
}
