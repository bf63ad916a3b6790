//! check, identity and policy with --admin-url against a real control plane and sidecars.

use super::support::*;
use std::time::Duration;

use pqmesh_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn check_reports_a_healthy_control_plane() {
    let (cp, _sidecar) = policy_setup().await;
    let admin = url(cp.running.admin_addr);

    let run = plugin(&["check", "--admin-url", &admin], &[]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for want in [
        "control plane live",
        "control plane ready",
        "CA root expiry",
        "serving cert expiry",
        "1 connected, 1 on the current policy version",
        "pqmesh is healthy.",
    ] {
        assert!(
            run.out().contains(want),
            "{want:?} missing in:\n{}",
            run.stdout
        );
    }
    assert!(!run.out().contains("FAIL"), "{}", run.stdout);

    let run = plugin(&["check", "--admin-url", &admin, "-o", "json"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).expect("-o json prints JSON");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["problems"], json!([]));
    let root = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "CA root expiry")
        .unwrap();
    assert_eq!(root["status"], "ok");

    // A CA root inside the warning window is a warning; with --strict a problem.
    let run = plugin(
        &["check", "--admin-url", &admin, "--root-warn-days", "100000"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "a warning alone is healthy:\n{}", run.stdout);
    assert!(
        run.out().contains("WARN") && run.out().contains("1 warning:"),
        "{}",
        run.stdout
    );
    let run = plugin(
        &[
            "check",
            "--admin-url",
            &admin,
            "--root-warn-days",
            "100000",
            "--strict",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.out()
            .contains("1 problem:\n- CA root expiry: CA root expires at"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn identity_shows_the_spiffe_id_and_the_negotiated_hybrid_group() {
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let app = EchoApp::start().await;
    let b = sidecar(with(
        cp.sidecar_env("api", ECDSA),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &app.addr.to_string()),
            ("PQMESH_INBOUND_ALLOW", &spiffe("web")),
        ],
    ))
    .await;
    let a = sidecar(with(
        cp.sidecar_env("web", ECDSA),
        &[
            ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("PQMESH_OUTBOUND_PEER_ADDR", &b.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    ))
    .await;
    // One connection through the mesh, so a handshake is counted.
    let mut tcp = TcpStream::connect(a.outbound_addr.unwrap()).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, [b"ping".as_slice(), EOF_TRAILER].concat());
    let registry = a.metrics.registry.clone();
    eventually("A counted its handshake", || {
        metric(&registry, "pqmesh_tls_handshakes_total", &[]) >= 1.0
    })
    .await;

    let run = plugin(&["identity", "--admin-url", &url(a.admin_addr)], &[]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for want in [
        "SPIFFE ID: spiffe://cluster.local/ns/shop/sa/web",
        "Signature scheme: ecdsa_secp256r1_sha256",
        "Trust bundle: 1 root",
        "expires in ",
        "outbound X25519MLKEM768 ecdsa_secp256r1_sha256 1",
    ] {
        assert!(
            run.out().contains(want),
            "{want:?} missing in:\n{}",
            run.stdout
        );
    }
    assert!(!run.out().contains("WARNING"), "{}", run.stdout);

    let run = plugin(
        &["identity", "--admin-url", &url(b.admin_addr), "-o", "json"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["certificate"]["spiffe_id"], spiffe("api"));
    assert!(v["certificate"]["expires_in_seconds"].as_i64().unwrap() > 0);
    assert_eq!(v["handshakes"][0]["direction"], "inbound");
    assert_eq!(v["handshakes"][0]["group"], "X25519MLKEM768");
    assert_eq!(v["warnings"], json!([]));
}

#[tokio::test]
async fn policy_shows_the_pushed_version_acked_and_no_secret() {
    let (cp, sidecar) = policy_setup().await;
    let version = sidecar.policy().unwrap().version.clone();

    let run = plugin(
        &[
            "policy",
            "orders-0",
            "--admin-url",
            &url(sidecar.admin_addr),
            "--control-plane-url",
            &url(cp.running.admin_addr),
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for want in [
        format!("Policy version: {version}"),
        "ACKed: the sidecar runs the latest version the control plane sent".to_owned(),
        "AccessPolicies (1)".to_owned(),
        "TokenIssuers (1)".to_owned(),
        "https://login.example.test".to_owned(),
        "gateway".to_owned(),
    ] {
        assert!(
            run.out().contains(&want),
            "{want:?} missing in:\n{}",
            run.stdout
        );
    }
    assert!(
        !run.out().contains(CLIENT_SECRET),
        "secret shown:\n{}",
        run.stdout
    );

    let run = plugin(
        &[
            "policy",
            "--admin-url",
            &url(sidecar.admin_addr),
            "--control-plane-url",
            &url(cp.running.admin_addr),
            "-o",
            "json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.out().contains(CLIENT_SECRET));
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["version"], version.as_str());
    assert_eq!(v["access_policies"].as_array().unwrap().len(), 1);
    assert_eq!(v["token_issuers"][0]["name"], "shop/corp");
    assert_eq!(v["control_plane"]["acked"], true);
    assert_eq!(v["control_plane"]["acked_version"], version.as_str());
    assert_eq!(v["spiffe_id"], spiffe("api"));

    // Without --control-plane-url the sidecar's own view is shown, with no ACK claim.
    let run = plugin(&["policy", "--admin-url", &url(sidecar.admin_addr)], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.out().contains(&version) && !run.out().contains("ACKed"),
        "{}",
        run.stdout
    );
}
