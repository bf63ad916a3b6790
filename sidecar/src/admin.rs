//! Sidecar admin endpoints on 15000: /live, /ready (a certificate is in hand), /metrics,
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
use crate::tls::MeshTls;

pub fn spawn(
    config: &Config,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    discovery_ready: Option<watch::Receiver<bool>>,
    policy: crate::policy::PolicyState,
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
            (&Method::GET, p) if p.starts_with(crate::app_probe::PATH_PREFIX) => {
                match app_probes.get(p).map(crate::app_probe::check) {
                    Some(Ok(note)) => Reply::text(StatusCode::OK, format!("{note}\n")),
                    Some(Err(why)) => {
                        Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
                    }
                    None => Reply::text(StatusCode::NOT_FOUND, "no such app probe\n"),
                }
            }
            (&Method::GET, "/ready") => {
                // Discovery must have connected once; afterwards cached answers carry outages.
                let discovery_ok = discovery_ready.as_ref().is_none_or(|d| *d.borrow());
                // Serving before the first policy snapshot would enforce only local settings.
                let policy_ok = policy.borrow().is_some();
                match (tls.borrow().is_some(), discovery_ok, policy_ok) {
                    (true, true, true) => Reply::text(StatusCode::OK, "ready\n"),
                    (false, _, _) => Reply::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the first certificate\n",
                    ),
                    (true, false, _) => {
                        Reply::text(StatusCode::SERVICE_UNAVAILABLE, "waiting for discovery\n")
                    }
                    (true, true, false) => Reply::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the first policy snapshot\n",
                    ),
                }
            }
            (&Method::GET, "/metrics") => admin::render_metrics(&metrics.registry),
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
                        "trust_bundle_roots": c.bundle.roots().len(),
                    })
                });
                let policy = policy.borrow().as_ref().map(|p| {
                json!({
                    "version": p.version,
                    "access_policies": p.policy.policies.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
                    "token_issuers": p.policy.issuers.iter().map(|i| json!({
                        "name": i.name, "issuer": i.issuer, "jwks_uri": i.jwks_uri,
                        "introspection": i.introspection.as_ref().map(|x| json!({
                            "endpoint": x.endpoint, "client_id": x.client_id, "client_secret": "<redacted>",
                        })),
                    })).collect::<Vec<_>>(),
                })
            });
                let dump = json!({ "config": static_config, "certificate": certificate, "policy": policy });
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
