//! The mesh deny list as this sidecar enforces it: pushed by the control plane with each policy
//! snapshot, checked right after every handshake (both directions), and watched by every
//! established connection, which closes as soon as its peer becomes revoked.

use std::collections::HashSet;
use std::sync::Arc;

use pqmesh_mtls::SpiffeId;
use pqmesh_proto::policy::v1::MeshState;
use tokio::sync::watch;

/// Revoked identities (SPIFFE ID text) and certificate serials (upper-case hex).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Revoked {
    pub version: String,
    identities: HashSet<String>,
    serials: HashSet<String>,
    clients: HashSet<String>,
    subjects: HashSet<String>,
    /// Built from a mesh state the control plane pushed. `Revoked::default()` is what a
    /// process holds before its first snapshot: an empty list that is not known to be empty,
    /// so nothing may be served on it (review 12, F5).
    received: bool,
}

pub type RevokedState = watch::Receiver<Arc<Revoked>>;

/// The claims that name a token's OAuth client, as issuers spell it: `client_id` (RFC 9068,
/// RFC 7662), `azp` (OpenID Connect, Keycloak, Auth0), `cid` (Okta), `appid` (Azure AD / Entra ID
/// v1 access tokens; review 12, F6c). The deny list's `clients` entries are compared with each.
pub const CLIENT_CLAIMS: &[&str] = &["client_id", "azp", "cid", "appid"];

/// The largest list accepted from the control plane (a sanity bound, not a design limit).
const MAX_ENTRIES: usize = 100_000;

impl Revoked {
    /// Builds the list from a pushed mesh state; refuses an oversized one (the sidecar NACKs it
    /// and keeps the previous list).
    pub fn from_mesh(mesh: &MeshState) -> Result<Self, String> {
        if mesh.revoked_identities.len()
            + mesh.revoked_serials.len()
            + mesh.denied_clients.len()
            + mesh.denied_subjects.len()
            > MAX_ENTRIES
        {
            return Err(format!("revocation list exceeds {MAX_ENTRIES} entries"));
        }
        Ok(Self {
            version: mesh.revocation_version.clone(),
            identities: mesh.revoked_identities.iter().cloned().collect(),
            serials: mesh
                .revoked_serials
                .iter()
                .map(|s| s.to_ascii_uppercase())
                .collect(),
            clients: mesh.denied_clients.iter().cloned().collect(),
            subjects: mesh.denied_subjects.iter().cloned().collect(),
            received: true,
        })
    }

    /// Whether this list came from the control plane (false until the first mesh state is
    /// applied: the deny list is then unknown, not empty).
    pub fn received(&self) -> bool {
        self.received
    }

    pub fn len(&self) -> usize {
        self.identities.len() + self.serials.len() + self.clients.len() + self.subjects.len()
    }

    /// Why a verified token is refused by the deny list, if it is: a client claim (any of
    /// [`CLIENT_CLAIMS`]) or its `sub` is listed (compared byte for byte). A claim that is there but not a string cannot be compared, so it is
    /// refused while the list has entries of its kind (review 11, F4: an array or a number
    /// `client_id` passed).
    pub fn denies(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<&'static str> {
        let listed = |set: &HashSet<String>, names: &[&str]| {
            !set.is_empty()
                && names.iter().any(|n| match claims.get(*n) {
                    None => false,
                    Some(serde_json::Value::String(v)) => set.contains(v),
                    Some(_) => true,
                })
        };
        if listed(&self.clients, CLIENT_CLAIMS) {
            Some("client")
        } else if listed(&self.subjects, &["sub"]) {
            Some("subject")
        } else {
            None
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a peer with this identity and certificate serial is revoked.
    pub fn covers(&self, id: &SpiffeId, serial: Option<&str>) -> bool {
        (!self.identities.is_empty() && self.identities.contains(&id.to_string()))
            || serial.is_some_and(|s| self.serials.contains(s))
    }
}

/// Resolves once the peer is revoked (never, if it stays allowed or the sender goes away).
pub async fn until_revoked(mut state: RevokedState, id: SpiffeId, serial: Option<String>) {
    if state
        .wait_for(|r| r.covers(&id, serial.as_deref()))
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", sa).unwrap()
    }

    #[test]
    fn covers_identities_and_serials() {
        let r = Revoked::from_mesh(&MeshState {
            revocation_version: "v".into(),
            revoked_identities: vec![id("web").to_string()],
            revoked_serials: vec!["0abc".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(r.covers(&id("web"), None));
        assert!(r.covers(&id("api"), Some("0ABC")));
        assert!(!r.covers(&id("api"), Some("0ABD")));
        assert!(!r.covers(&id("api"), None));
        let huge = MeshState {
            revoked_serials: vec!["01".into(); MAX_ENTRIES + 1],
            ..Default::default()
        };
        assert!(Revoked::from_mesh(&huge).is_err());
    }

    /// Review 11 F4: claims the list cannot compare fail closed; other client claim names count.
    #[test]
    fn denied_clients_and_subjects_fail_closed_on_claims_that_are_not_strings() {
        let r = Revoked::from_mesh(&MeshState {
            denied_clients: vec!["clientA".into()],
            denied_subjects: vec!["mallory".into()],
            ..Default::default()
        })
        .unwrap();
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        for (c, want) in [
            (serde_json::json!({"client_id": "clientA"}), Some("client")),
            (
                serde_json::json!({"client_id": ["clientA"]}),
                Some("client"),
            ),
            (serde_json::json!({"client_id": 7}), Some("client")),
            (serde_json::json!({"azp": "clientA"}), Some("client")),
            (serde_json::json!({"cid": "clientA"}), Some("client")),
            // Review 12 F6c: Azure AD's v1 tokens name the client `appid`.
            (serde_json::json!({"appid": "clientA"}), Some("client")),
            (serde_json::json!({"appid": ["clientA"]}), Some("client")),
            (serde_json::json!({"appid": 7}), Some("client")),
            (
                serde_json::json!({"client_id": "clientB", "appid": "clientA"}),
                Some("client"),
            ),
            (serde_json::json!({"appid": "clientB"}), None),
            (
                serde_json::json!({"client_id": "clientB", "sub": "mallory"}),
                Some("subject"),
            ),
            (
                serde_json::json!({"client_id": "clientB", "sub": ["x"]}),
                Some("subject"),
            ),
            (
                serde_json::json!({"client_id": "clientB", "sub": "alice"}),
                None,
            ),
            (serde_json::json!({"client_id": "clienta"}), None),
        ] {
            assert_eq!(r.denies(&claims(c.clone())), want, "{c}");
        }
        // An empty list refuses nothing, whatever the claims look like.
        assert_eq!(
            Revoked::default().denies(&claims(serde_json::json!({"client_id": [1]}))),
            None
        );
    }

    /// Review 12 F5: the list a process starts with is not one the control plane sent.
    #[test]
    fn only_a_pushed_list_counts_as_received() {
        assert!(!Revoked::default().received());
        let empty = Revoked::from_mesh(&MeshState::default()).unwrap();
        assert!(empty.received());
        assert!(empty.is_empty());
        // So the first push differs from the start value even when it is empty (and is sent).
        assert_ne!(empty, Revoked::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_resolves_when_its_peer_is_revoked_and_not_before() {
        let (tx, rx) = watch::channel(Arc::new(Revoked::default()));
        let waiter = tokio::spawn(until_revoked(rx, id("web"), Some("01".into())));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        // Someone else revoked: still open.
        tx.send_replace(Arc::new(
            Revoked::from_mesh(&MeshState {
                revoked_identities: vec![id("api").to_string()],
                ..Default::default()
            })
            .unwrap(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        tx.send_replace(Arc::new(
            Revoked::from_mesh(&MeshState {
                revoked_serials: vec!["01".into()],
                ..Default::default()
            })
            .unwrap(),
        ));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("closed at once")
            .unwrap();
    }
}
