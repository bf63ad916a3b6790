//! Sidecar admin endpoints on 15000: /live, /ready (the sidecar can serve: see `readiness`;
//! a control-plane outage does not change it), /metrics,
//! /config_dump (effective configuration and certificate summary; no secrets), POST /shutdown
//! (loopback callers only).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Method, StatusCode};
use pqmesh_mtls::admin::{self, Reply};
use pqmesh_mtls::x509::unix_seconds;
use serde_json::json;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::tls::MeshTls;

pub fn spawn(
    config: &Config,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    readiness: watch::Receiver<Readiness>,
    policy: crate::policy::PolicyState,
    revoked: crate::revocation::RevokedState,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
) -> std::io::Result<SocketAddr> {
    let static_config = json!({
        "control_plane": { "addr": config.control_plane_addr, "identity": config.control_plane_id.to_string() },
        "trust_domain": config.trust_domain,
        "key_algorithm": config.key_alg.name(),
        "key_exchange": format!("{:?}", config.kx),
        "inbound": {
            "listen": config.inbound_addr.to_string(),
            "app": config.app_addr.map(|a| a.to_string()),
            "ports": config.inbound_ports,
            "mode": format!("{:?}", config.inbound_mode).to_uppercase(),
            "allow": config.inbound_allow.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        },
        "drain_timeout_seconds": config.drain_timeout.as_secs_f64(),
        "access_log": config.access_log,
        "outbound": match &config.outbound {
            crate::config::Outbound::Explicit(o) => json!({
                "mode": "explicit", "listen": o.listen.to_string(), "peer_addr": o.peer_addr,
                "peer_identity": o.peer_id.to_string(),
            }),
            crate::config::Outbound::Transparent { listen, unmeshed } => json!({
                "mode": "transparent", "listen": listen.to_string(),
                "unmeshed": format!("{unmeshed:?}").to_lowercase(),
            }),
        },
    });
    let app_probes = config.app_probes.clone();
    let route: admin::Route = Arc::new(
        move |method: &Method, path: &str, remote: SocketAddr| match (method, path) {
            (&Method::GET, "/live") => Reply::text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/ready") if *shutdown.borrow() => {
                Reply::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            (&Method::GET, p) if p.starts_with(crate::app_probe::PATH_PREFIX) => {
                match app_probes.get(p).map(crate::app_probe::check) {
                    Some(Ok(note)) => Reply::text(StatusCode::OK, format!("{note}\n")),
                    Some(Err(why)) => {
                        Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
                    }
                    None => Reply::text(StatusCode::NOT_FOUND, "no such app probe\n"),
                }
            }
            (&Method::GET, "/ready") => match &*readiness.borrow() {
                Readiness::Ready => Reply::text(StatusCode::OK, "ready\n"),
                Readiness::NotReady(why) => {
                    Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
                }
            },
            (&Method::GET, "/metrics") => admin::render_metrics(&metrics.registry),
            // Readable only from inside the pod (kubectl port-forward arrives on loopback): it
            // describes the workload's security settings to whoever asks.
            (&Method::GET, "/config_dump") if !remote.ip().is_loopback() => Reply::text(
                StatusCode::FORBIDDEN,
                "config_dump is allowed from localhost only\n",
            ),
            (&Method::GET, "/config_dump") => {
                let certificate = tls.borrow().as_ref().map(|t| {
                    let c = &t.creds;
                    json!({
                        "spiffe_id": c.id.to_string(),
                        "serial": c.serial_hex,
                        "not_before": unix_seconds(c.not_before),
                        "not_after": unix_seconds(c.not_after),
                        "not_after_rfc3339": rfc3339(c.not_after),
                        "signature_scheme": pqmesh_mtls::verify::signature_scheme_name(&c.chain[0]),
                        "ca_version": t.ca_version,
                        "trust_bundle_roots": c.bundle.roots().len(),
                        "trust_bundle": c.bundle.roots().iter().map(|r| root_summary(r)).collect::<Vec<_>>(),
                    })
                });
                let policy = policy.borrow().as_ref().map(|p| {
                json!({
                    "version": p.version,
                    "access_policies": p.policy.policies.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
                    "token_issuers": p.policy.issuers.iter().map(|i| json!({
                        "name": i.name, "issuer": i.issuer, "jwks_uri": i.jwks_uri,
                        "jwks": keys_health(p.validator.as_deref(), &i.name),
                        "introspection": i.introspection.as_ref().map(|x| json!({
                            "endpoint": x.endpoint, "client_id": x.client_id, "client_secret": "<redacted>",
                        })),
                    })).collect::<Vec<_>>(),
                })
            });
                let revocations = {
                    let r = revoked.borrow();
                    json!({ "version": r.version, "entries": r.len() })
                };
                let dump = json!({ "config": static_config, "certificate": certificate, "policy": policy, "revocations": revocations });
                Reply::json(serde_json::to_string_pretty(&dump).unwrap_or_default())
            }
            (&Method::POST, "/shutdown") if remote.ip().is_loopback() => {
                let _ = shutdown.send(true);
                Reply::text(StatusCode::OK, "shutting down\n")
            }
            (&Method::POST, "/shutdown") => Reply::text(
                StatusCode::FORBIDDEN,
                "shutdown is allowed from localhost only\n",
            ),
            _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
        },
    );
    admin::spawn(config.admin_addr, route)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Subject, expiry, signature scheme and SHA-256 fingerprint of a trusted root.
fn root_summary(root: &rustls_pki_types::CertificateDer<'_>) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    let summary = pqmesh_mtls::x509::summary(root).ok();
    json!({
        "sha256": hex::encode(Sha256::digest(root.as_ref())),
        "not_after": summary.as_ref().map(|s| unix_seconds(s.not_after)),
        "serial": summary.map(|s| s.serial_hex),
        "signature_scheme": pqmesh_mtls::verify::signature_scheme_name(root),
    })
}

/// Keys held for issuer `name`, how fresh, and why the last fetch failed (`/config_dump`).
fn keys_health(validator: Option<&crate::token::Validator>, name: &str) -> serde_json::Value {
    let health = validator.and_then(|v| {
        v.keys_health()
            .into_iter()
            .find_map(|(n, h)| (n == name).then_some(h))
    });
    match health {
        Some(h) => json!({
            "keys": h.keys,
            "fetched_seconds_ago": h.fetched_secs_ago,
            "last_error": h.last_error,
        }),
        None => serde_json::Value::Null,
    }
}
