//! The TLS material a sidecar's connections use, rebuilt as one unit on every renewal and
//! handed to new connections through a `watch` channel (established connections keep theirs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pqmesh_mtls::tls::{TlsError, ALPN_MESH};
use pqmesh_mtls::{Credentials, KeyExchangePolicy, SpiffeId};
use rustls::{ClientConfig, ServerConfig};

pub struct MeshTls {
    pub creds: Credentials,
    pub kx: KeyExchangePolicy,
    pub server: Arc<ServerConfig>,
    /// The CA version the certificate was issued under ("" from control planes without one).
    pub ca_version: String,
    /// Client configs per required peer identity, built on first use (they carry the
    /// session-resumption cache, so reusing them matters).
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl MeshTls {
    pub fn new(
        creds: Credentials,
        kx: KeyExchangePolicy,
        ca_version: String,
    ) -> Result<Arc<Self>, TlsError> {
        let server = creds.server_config(kx, &[ALPN_MESH], false)?;
        Ok(Arc::new(Self {
            creds,
            kx,
            server,
            ca_version,
            clients: Mutex::new(HashMap::new()),
        }))
    }

    /// A gRPC channel to the control plane over mutual TLS with these credentials, for the
    /// long-lived Watch streams (keep-alives detect a dead peer).
    pub async fn control_plane_channel(
        &self,
        addr: &str,
        server_id: &SpiffeId,
    ) -> Result<tonic::transport::Channel, String> {
        let config = self
            .creds
            .client_config(server_id, self.kx, &[pqmesh_mtls::tls::ALPN_H2])
            .map_err(|e| e.to_string())?;
        tonic::transport::Endpoint::from_static("http://pqmesh-control-plane")
            .connect_timeout(std::time::Duration::from_secs(10))
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .connect_with_connector(pqmesh_mtls::grpc_tls::tls_connector(
                addr.to_owned(),
                config,
            ))
            .await
            .map_err(|e| format!("connect {addr}: {e}"))
    }

    pub fn client_for(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, TlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(peer) {
            return Ok(c.clone());
        }
        let config = self.creds.client_config(peer, self.kx, &[ALPN_MESH])?;
        clients.insert(peer.clone(), config.clone());
        Ok(config)
    }
}
