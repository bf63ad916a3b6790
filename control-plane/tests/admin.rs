//! The admin listeners: on a network-reachable admin address only the probes and metrics are
//! served; `/policy_status` (every sidecar's identity, pod and policies), `/config_dump`,
//! `/logging` and `POST /shutdown` only on the loopback-bound local admin address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local_dir(tag: &str) -> Dir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "pqmesh-cp-admin-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bootstrap-tokens.yaml"), "tokens: []\n").unwrap();
    Dir(dir)
}

async fn start(dir: &Dir, admin: &str, local: &str) -> pqmesh_control_plane::RunningControlPlane {
    let env: HashMap<String, String> = [
        ("PQMESH_GRPC_ADDR", "127.0.0.1:0"),
        ("PQMESH_ADMIN_ADDR", admin),
        ("PQMESH_ADMIN_LOCAL_ADDR", local),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = pqmesh_control_plane::config::Config::from_env(dir.0.clone(), &env).unwrap();
    pqmesh_control_plane::start(config)
        .await
        .expect("control plane starts")
}

/// One HTTP/1.1 request over loopback; returns the status code.
async fn status(addr: SocketAddr, method: &str, path: &str) -> u16 {
    let target = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let mut tcp = tokio::net::TcpStream::connect(target).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

#[tokio::test]
async fn a_network_admin_address_serves_probes_and_metrics_only() {
    let dir = local_dir("split");
    let cp = start(&dir, "0.0.0.0:0", "127.0.0.1:0").await;
    assert_ne!(cp.admin_addr.port(), cp.admin_local_addr.port());
    assert!(cp.admin_local_addr.ip().is_loopback());
    for path in ["/live", "/ready", "/metrics"] {
        assert_eq!(status(cp.admin_addr, "GET", path).await, 200, "{path}");
        assert_eq!(
            status(cp.admin_local_addr, "GET", path).await,
            200,
            "{path}"
        );
    }
    // Refused on the admin address even though this caller is on loopback: the split is by
    // listener, not by the caller's address (a proxy in the pod would make everyone loopback).
    for (method, path) in [
        ("GET", "/policy_status"),
        ("GET", "/config_dump"),
        ("GET", "/logging"),
        ("POST", "/logging?level=trace"),
        ("POST", "/shutdown"),
        ("GET", "/policy_status/"),
        ("GET", "/metrics/../policy_status"),
    ] {
        assert_eq!(
            status(cp.admin_addr, method, path).await,
            404,
            "{method} {path}"
        );
    }
    assert_eq!(
        status(cp.admin_local_addr, "GET", "/policy_status").await,
        200
    );
    assert_eq!(
        status(cp.admin_local_addr, "GET", "/config_dump").await,
        200
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn a_loopback_admin_address_serves_everything_on_one_listener() {
    let dir = local_dir("loopback");
    let cp = start(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    assert_eq!(cp.admin_addr, cp.admin_local_addr);
    assert_eq!(status(cp.admin_addr, "GET", "/policy_status").await, 200);
    assert_eq!(status(cp.admin_addr, "GET", "/live").await, 200);
    cp.shutdown().await;
}
