//! The differential suite's harness (the test is `tests/tests/e2e/differential.rs`): request
//! variants as data (`tests/differential/corpus.jsonl`), stock HTTP servers running echo apps
//! (`tests/differential/`), a raw client over PQ mTLS or plaintext, and the one oracle that judges
//! what each server says it received.

pub mod corpus;
pub mod oracle;
pub mod servers;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use tokio::net::TcpStream;

/// The folder with the echo apps and the corpus.
pub fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("differential")
}

/// `SO_ORIGINAL_DST` for the in-process sidecar, by client source port: the harness registers
/// where each connection "was going" (which app port, hence which policy) before it connects, so
/// one sidecar fronts every server and port as iptables would in a pod.
#[derive(Default)]
pub struct RoutedOriginalDst {
    routes: Mutex<HashMap<u16, u16>>,
}

impl RoutedOriginalDst {
    pub fn route(&self, client_port: u16, app_port: u16) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client_port, app_port);
    }
}

impl pqmesh_sidecar::original_dst::OriginalDst for RoutedOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        let client = stream.peer_addr()?.port();
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .get(&client)
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port))
            .ok_or_else(|| io::Error::other(format!("no route for client port {client}")))
    }
}
