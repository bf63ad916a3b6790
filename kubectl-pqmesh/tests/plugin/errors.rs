//! What the plugin says about bad news: classical key exchange, NACKs, expiry, unreachable or
//! broken endpoints, usage errors.

use super::support::*;

use pqmesh_tests::*;
use serde_json::{json, Value};

#[tokio::test]
async fn classical_key_exchange_nacks_and_expiry_are_flagged() {
    // A sidecar in migration mode that accepted classical X25519 from an old peer.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dump = json!({
        "config": {"inbound": {"mode": "STRICT"}},
        "certificate": {"spiffe_id": spiffe("api"), "serial": "0A", "not_before": now - 7200,
            "not_after": now - 3600, "signature_scheme": "ML-DSA-65", "trust_bundle_roots": 2},
        "policy": {"version": "v7", "access_policies": ["shop/orders"], "token_issuers": [
            {"name": "shop/corp", "issuer": "https://id.example", "jwks_uri": "https://id.example/jwks",
             "introspection": {"endpoint": "https://id.example/introspect", "client_id": "gw", "client_secret": "leaked-by-a-bug"}}]}
    });
    let metrics = "# TYPE pqmesh_tls_handshakes_total counter\n\
        pqmesh_tls_handshakes_total{direction=\"inbound\",group=\"X25519MLKEM768\",signature_scheme=\"ML-DSA-65\"} 5\n\
        pqmesh_tls_handshakes_total{direction=\"inbound\",group=\"X25519\",signature_scheme=\"ecdsa_secp256r1_sha256\"} 2\n\
        pqmesh_tls_handshake_failures_total{direction=\"inbound\",reason=\"peer_not_allowed\"} 1\n\
        pqmesh_certificate_renewals_total{outcome=\"ok\"} 3\n\
        pqmesh_certificate_renewals_total{outcome=\"error\"} 2\n\
        pqmesh_policy_updates_total{outcome=\"applied\"} 3\n\
        pqmesh_policy_updates_total{outcome=\"rejected\"} 1\n\
        pqmesh_policy_decisions_total{decision=\"deny\",reason=\"insufficient_scope\"} 4\n\
        pqmesh_policy_decisions_total{decision=\"allow\",reason=\"allowed\"} 10\n";
    let sidecar = url(canned_routes(vec![
        ("/config_dump", "200 OK", dump.to_string()),
        ("/metrics", "200 OK", metrics.to_owned()),
    ])
    .await);
    let status = json!({
        "connected_sidecars": 2, "sidecars_on_current_version": 0,
        "policies": {"shop/orders": {"selected": 2, "acked": 0, "rejected": 1}},
        "sidecars": [
            {"identity": spiffe("api"), "pod": "orders-0", "policies": ["shop/orders"], "sent_version": "v8", "acked_version": "v7", "nack": ["v8", "two issuers claim iss https://id.example"]},
            {"identity": spiffe("web"), "pod": "web-0", "policies": [], "sent_version": "v3", "acked_version": null, "nack": null}
        ]
    });
    let cp_metrics = format!(
        "pqmesh_ca_root_expiry_timestamp_seconds {}\npqmesh_serving_cert_expiry_timestamp_seconds {}\n",
        now + 10 * 86_400,
        now + 1_800
    );
    let cp = url(canned_routes(vec![
        ("/live", "200 OK", "ok\n".into()),
        ("/ready", "503 Service Unavailable", "not ready\n".into()),
        ("/metrics", "200 OK", cp_metrics),
        ("/policy_status", "200 OK", status.to_string()),
    ])
    .await);

    let run = plugin(&["identity", "--admin-url", &sidecar], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    for want in [
        "inbound X25519 ecdsa_secp256r1_sha256 2 <- not post-quantum",
        "WARNING: 2 inbound handshake(s) negotiated X25519 instead of X25519MLKEM768",
        "WARNING: the workload certificate EXPIRED at",
        "EXPIRED 1h 0m ago",
        "inbound peer_not_allowed 1",
        "Trust bundle: 2 roots",
        "Certify attempts: 2 error, 3 ok",
    ] {
        assert!(
            run.out().contains(want),
            "{want:?} missing in:\n{}",
            run.stdout
        );
    }

    let run = plugin(
        &[
            "policy",
            "orders-0",
            "--admin-url",
            &sidecar,
            "--control-plane-url",
            &cp,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("leaked-by-a-bug"));
    for want in [
        "Policy version: v7",
        "Control plane: the sidecar NACKed version v8: two issuers claim iss https://id.example",
        "Snapshots: 3 applied, 1 rejected",
        "deny insufficient_scope 4",
        "WARNING: the sidecar rejected 1 snapshot(s)",
    ] {
        assert!(
            run.out().contains(want),
            "{want:?} missing in:\n{}",
            run.stdout
        );
    }
    let run = plugin(
        &[
            "policy",
            "--admin-url",
            &sidecar,
            "--control-plane-url",
            &cp,
            "-o",
            "json",
        ],
        &[],
    )
    .await;
    assert!(!run.stdout.contains("leaked-by-a-bug"), "{}", run.stdout);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        v["control_plane"]["acked"], true,
        "v7 is ACKed even though v8 was NACKed"
    );
    assert_eq!(
        v["control_plane"]["nack"],
        json!(["v8", "two issuers claim iss https://id.example"])
    );

    let run = plugin(&["check", "--admin-url", &cp], &[]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    for want in [
        "control plane ready FAIL /ready answered 503: not ready",
        "CA root expiry WARN CA root expires at",
        "serving cert expiry OK",
        "sidecar policy FAIL spiffe://cluster.local/ns/shop/sa/api (pod orders-0) rejected policy version v8: two issuers claim iss https://id.example (it keeps its last good policy)",
        "sidecar policy WARN spiffe://cluster.local/ns/shop/sa/web (pod web-0) has not ACKed version v3 yet (runs none)",
        "sidecars on current policy WARN 2 connected, 0 on the current policy version",
        "2 problems:",
        "3 warnings:",
    ] {
        assert!(run.out().contains(want), "{want:?} missing in:\n{}", run.stdout);
    }
}

#[tokio::test]
async fn unreachable_or_broken_admin_endpoints_are_clear_errors() {
    let dead = format!("http://127.0.0.1:{}", free_port().await);
    for cmd in ["identity", "policy"] {
        let run = plugin(&[cmd, "--admin-url", &dead], &[]).await;
        assert_eq!(run.code, 1, "{cmd}: {}", run.stdout);
        assert!(
            run.stderr.contains(&format!(
                "error: kubectl pqmesh {cmd}: sidecar admin unreachable at {dead}/config_dump"
            )),
            "{cmd}: {}",
            run.stderr
        );
    }
    let run = plugin(&["check", "--admin-url", &dead], &[]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.out().contains("FAIL") && run.out().contains("control-plane admin unreachable at"),
        "{}",
        run.stdout
    );
    assert!(run.out().contains("1 problem:"), "{}", run.stdout);

    // Garbage from the endpoints: an error naming the endpoint, never a panic.
    let junk = url(canned_http("200 OK", "{\"certificate\": [1, 2").await);
    let run = plugin(&["identity", "--admin-url", &junk], &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("returned invalid JSON"),
        "{}",
        run.stderr
    );
    let odd = url(canned_http("200 OK", "{\"certificate\": {\"spiffe_id\": 7}}").await);
    let run = plugin(&["identity", "--admin-url", &odd], &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("certificate.spiffe_id is not a string"),
        "{}",
        run.stderr
    );
    let run = plugin(&["check", "--admin-url", &junk], &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.out().contains("unreadable /metrics") && run.out().contains("invalid JSON"),
        "{}",
        run.stdout
    );
    let down = url(canned_http(
        "503 Service Unavailable",
        "waiting for the first certificate",
    )
    .await);
    let run = plugin(&["identity", "--admin-url", &down], &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("answered 503: waiting for the first certificate"),
        "{}",
        run.stderr
    );

    // Usage errors.
    let run = plugin(&["identity"], &[]).await;
    assert_eq!(run.code, 2, "clap usage error");
    let run = plugin(&["identity", "--admin-url", "127.0.0.1:15000"], &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("missing http:// scheme"),
        "{}",
        run.stderr
    );
}
