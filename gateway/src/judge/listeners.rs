//! Listeners of a Gateway (protocol, TLS options, certificate references) and the backends
//! routes name (`BackendNotFound`).

use std::sync::Arc;

use crate::api::*;
use crate::load::{CertFiles, ListenerModel, Model};

/// A backendRef to a core Service (the only kind the gateway forwards to).
pub fn is_service(b: &BackendRef) -> bool {
    !(b.kind.as_deref().is_some_and(|k| k != "Service")
        || b.group.as_deref().is_some_and(|g| !g.is_empty()))
}

/// Marks routes whose backendRefs name Services `known` does not have (`BackendNotFound`).
pub fn check_backends(model: &mut Model, known: &dyn Fn(&str, u16) -> bool) {
    for route in &model.routes {
        let missing: Vec<String> = route
            .spec
            .rules
            .iter()
            .flat_map(|r| &r.backend_refs)
            .filter(|b| {
                is_service(b) && b.namespace.as_deref().is_none_or(|n| n == route.namespace)
            })
            .map(|b| (format!("{}/{}", route.namespace, b.name), b.port))
            .filter(|(s, port)| !known(s, *port))
            .map(|(s, port)| format!("{s}:{port}"))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let message = format!("backendRefs name no known Service: {}", missing.join(", "));
        if let Some(v) = model
            .verdicts
            .iter_mut()
            .find(|v| v.kind == "HTTPRoute" && v.name == route.name && v.resolved_refs.is_ok())
        {
            v.resolved_refs = Err(format!("BackendNotFound: {message}"));
            v.refs_reason = "BackendNotFound";
            for p in &mut v.parents {
                p.resolved_refs = Err(("BackendNotFound", message.clone()));
            }
        }
    }
}

pub(super) fn listener(
    namespace: &str,
    l: &Listener,
    certs: &dyn Fn(&str, &str) -> Result<CertFiles, String>,
) -> Result<ListenerModel, (&'static str, String)> {
    let unsupported = |m: String| ("UnsupportedValue", m);
    if l.port == 0 {
        return Err(unsupported("port 0".into()));
    }
    if let Some(a) = &l.allowed_routes {
        let from = a.namespaces.as_ref().and_then(|n| n.from.as_deref());
        if from.is_some_and(|f| f != "Same") {
            return Err(unsupported(format!(
                "allowedRoutes.namespaces.from {from:?}: only Same (routes of the Gateway's namespace)"
            )));
        }
        if a.kinds.iter().any(|k| {
            k.kind != "HTTPRoute"
                || k.group
                    .as_deref()
                    .is_some_and(|g| g != "gateway.networking.k8s.io")
        }) {
            return Err((
                "InvalidRouteKinds",
                "allowedRoutes.kinds: only HTTPRoute".into(),
            ));
        }
    }
    let mut model = ListenerModel {
        gateway: String::new(),
        name: l.name.clone(),
        hostname: l.hostname.clone(),
        port: l.port,
        tls: None,
        cert_ref: None,
        require_pq: false,
    };
    match (l.protocol, &l.tls) {
        (Protocol::HTTP, None) => Ok(model),
        (Protocol::HTTP, Some(_)) => Err(unsupported("protocol HTTP takes no tls".into())),
        (Protocol::HTTPS, None) => Err(unsupported(
            "protocol HTTPS needs tls.certificateRefs".into(),
        )),
        (Protocol::HTTPS, Some(tls)) => {
            if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
                return Err(unsupported(format!(
                    "tls.mode {:?}: only Terminate is supported",
                    tls.mode
                )));
            }
            for (k, v) in &tls.options {
                match (k.as_str(), v.as_str()) {
                    (KEY_EXCHANGE_OPTION, "require-pq") => model.require_pq = true,
                    (KEY_EXCHANGE_OPTION, "prefer-pq") => {}
                    (KEY_EXCHANGE_OPTION, _) => {
                        return Err(unsupported(format!(
                            "tls.options {k}: {v:?} (use prefer-pq or require-pq)"
                        )))
                    }
                    _ => return Err(unsupported(format!("tls.options {k:?} is not supported"))),
                }
            }
            let Some(r) = tls.certificate_refs.first() else {
                return Err((
                    "InvalidCertificateRef",
                    "tls.certificateRefs is empty".into(),
                ));
            };
            if tls.certificate_refs.len() > 1 {
                return Err(unsupported(
                    "several certificateRefs are not supported yet (one per listener)".into(),
                ));
            }
            if r.kind.as_deref().is_some_and(|k| k != "Secret")
                || r.group.as_deref().is_some_and(|g| !g.is_empty())
            {
                return Err((
                    "InvalidCertificateRef",
                    "certificateRefs: only core Secrets".into(),
                ));
            }
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            if ns != namespace {
                return Err((
                    "RefNotPermitted",
                    "certificateRefs in another namespace need a ReferenceGrant (not supported)"
                        .into(),
                ));
            }
            let files = certs(ns, &r.name).map_err(|e| {
                (
                    "InvalidCertificateRef",
                    format!("Secret {ns}/{}: {e}", r.name),
                )
            })?;
            model.tls = Some(Arc::new(files));
            model.cert_ref = Some((ns.to_owned(), r.name.clone()));
            Ok(model)
        }
    }
}
