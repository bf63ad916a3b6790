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
    /// Client configs per required peer identity, built on first use (they carry the
    /// session-resumption cache, so reusing them matters).
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl MeshTls {
    pub fn new(creds: Credentials, kx: KeyExchangePolicy) -> Result<Arc<Self>, TlsError> {
        let server = creds.server_config(kx, &[ALPN_MESH], false)?;
        Ok(Arc::new(Self {
            creds,
            kx,
            server,
            clients: Mutex::new(HashMap::new()),
        }))
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
