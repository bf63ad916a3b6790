//! Policy streams survive control-plane restarts: the sidecar keeps enforcing its last good
//! policy while the control plane is away, reconnects, says which version it runs, and is not
//! sent (or made to re-apply) the same snapshot again; a change made while it was away arrives.

use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;

fn policy(path: &str) -> String {
    format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n  peers: [\"shop/web\"]\n  rules: [{{methods: [GET], paths: [\"{path}\"]}}]\n"
    )
}

#[tokio::test]
async fn a_restarted_control_plane_resumes_policy_streams_without_reapplying() {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["api"]).await;
    cp.write_policy("orders.yaml", &policy("/orders/**"), 1)
        .await;
    let b = sidecar(with(
        cp.sidecar_env("api", KeyAlgorithm::EcdsaP256),
        &[("PQMESH_WORKLOAD_LABELS", "app=orders")],
    ))
    .await;
    let v1 = b.policy().unwrap().version.clone();
    let applied = || {
        metric(
            &b.metrics.registry,
            "pqmesh_policy_updates_total",
            &[("outcome", "applied")],
        )
    };
    assert_eq!(applied(), 1.0);

    // Crash and restart on the same address: B keeps v1 meanwhile, then resumes with v1.
    let cp = cp.restart().await;
    let tracker = cp.running.policy_tracker.clone();
    eventually_async("B reconnected to the new control plane", || {
        let t = tracker.clone();
        async move { t.acked_count() == (1, 1) }
    })
    .await;
    assert_eq!(b.policy().unwrap().version, v1);
    assert_eq!(
        applied(),
        1.0,
        "the same version is not sent and applied again"
    );
    assert_eq!(
        metric(
            &cp.running.metrics.registry,
            "pqmesh_policy_snapshots_sent_total",
            &[]
        ),
        0.0
    );

    // A change made while B is connected to the new control plane arrives and is ACKed.
    cp.write_policy("orders.yaml", &policy("/v2/**"), 1).await;
    eventually_async("B applied the change", || async {
        b.policy().unwrap().version != v1
    })
    .await;
    assert_eq!(applied(), 2.0);
    eventually_async("and ACKed it", || {
        let t = tracker.clone();
        async move {
            t.policy_status()
                .get("shop/orders")
                .is_some_and(|p| p.acked == 1)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Outside review 9, judged by the app behind B. B's AccessPolicy admits only `shop/admin`; B's
/// own allow-list (`PQMESH_INBOUND_ALLOW`) would admit `shop/web`. F2: a copy of the policy in a
/// file read first, admitting `shop/web`, is the refused duplicate — the version in force stays.
/// F1: an invalid edit keeps the last accepted version, and after a control-plane restart
/// (which forgets what was accepted) the workload is still governed by policy: web stays
/// refused, where it used to reach the app through the allow-list.
#[tokio::test]
async fn invalid_edits_and_duplicates_never_open_a_workload_across_restarts() {
    let locked = "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {name: locked, namespace: shop}\n\
                  spec:\n  selector: {matchLabels: {app: api}}\n  peers: [\"shop/admin\"]\n";
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web", "api"]).await;
    cp.write_policy("locked.yaml", locked, 1).await;
    let (app, _, stats) = http_app::start("api").await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", KeyAlgorithm::EcdsaP256),
            &[
                ("PQMESH_WORKLOAD_LABELS", "app=api"),
                ("PQMESH_INBOUND_ALLOW", "shop/web"),
            ],
        ),
        Some(app),
    )
    .await;
    cp.set_endpoints(
        &format!("endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n", b.inbound_addr.port()),
        1,
    )
    .await;
    let a = sidecar_redirected(
        cp.sidecar_env("web", KeyAlgorithm::EcdsaP256),
        Some(b.inbound_addr),
    )
    .await;
    let out = a.outbound_addr.unwrap();
    let served = || stats.requests.load(std::sync::atomic::Ordering::SeqCst);
    let status = |path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(out).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer).await;
        answer.lines().next().unwrap_or("").to_owned()
    };
    assert!(status("/first").await.contains("403"));

    // F2: a duplicate in a file that sorts first.
    let dir = cp.dir.path().join("policies");
    let policies = || {
        metric(
            &cp.running.metrics.registry,
            "pqmesh_policy_objects_rejected",
            &[],
        )
    };
    std::fs::write(
        dir.join("a-copy.yaml"),
        locked.replace("shop/admin", "shop/web"),
    )
    .unwrap();
    eventually("the control plane refused the copy", || policies() == 1.0).await;
    assert!(status("/duplicate").await.contains("403"));
    std::fs::remove_file(dir.join("a-copy.yaml")).unwrap();
    eventually("the copy is gone", || policies() == 0.0).await;

    // F1: an invalid edit, then a restart.
    std::fs::write(dir.join("locked.yaml"), format!("{locked}  mtls_typo: 1\n")).unwrap();
    eventually("the control plane refused the edit", || policies() == 1.0).await;
    assert!(status("/edited").await.contains("403"));
    let v1 = b.policy().unwrap().version.clone();
    let cp = cp.restart().await;
    eventually("B got the restarted control plane's snapshot", || {
        b.policy().is_some_and(|p| p.version != v1)
    })
    .await;
    let answer = status("/restarted").await;
    assert!(answer.contains("403"), "{answer}");
    assert_eq!(served(), 0, "web never reached the app");
    drop(cp);
}
