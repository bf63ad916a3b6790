//! From one set of [`Documents`] (read from files in local mode, from the API server in
//! Kubernetes mode) to the configuration the proxy serves: every object judged on its own
//! ([`crate::load::judge_with`]), each listener's outside TLS built, each EdgePolicy made ready
//! to run. The result replaces the previous one for new connections and requests; what carries
//! over is kept, not rebuilt: a listener's last good certificate when its Secret stops loading,
//! a TokenIssuer's, HTTPRoute's or EdgePolicy's last good version when its edit is refused
//! (and a local file's when it does not read), and an unchanged EdgePolicy's
//! token buckets and token caches.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use pqmesh_sidecar::metrics::Metrics;

use crate::load::{self, CertFiles, Documents, EdgeModel, Model};
use crate::metrics::GatewayMetrics;
use crate::proxy::EdgeRuntime;
use crate::{outside_tls, ratelimit};

/// The configuration in force.
#[derive(Default)]
pub struct Programmed {
    pub model: Model,
    /// Per route (same index as `model.routes`): its EdgePolicy ready to run; `None` with an
    /// EdgePolicy in force means its issuer is unusable (503, failing closed).
    pub policies: Vec<Option<Arc<EdgeRuntime>>>,
    /// Per listener (same index as `model.listeners`): outside TLS, `None` for HTTP.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

impl Programmed {
    /// The listeners on `port`, by index.
    pub fn on_port(&self, port: u16) -> Vec<usize> {
        (0..self.model.listeners.len())
            .filter(|i| self.model.listeners[*i].port == port)
            .collect()
    }

    /// The listener `<namespace>/<gateway>/<name>` on `port`.
    pub fn find(&self, label: &str, port: u16) -> Option<usize> {
        self.on_port(port)
            .into_iter()
            .find(|i| label_of(&self.model.listeners[*i]) == label)
    }
}

/// `<namespace>/<gateway>/<listener>`: a listener's name in logs and metrics.
pub fn label_of(l: &load::ListenerModel) -> String {
    format!("{}/{}", l.gateway, l.name)
}

/// Judges `docs` and builds what the proxy needs. `known` says whether a Service port exists
/// (for `BackendNotFound`).
pub fn program(
    docs: &Documents,
    previous: Option<&Programmed>,
    known: &dyn Fn(&str, u16) -> bool,
    metrics: &Metrics,
    gateway_metrics: &GatewayMetrics,
) -> Programmed {
    let kept_old = RefCell::new(Vec::new());
    let last_good = |ns: &str, name: &str| {
        let key = Some((ns.to_owned(), name.to_owned()));
        previous?
            .model
            .listeners
            .iter()
            .find(|l| l.cert_ref == key)
            .and_then(|l| l.tls.clone())
    };
    // A certificate Secret that stops loading keeps the certificate in force (logged, counted).
    let certs = |ns: &str, name: &str| match docs.cert(ns, name) {
        Ok(c) => Ok(c),
        Err(e) => match last_good(ns, name) {
            Some(old) => {
                tracing::warn!(secret = %format!("{ns}/{name}"), error = %e, "certificate change not loaded; the previous certificate stays");
                kept_old.borrow_mut().push((ns.to_owned(), name.to_owned()));
                Ok(CertFiles {
                    chain: old.chain.clone(),
                    key: old.key.clone_key(),
                })
            }
            None => Err(e),
        },
    };
    let empty = pqmesh_policy::PolicySet::default();
    let last_issuers = previous.map_or(&empty, |p| &p.model.issuers);
    let nothing = load::LastGood::default();
    let last_good = previous.map_or(&nothing, |p| &p.model.last_good);
    let mut model = load::judge_with(&docs.texts, &docs.secrets, &certs, last_issuers, last_good);
    model.backends = docs.backends.clone();
    load::check_backends(&mut model, known);
    let kept_old = kept_old.into_inner();

    let mut listeners = Vec::new();
    let mut tls = Vec::new();
    for l in std::mem::take(&mut model.listeners) {
        let label = label_of(&l);
        let before = previous.and_then(|p| {
            p.model
                .listeners
                .iter()
                .position(|o| label_of(o) == label)
                .map(|i| (&p.model.listeners[i], p.tls[i].clone()))
        });
        let mut l = l;
        let mut failed = false;
        let config = match &l.tls {
            None => None,
            Some(cert) => {
                let same = before.as_ref().filter(|(o, _)| {
                    o.require_pq == l.require_pq
                        && o.tls.as_ref().is_some_and(|c| c.chain == cert.chain)
                });
                match same {
                    Some((_, Some(config))) => Some(config.clone()),
                    _ => match outside_tls::server_config(cert, l.require_pq) {
                        Ok(c) => Some(c),
                        Err(e) => match &before {
                            // The certificate in force stays.
                            Some((old, Some(config))) if old.require_pq == l.require_pq => {
                                tracing::warn!(listener = %label, error = %e, "certificate change not loaded; the previous certificate stays");
                                l.tls = old.tls.clone();
                                failed = true;
                                Some(config.clone())
                            }
                            _ => {
                                tracing::warn!(listener = %label, error = %e, "listener left out: its certificate and key do not make a TLS configuration");
                                continue;
                            }
                        },
                    },
                }
            }
        };
        // Counted per listener: a certificate that changed, or a change kept out.
        if let (Some(cert_ref), Some((old, _))) = (&l.cert_ref, &before) {
            let outcome = if failed || kept_old.contains(cert_ref) {
                Some("error")
            } else if old.tls.as_ref().map(|c| &c.chain) != l.tls.as_ref().map(|c| &c.chain) {
                tracing::info!(listener = %label, "certificate reloaded");
                Some("ok")
            } else {
                None
            };
            if let Some(outcome) = outcome {
                gateway_metrics
                    .certificate_reloads
                    .with_label_values(&[label.as_str(), outcome])
                    .inc();
            }
        }
        listeners.push(l);
        tls.push(config);
    }
    model.listeners = listeners;

    let policies = model
        .routes
        .iter()
        .map(|route| {
            let e = route.edge.as_ref()?;
            let reused = previous.and_then(|p| {
                p.model
                    .routes
                    .iter()
                    .position(|r| r.edge.as_ref() == Some(e))
                    .and_then(|i| p.policies[i].clone())
            });
            reused.or_else(|| edge_runtime(e, metrics).map(Arc::new))
        })
        .collect();
    for v in &model.verdicts {
        match (&v.accepted, &v.resolved_refs) {
            (Err(e), _) => {
                tracing::warn!(kind = %v.kind, name = %v.name, source = %v.source, "refused (Accepted=False): {e}")
            }
            (Ok(()), Err(e)) => {
                tracing::warn!(kind = %v.kind, name = %v.name, source = %v.source, "ResolvedRefs=False: {e}")
            }
            _ => tracing::debug!(kind = %v.kind, name = %v.name, "accepted"),
        }
    }
    Programmed {
        model,
        policies,
        tls,
    }
}

/// An EdgePolicy ready to run: its issuer's validator (the sidecar's) and its token buckets.
/// `None` when the issuer is missing or unusable: its route answers 503.
fn edge_runtime(e: &EdgeModel, metrics: &Metrics) -> Option<EdgeRuntime> {
    let (validator, scope_claim) = match (&e.token, &e.issuer) {
        (None, _) => (None, pqmesh_policy::ScopeClaim::default()),
        (Some(_), None) => return None,
        (Some(_), Some(issuer)) => {
            match pqmesh_sidecar::policy::validator_for(
                std::slice::from_ref(issuer),
                metrics.token.clone(),
            ) {
                Ok(v) => {
                    v.prefetch_keys();
                    (Some(v), issuer.scope_claim)
                }
                Err(err) => {
                    tracing::warn!(policy = %e.name, error = %err, "EdgePolicy's issuer is unusable; its route answers 503");
                    return None;
                }
            }
        }
    };
    let limiter = e.rate_limit.as_ref().map(|r| {
        (
            ratelimit::Limiter::new(
                r.requests,
                Duration::from_secs(u64::from(r.period_seconds)),
                r.burst.unwrap_or(r.requests),
            ),
            r.key,
            r.claim.clone(),
        )
    });
    Some(EdgeRuntime {
        validator,
        scope_claim,
        limiter,
    })
}
