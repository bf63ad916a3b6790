//! The findings from the control plane's admin endpoint: CA root and serving certificate near
//! or past expiry, and sidecars on a stale policy or CA version. The facts are the ones `check`
//! reads ([`crate::replica`]); here each becomes a finding with a fix.

use super::Finding;
use crate::cli::{AnalyzeArgs, ClusterArgs, Severity};
use crate::render::{now_unix, rfc3339, span};
use crate::replica::{self, CertExpiries, Expiry, Lag, SidecarLag, SERVING_CERT_MIN_LEFT_SECS};
use crate::target;

/// Reads every control-plane replica (or `--admin-url`) and judges what it reports.
pub async fn findings(cluster: &ClusterArgs, args: &AnalyzeArgs) -> anyhow::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let cp_ns = &cluster.control_plane_namespace;
    let replicas = match target::control_plane(cluster, args.admin_url.as_deref()).await {
        Ok(r) => r,
        Err(e) => {
            out.push(control_plane_finding(
                "control-plane",
                Severity::Error,
                "ControlPlaneUnreachable",
                format!("{e:#}"),
                "kubectl pqmesh check (it shows what is wrong with the control plane)".into(),
            ));
            return Ok(out);
        }
    };
    for replica in replicas {
        let ep = match replica.endpoint {
            Ok(ep) => ep,
            Err(e) => {
                out.push(control_plane_finding(
                    &replica.name,
                    Severity::Error,
                    "ControlPlaneUnreachable",
                    e.to_string(),
                    format!("kubectl -n {cp_ns} describe pod {}", replica.name),
                ));
                continue;
            }
        };
        match replica::cert_expiries(&ep).await {
            Ok(certs) => expiries(&certs, args.root_warn_days, cp_ns, &mut out),
            Err(e) => out.push(control_plane_finding(
                &replica.name,
                Severity::Error,
                "ControlPlaneUnreadable",
                e.to_string(),
                "kubectl pqmesh check".into(),
            )),
        }
        let status = ep.get_json("/policy_status").await;
        ep.close().await;
        match status
            .map_err(|e| e.to_string())
            .and_then(|v| replica::policy_status(&v).map_err(str::to_owned))
        {
            Ok(s) => out.extend(s.lags.iter().map(|l| lag(l, cp_ns))),
            Err(e) => out.push(control_plane_finding(
                &replica.name,
                Severity::Error,
                "ControlPlaneUnreadable",
                e,
                "kubectl pqmesh check".into(),
            )),
        }
    }
    Ok(out)
}

fn control_plane_finding(
    name: &str,
    severity: Severity,
    code: &'static str,
    message: String,
    fix: String,
) -> Finding {
    Finding {
        severity,
        code,
        kind: "ControlPlane".into(),
        namespace: String::new(),
        name: name.to_owned(),
        message,
        fix,
        source: None,
    }
}

fn expiries(certs: &CertExpiries, root_warn_days: u64, cp_ns: &str, out: &mut Vec<Finding>) {
    let now = now_unix();
    let rotate = "kubectl pqmesh rotate-root prepare, then activate and finish once `kubectl pqmesh check` shows every sidecar on the current CA";
    let (severity, message) = match replica::expiry(certs.root, now, root_warn_days as i64 * 86_400)
    {
        Expiry::Valid { .. } => (None, String::new()),
        Expiry::Soon { at, left } => (
            Some(Severity::Warning),
            format!(
                "the CA root expires at {} (in {}): then no workload certificate verifies",
                rfc3339(at),
                span(left)
            ),
        ),
        Expiry::Expired { at, ago } => (
            Some(Severity::Error),
            format!(
                "the CA root EXPIRED at {} ({} ago): mesh TLS fails",
                rfc3339(at),
                span(ago)
            ),
        ),
        Expiry::Unreported => (
            Some(Severity::Error),
            "the control plane does not report its CA root expiry in /metrics".to_owned(),
        ),
    };
    if let Some(severity) = severity {
        out.push(control_plane_finding(
            "ca-root",
            severity,
            "CARootExpiry",
            message,
            rotate.into(),
        ));
    }
    let logs = format!("the control plane renews it at half its lifetime: read why it did not with kubectl -n {cp_ns} logs deploy/pqmesh-control-plane, then kubectl -n {cp_ns} rollout restart deploy/pqmesh-control-plane");
    let message = match replica::expiry(certs.serving, now, SERVING_CERT_MIN_LEFT_SECS) {
        Expiry::Valid { .. } => return,
        Expiry::Soon { at, left } => format!("the serving certificate expires at {} (in {}): its renewal is overdue", rfc3339(at), span(left)),
        Expiry::Expired { at, ago } => format!("the serving certificate EXPIRED at {} ({} ago): sidecars cannot reach the control plane", rfc3339(at), span(ago)),
        Expiry::Unreported => "the control plane does not report its serving certificate expiry in /metrics".to_owned(),
    };
    out.push(control_plane_finding(
        "serving-certificate",
        Severity::Error,
        "ServingCertExpiry",
        message,
        logs,
    ));
}

/// A lagging sidecar, named by its pod when the sidecar reported it.
fn lag(l: &SidecarLag, cp_ns: &str) -> Finding {
    let ns = l
        .identity
        .parse::<pqmesh_mtls::SpiffeId>()
        .map(|id| id.namespace().to_owned())
        .unwrap_or_default();
    let (kind, name) = match &l.pod {
        Some(pod) => ("Pod", pod.clone()),
        None => ("Sidecar", l.identity.clone()),
    };
    let restart = match &l.pod {
        Some(pod) => {
            format!("kubectl delete pod {pod} -n {ns} (or kubectl rollout restart its workload)")
        }
        None => format!("restart the workload whose identity is {}", l.identity),
    };
    let who = l.identity.as_str();
    let (severity, code, message, fix) = match &l.lag {
        Lag::Uncompilable { reason } => (
            Severity::Error,
            "PolicyUncompilable",
            format!("the control plane cannot compile the policy of {who}: {reason} (the sidecar keeps its last snapshot)"),
            "correct the objects the message names (kubectl pqmesh analyze lists them when they are refused)".to_owned(),
        ),
        Lag::Rejected { version, reason } => (
            Severity::Error,
            "PolicyRejected",
            format!("the sidecar of {who} rejected policy version {version}: {reason} (it keeps its last good policy)"),
            format!("correct the policy the reason names; if the sidecar is older than the control plane, upgrade it: {restart}"),
        ),
        Lag::NotAcked { sent, acked } => (
            Severity::Warning,
            "PolicyNotAcked",
            format!(
                "the sidecar of {who} has not acknowledged policy version {sent} (it runs {})",
                acked.as_deref().unwrap_or("none")
            ),
            format!("usually transient: analyze again in a few seconds; if it stays, read kubectl logs {} -n {ns} -c pqmesh-proxy, then {restart}", l.pod.as_deref().unwrap_or("POD")),
        ),
        Lag::StaleCa { has, current } => (
            Severity::Warning,
            "StaleCA",
            format!("the sidecar of {who} holds a certificate from CA version {has}, not the current {current}: after the old root is dropped it cannot connect"),
            format!("it re-certifies when it renews; to do it now: {restart}; do not run rotate-root finish before (control plane in {cp_ns})"),
        ),
    };
    Finding {
        severity,
        code,
        kind: kind.into(),
        namespace: ns,
        name,
        message,
        fix,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiring_root_and_serving_certificate() {
        let now = now_unix() as f64;
        let mut out = Vec::new();
        let certs = CertExpiries {
            root: Some(now + 5.0 * 86_400.0),
            serving: Some(now + 60.0),
        };
        expiries(&certs, 30, "pqmesh-system", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].code, out[0].severity),
            ("CARootExpiry", Severity::Warning)
        );
        assert!(out[0].fix.starts_with("kubectl pqmesh rotate-root prepare"));
        assert_eq!(
            (out[1].code, out[1].severity),
            ("ServingCertExpiry", Severity::Error)
        );
        let mut out = Vec::new();
        let fine = CertExpiries {
            root: Some(now + 400.0 * 86_400.0),
            serving: Some(now + 86_400.0),
        };
        expiries(&fine, 30, "pqmesh-system", &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn lags_name_the_pod_and_its_namespace() {
        let f = lag(
            &SidecarLag {
                identity: "spiffe://cluster.local/ns/shop/sa/api".into(),
                pod: Some("api-0".into()),
                lag: Lag::StaleCa {
                    has: "a".into(),
                    current: "b".into(),
                },
            },
            "pqmesh-system",
        );
        assert_eq!(
            (f.kind.as_str(), f.namespace.as_str(), f.name.as_str()),
            ("Pod", "shop", "api-0")
        );
        assert!(
            f.fix.contains("kubectl delete pod api-0 -n shop"),
            "{}",
            f.fix
        );
    }
}
