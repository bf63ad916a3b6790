//! The workload's policy, pushed by the control plane (`pqmesh.policy.v1.Policy/Watch` over
//! mutual TLS). Each snapshot is decoded, turned into a runtime (token validators for its issuers)
//! and swapped in as one unit, then ACKed; a snapshot that cannot be applied is NACKed with the
//! reason and the last good policy stays in force. The stream resumes after drops and control
//! plane restarts, telling the control plane which version is already running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pqmesh_mtls::SpiffeId;
use pqmesh_policy::WorkloadPolicy;
use pqmesh_proto::policy::v1::policy_client::PolicyClient;
use pqmesh_proto::policy::v1::watch_request::Kind;
use pqmesh_proto::policy::v1::{Ack, Nack, PolicySnapshot, WatchRequest, Workload};
use tokio::sync::{mpsc, watch};

use crate::control_plane::{Link, Retry, Stream};
use crate::metrics::Metrics;
use crate::revocation::Revoked;
use crate::tls::MeshTls;

/// Largest snapshot accepted (policies plus issuer settings of one workload).
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

/// A policy in force: the compiled snapshot and what enforcing it needs.
pub struct ActivePolicy {
    pub version: String,
    pub policy: WorkloadPolicy,
    /// Validates bearer tokens for the snapshot's issuers (`None` when no policy wants tokens).
    pub validator: Option<Arc<crate::token::Validator>>,
}

impl std::fmt::Debug for ActivePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivePolicy")
            .field("version", &self.version)
            .field("policies", &self.policy.policies.len())
            .finish_non_exhaustive()
    }
}

pub type PolicyState = watch::Receiver<Option<Arc<ActivePolicy>>>;

/// Decodes and prepares a snapshot; any problem is the NACK reason. The previous policy's token
/// validator (with its JWKS and phantom-token caches) is kept when the issuers did not change.
pub fn prepare(
    snapshot: &PolicySnapshot,
    previous: Option<&ActivePolicy>,
    metrics: &Metrics,
) -> Result<ActivePolicy, String> {
    if snapshot.policy_json.len() > MAX_SNAPSHOT_BYTES {
        return Err(format!(
            "snapshot of {} bytes exceeds {MAX_SNAPSHOT_BYTES}",
            snapshot.policy_json.len()
        ));
    }
    let policy: WorkloadPolicy = serde_json::from_slice(&snapshot.policy_json)
        .map_err(|e| format!("undecodable snapshot: {e}"))?;
    if policy.version() != snapshot.version {
        return Err(format!(
            "snapshot content does not match its version {}",
            snapshot.version
        ));
    }
    let validator = match previous {
        Some(prev) if prev.policy.issuers == policy.issuers => prev.validator.clone(),
        _ => {
            let validator = build_validator(&policy, metrics)?.map(Arc::new);
            if let Some(v) = &validator {
                v.prefetch_keys();
            }
            validator
        }
    };
    Ok(ActivePolicy {
        version: snapshot.version.clone(),
        policy,
        validator,
    })
}

/// Token validation settings for the snapshot's issuers (`None` if it names none).
fn build_validator(
    policy: &WorkloadPolicy,
    metrics: &Metrics,
) -> Result<Option<crate::token::Validator>, String> {
    if policy.issuers.is_empty() {
        return Ok(None);
    }
    validator_for(&policy.issuers, metrics.token.clone()).map(Some)
}

/// A token validator for compiled issuers: the sidecar's per snapshot, and the edge gateway's
/// per route policy (one code path for both).
pub fn validator_for(
    issuers: &[pqmesh_policy::CompiledIssuer],
    metrics: crate::token::TokenMetrics,
) -> Result<crate::token::Validator, String> {
    use crate::token::{IntrospectionConfig, IssuerConfig, ResponseFormat, Validator};
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    let configs = issuers
        .iter()
        .map(|i| {
            let mut c = IssuerConfig::new(
                i.name.clone(),
                i.issuer.clone(),
                i.audiences.clone(),
                i.jwks_uri.clone(),
            );
            c.allowed_algs = i.allowed_algorithms.clone();
            c.clock_skew = secs(i.clock_skew_seconds);
            c.scope_claim = i.scope_claim;
            c.max_token_lifetime = secs(i.max_token_lifetime_seconds);
            c.jwks_refresh = secs(i.jwks_refresh_seconds);
            c.jwks_min_refetch = secs(i.jwks_min_refetch_seconds);
            c.introspection = i.introspection.as_ref().map(|x| {
                let mut ic = IntrospectionConfig::new(
                    x.endpoint.clone(),
                    x.client_id.clone(),
                    x.client_secret.clone(),
                );
                ic.accept = if x.response_format == "jwt" {
                    ResponseFormat::Jwt
                } else {
                    ResponseFormat::TokenIntrospectionJwt
                };
                ic.cache_max_entries = x.cache_max_entries as usize;
                ic.cache_max_ttl = secs(x.cache_max_ttl_seconds);
                ic.honor_no_store = x.honor_no_store;
                ic
            });
            c
        })
        .collect();
    Validator::new(configs, metrics).map_err(|e| format!("token issuers: {e}"))
}

pub struct PolicyClientTask {
    pub labels: BTreeMap<String, String>,
    pub pod_name: String,
    pub state: watch::Sender<Option<Arc<ActivePolicy>>>,
    pub metrics: Arc<Metrics>,
    /// The deny list pushed with the snapshots.
    pub revoked: watch::Sender<Arc<Revoked>>,
    /// Asks the identity task to re-certify (the pushed CA version differs from ours).
    pub renew: mpsc::Sender<()>,
    /// Its bundle (the roots trusted for the control plane) is replaced by the pushed one.
    pub certifier: Arc<crate::identity::GrpcCertifier>,
    pub link: Link,
    /// `PQMESH_INBOUND_ALLOW` is empty: without an AccessPolicy every mesh peer is refused.
    pub inbound_allow_empty: bool,
}

impl PolicyClientTask {
    pub async fn run(
        self,
        addr: String,
        server_id: SpiffeId,
        mut tls: watch::Receiver<Option<Arc<MeshTls>>>,
    ) {
        let mut retry = Retry::default();
        loop {
            let Ok(current) = tls.wait_for(|t| t.is_some()).await.map(|t| t.clone()) else {
                return;
            };
            let Some(current) = current else { continue };
            let ended = self
                .stream_once(&addr, &server_id, &current, tls.clone())
                .await;
            let was_open = self.link.is_open(Stream::Policy);
            self.link.down(
                Stream::Policy,
                ended
                    .as_ref()
                    .err()
                    .map_or("stream closed by the control plane", |e| e),
            );
            tokio::time::sleep(retry.after(was_open, rand::random())).await;
        }
    }

    async fn stream_once(
        &self,
        addr: &str,
        server_id: &SpiffeId,
        tls: &MeshTls,
        mut tls_rx: watch::Receiver<Option<Arc<MeshTls>>>,
    ) -> Result<(), String> {
        let channel = tls.control_plane_channel(addr, server_id).await?;
        let (tx, rx) = mpsc::channel(8);
        let current_version = self
            .state
            .borrow()
            .as_ref()
            .map(|p| p.version.clone())
            .unwrap_or_default();
        let hello = Workload {
            namespace: tls.creds.id.namespace().to_owned(),
            pod_name: self.pod_name.clone(),
            labels: self.labels.clone().into_iter().collect(),
            ports: vec![],
            current_version,
            ca_version: held_ca_version(&tls_rx),
            revocation_version: self.revoked.borrow().version.clone(),
        };
        tx.send(WatchRequest {
            kind: Some(Kind::Hello(hello)),
        })
        .await
        .map_err(|_| "request stream closed".to_owned())?;
        let mut snapshots = PolicyClient::new(channel)
            .max_decoding_message_size(MAX_SNAPSHOT_BYTES + 4096)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("watch: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        self.link.connected(Stream::Policy);
        tls_rx.mark_unchanged();
        loop {
            let snapshot = tokio::select! {
                message = snapshots.message() => match message {
                    Ok(Some(s)) => s,
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
                },
                changed = tls_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    // Re-certified: tell the control plane which CA version we hold now.
                    let Some(version) = self.state.borrow().as_ref().map(|p| p.version.clone()) else {
                        continue;
                    };
                    let ack = Ack {
                        version,
                        ca_version: held_ca_version(&tls_rx),
                        revocation_version: self.revoked.borrow().version.clone(),
                    };
                    if tx.send(WatchRequest { kind: Some(Kind::Ack(ack)) }).await.is_err() {
                        return Err("request stream closed".into());
                    }
                    continue;
                }
            };
            let reply = self.apply(snapshot, &tls_rx);
            if tx.send(WatchRequest { kind: Some(reply) }).await.is_err() {
                return Err("request stream closed".into());
            }
        }
    }

    /// Applies a snapshot: the mesh state (revocations at once; a CA change starts a
    /// re-certification), then the policy unless it is the version already in force.
    fn apply(
        &self,
        snapshot: PolicySnapshot,
        tls_rx: &watch::Receiver<Option<Arc<MeshTls>>>,
    ) -> Kind {
        let mut problem = None;
        if let Some(mesh) = &snapshot.mesh {
            match Revoked::from_mesh(mesh) {
                Ok(list) => {
                    if list != **self.revoked.borrow() {
                        tracing::info!(version = %list.version, entries = list.len(), "revocation list applied");
                        self.metrics.revocation_entries.set(list.len() as i64);
                        self.revoked.send_replace(Arc::new(list));
                    }
                }
                Err(e) => problem = Some(e),
            }
            if !mesh.trust_bundle_der.is_empty() {
                let roots = mesh
                    .trust_bundle_der
                    .iter()
                    .cloned()
                    .map(rustls_pki_types::CertificateDer::from)
                    .collect();
                match pqmesh_mtls::TrustBundle::new(roots) {
                    Ok(bundle) => {
                        *self
                            .certifier
                            .bundle
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = bundle
                    }
                    Err(e) => problem = Some(format!("pushed trust bundle: {e}")),
                }
            }
            let held = held_ca_version(tls_rx);
            if !mesh.ca_version.is_empty() && mesh.ca_version != held && problem.is_none() {
                tracing::info!(held = %held, current = %mesh.ca_version, "the mesh CA changed; re-certifying now");
                let _ = self.renew.try_send(());
            }
        }
        let previous = self.state.borrow().clone();
        let same = previous
            .as_ref()
            .is_some_and(|p| p.version == snapshot.version);
        if !same && problem.is_none() {
            match prepare(&snapshot, previous.as_deref(), &self.metrics) {
                Ok(active) => {
                    tracing::info!(version = %active.version, policies = active.policy.policies.len(), "policy applied");
                    self.metrics
                        .policy_updates
                        .with_label_values(&["applied"])
                        .inc();
                    self.metrics
                        .policy_policies
                        .set(active.policy.policies.len() as i64);
                    self.metrics.policy_version.reset();
                    self.metrics
                        .policy_version
                        .with_label_values(&[&active.version])
                        .set(1);
                    self.warn_if_all_refused(previous.as_deref(), &active);
                    let _ = self.state.send(Some(Arc::new(active)));
                }
                Err(reason) => problem = Some(reason),
            }
        }
        match problem {
            None => Kind::Ack(Ack {
                version: snapshot.version,
                ca_version: held_ca_version(tls_rx),
                revocation_version: self.revoked.borrow().version.clone(),
            }),
            Some(reason) => {
                tracing::error!(version = %snapshot.version, %reason, "policy snapshot rejected; keeping the last good policy");
                self.metrics
                    .policy_updates
                    .with_label_values(&["rejected"])
                    .inc();
                Kind::Nack(Nack {
                    version: snapshot.version,
                    reason,
                })
            }
        }
    }
}

impl PolicyClientTask {
    /// Says so when a snapshot leaves the workload refusing every mesh peer (once per change
    /// into that state; where AccessPolicies decide, as in Kubernetes, this stays silent).
    fn warn_if_all_refused(&self, previous: Option<&ActivePolicy>, next: &ActivePolicy) {
        if newly_refuses_all(
            self.inbound_allow_empty,
            previous.map(|p| &p.policy),
            &next.policy,
        ) {
            tracing::warn!(
                version = %next.version,
                "no AccessPolicy selects this workload and PQMESH_INBOUND_ALLOW is empty: every \
                 inbound mesh connection will be refused"
            );
        }
    }
}

/// True when `next` makes the workload refuse every mesh peer and `previous` did not: no
/// AccessPolicy selects it (the policies would decide) and the local allow-list is empty.
pub fn newly_refuses_all(
    allow_empty: bool,
    previous: Option<&WorkloadPolicy>,
    next: &WorkloadPolicy,
) -> bool {
    let refuses_all = |p: &WorkloadPolicy| allow_empty && p.is_empty();
    refuses_all(next) && !previous.is_some_and(refuses_all)
}

fn held_ca_version(tls: &watch::Receiver<Option<Arc<MeshTls>>>) -> String {
    tls.borrow()
        .as_ref()
        .map(|t| t.ca_version.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selected() -> WorkloadPolicy {
        serde_json::from_value(serde_json::json!({
            "policies": [{"name": "shop/orders", "ports": null, "permissive": false,
                "peers": null, "token_issuers": null, "rules": []}],
            "issuers": []
        }))
        .expect("a compiled policy")
    }

    #[test]
    fn all_refused_is_said_only_where_it_is_true() {
        let none = WorkloadPolicy::default();
        let some = selected();
        // An AccessPolicy selects the workload (Kubernetes): the allow-list does not matter.
        assert!(!newly_refuses_all(true, None, &some));
        assert!(!newly_refuses_all(true, Some(&none), &some));
        // A local allow-list admits peers.
        assert!(!newly_refuses_all(false, None, &none));
        // Nothing admits anyone: said once, when the state begins.
        assert!(newly_refuses_all(true, None, &none));
        assert!(newly_refuses_all(true, Some(&some), &none));
        assert!(!newly_refuses_all(true, Some(&none), &none));
    }
}
