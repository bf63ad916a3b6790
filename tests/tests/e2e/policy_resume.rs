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
