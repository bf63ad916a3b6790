//! `kubectl pqmesh check`: is the mesh healthy? Control-plane replicas (live, ready, CA root and
//! serving-certificate expiry, sidecars on the current policy version, NACKs), and on the cluster
//! path the CRDs and the injection webhook (configuration, caBundle, a ready backend).

use std::fmt::Write;

use base64::Engine;
use serde::Serialize;
use serde_json::Value;

use crate::admin::AdminEndpoint;
use crate::cli::{CheckArgs, ClusterArgs, Format};
use crate::kubectl::{Kubectl, KubectlError};
use crate::render::{now_unix, rfc3339, span, Table};
use crate::replica::{self, Expiry, Lag, SERVING_CERT_MIN_LEFT_SECS};
use crate::{target, Outcome};

const CRDS: [&str; 2] = ["accesspolicies.pqmesh.io", "tokenissuers.pqmesh.io"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Serialize)]
pub struct Item {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub healthy: bool,
    pub source: String,
    pub checks: Vec<Item>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report {
    fn add(&mut self, check: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.checks.push(Item {
            check: check.into(),
            status,
            detail: detail.into(),
        });
    }
}

pub async fn run(cluster: &ClusterArgs, args: &CheckArgs) -> anyhow::Result<Outcome> {
    let mut report = Report::default();
    match &args.admin_url {
        Some(url) => {
            report.source = format!("control-plane admin {url}");
        }
        None => {
            report.source = format!(
                "cluster (control plane in namespace {})",
                cluster.control_plane_namespace
            );
            let kubectl = Kubectl::new(cluster);
            check_crds(&kubectl, &mut report).await?;
            check_webhook(&kubectl, &args.webhook, &mut report).await?;
        }
    }
    let replicas = match target::control_plane(cluster, args.admin_url.as_deref()).await {
        Ok(r) => r,
        Err(e)
            if e.downcast_ref::<KubectlError>()
                .is_some_and(KubectlError::is_fatal) =>
        {
            return Err(e)
        }
        Err(e) => {
            report.add("control plane", Status::Fail, format!("{e:#}"));
            Vec::new()
        }
    };
    let mut sidecars = SidecarTotals::default();
    let several = replicas.len() > 1;
    for replica in replicas {
        let prefix = if several {
            format!("[{}] ", replica.name)
        } else {
            String::new()
        };
        if !replica.ready_in_kubernetes {
            report.add(
                format!("{prefix}pod ready"),
                Status::Fail,
                "Kubernetes does not report the pod Ready",
            );
        }
        match replica.endpoint {
            Ok(endpoint) => {
                check_replica(&endpoint, &prefix, args, &mut report, &mut sidecars).await;
                endpoint.close().await;
            }
            Err(e) => report.add(
                format!("{prefix}control plane reachable"),
                Status::Fail,
                e.to_string(),
            ),
        }
    }
    if sidecars.answered {
        let status = if sidecars.on_current == sidecars.connected {
            Status::Ok
        } else {
            Status::Warn
        };
        report.add(
            "sidecars on current policy",
            status,
            format!(
                "{} connected, {} on the current policy version{}",
                sidecars.connected,
                sidecars.on_current,
                if sidecars.connected == 0 {
                    " (no meshed workloads connected yet)"
                } else {
                    ""
                }
            ),
        );
    }
    finish(&mut report, args.strict);
    let exit = if report.healthy { 0 } else { 1 };
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Table => render(&report),
    };
    Ok(Outcome { text, exit })
}

#[derive(Default)]
struct SidecarTotals {
    answered: bool,
    connected: u64,
    on_current: u64,
}

async fn check_replica(
    ep: &AdminEndpoint,
    prefix: &str,
    args: &CheckArgs,
    report: &mut Report,
    totals: &mut SidecarTotals,
) {
    for path in ["/live", "/ready"] {
        let name = format!("{prefix}control plane {}", &path[1..]);
        match ep.get(path).await {
            Ok((200, _)) => report.add(name, Status::Ok, format!("{path} answered 200")),
            Ok((status, body)) => report.add(
                name,
                Status::Fail,
                format!("{path} answered {status}: {}", body.trim()),
            ),
            Err(e) => {
                report.add(name, Status::Fail, e.to_string());
                return; // unreachable: the remaining checks would repeat the same error
            }
        }
    }
    match replica::cert_expiries(ep).await {
        Ok(certs) => {
            let now = now_unix();
            let (status, detail) = expiry(
                certs.root,
                now,
                args.root_warn_days as i64 * 86_400,
                "CA root",
            );
            report.add(format!("{prefix}CA root expiry"), status, detail);
            let (status, detail) = expiry(
                certs.serving,
                now,
                SERVING_CERT_MIN_LEFT_SECS,
                "serving certificate",
            );
            report.add(format!("{prefix}serving cert expiry"), status, detail);
        }
        Err(e) => report.add(format!("{prefix}metrics"), Status::Fail, e.to_string()),
    }
    match ep.get_json("/policy_status").await {
        Ok(status) => policy_status(&status, prefix, report, totals),
        Err(e) => report.add(
            format!("{prefix}policy status"),
            Status::Fail,
            e.to_string(),
        ),
    }
}

fn expiry(at: Option<f64>, now: i64, warn_within: i64, what: &str) -> (Status, String) {
    match replica::expiry(at, now, warn_within) {
        Expiry::Unreported => (
            Status::Fail,
            format!("{what} expiry not reported in /metrics"),
        ),
        Expiry::Expired { at, ago } => (
            Status::Fail,
            format!("{what} EXPIRED at {} ({} ago)", rfc3339(at), span(ago)),
        ),
        Expiry::Soon { at, left } => (
            Status::Warn,
            format!(
                "{what} expires at {} (in {}): rotate it",
                rfc3339(at),
                span(left)
            ),
        ),
        Expiry::Valid { at, left } => (
            Status::Ok,
            format!("valid until {} ({} left)", rfc3339(at), span(left)),
        ),
    }
}

fn policy_status(v: &Value, prefix: &str, report: &mut Report, totals: &mut SidecarTotals) {
    let status = match replica::policy_status(v) {
        Ok(s) => s,
        Err(why) => {
            report.add(format!("{prefix}policy status"), Status::Fail, why);
            return;
        }
    };
    totals.answered = true;
    totals.connected += status.connected;
    totals.on_current += status.on_current;
    for lag in &status.lags {
        let who = lag.who();
        let (state, detail) = match &lag.lag {
            Lag::Uncompilable { reason } => (
                Status::Fail,
                format!("{who}: the control plane cannot compile its policy: {reason} (it keeps its last snapshot)"),
            ),
            Lag::Rejected { version, reason } => (
                Status::Fail,
                format!("{who} rejected policy version {version}: {reason} (it keeps its last good policy)"),
            ),
            Lag::NotAcked { sent, acked } => (
                Status::Warn,
                format!(
                    "{who} has not ACKed version {sent} yet (runs {})",
                    acked.as_deref().unwrap_or("none")
                ),
            ),
            // The CA roll-out is `analyze`'s finding; `check` counts policy versions only.
            Lag::StaleCa { .. } => continue,
        };
        report.add(format!("{prefix}sidecar policy"), state, detail);
    }
}

async fn check_crds(kubectl: &Kubectl, report: &mut Report) -> anyhow::Result<()> {
    for crd in CRDS {
        match kubectl.get_json(None, &["get", "crd", crd]).await {
            Ok(v) => {
                let served: Vec<&str> = v["spec"]["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["served"] == true)
                    .filter_map(|x| x["name"].as_str())
                    .collect();
                if served.contains(&"v1alpha1") {
                    report.add(
                        format!("CRD {crd}"),
                        Status::Ok,
                        "installed, serves v1alpha1",
                    );
                } else {
                    report.add(
                        format!("CRD {crd}"),
                        Status::Fail,
                        format!("installed but serves {served:?}, not v1alpha1"),
                    );
                }
            }
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) if e.is_not_found() => report.add(
                format!("CRD {crd}"),
                Status::Fail,
                "not installed (helm install pqmesh installs it)",
            ),
            Err(e) => report.add(format!("CRD {crd}"), Status::Fail, e.to_string()),
        }
    }
    Ok(())
}

async fn check_webhook(kubectl: &Kubectl, name: &str, report: &mut Report) -> anyhow::Result<()> {
    let check = "injection webhook";
    let config = match kubectl
        .get_json(None, &["get", "mutatingwebhookconfiguration", name])
        .await
    {
        Ok(v) => v,
        Err(e) if e.is_fatal() => return Err(e.into()),
        Err(e) if e.is_not_found() => {
            report.add(
                check,
                Status::Fail,
                format!(
                    "MutatingWebhookConfiguration {name} not found: pods will not get a sidecar"
                ),
            );
            return Ok(());
        }
        Err(e) => {
            report.add(check, Status::Fail, e.to_string());
            return Ok(());
        }
    };
    let webhooks = config["webhooks"].as_array().cloned().unwrap_or_default();
    if webhooks.is_empty() {
        report.add(
            check,
            Status::Fail,
            format!("MutatingWebhookConfiguration {name} has no webhooks"),
        );
        return Ok(());
    }
    for hook in &webhooks {
        let hook_name = hook["name"].as_str().unwrap_or("?");
        let label = format!("webhook {hook_name}");
        let failure_policy = hook["failurePolicy"].as_str().unwrap_or("Fail");
        match ca_bundle(&hook["clientConfig"]["caBundle"]) {
            Ok(detail) => report.add(format!("{label} caBundle"), Status::Ok, detail),
            Err(why) => report.add(
                format!("{label} caBundle"),
                Status::Fail,
                format!("{why}: the API server cannot trust the webhook (failurePolicy {failure_policy})"),
            ),
        }
        let service = &hook["clientConfig"]["service"];
        let (Some(ns), Some(svc)) = (service["namespace"].as_str(), service["name"].as_str())
        else {
            report.add(
                format!("{label} backend"),
                Status::Skip,
                "clientConfig has a URL, not a Service",
            );
            continue;
        };
        let selector = format!("kubernetes.io/service-name={svc}");
        match kubectl
            .get_json(Some(ns), &["get", "endpointslices", "-l", &selector])
            .await
        {
            Ok(v) => {
                let ready = ready_endpoints(&v);
                if ready == 0 {
                    report.add(
                        format!("{label} backend"),
                        Status::Fail,
                        format!("Service {ns}/{svc} has no ready endpoints: with failurePolicy {failure_policy} pods in meshed namespaces {}",
                            if failure_policy == "Ignore" { "start without a sidecar" } else { "cannot be created" }),
                    );
                } else {
                    report.add(
                        format!("{label} backend"),
                        Status::Ok,
                        format!("Service {ns}/{svc}: {ready} ready endpoint(s)"),
                    );
                }
            }
            Err(e) => report.add(format!("{label} backend"), Status::Fail, e.to_string()),
        }
    }
    Ok(())
}

/// Checks a webhook caBundle: base64 of PEM certificates, none expired.
fn ca_bundle(v: &Value) -> Result<String, String> {
    let b64 = v
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or("caBundle is empty")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("caBundle is not base64: {e}"))?;
    let pems = pem::parse_many(&raw).map_err(|e| format!("caBundle is not PEM: {e}"))?;
    let mut earliest: Option<i64> = None;
    let mut count = 0;
    for p in pems.iter().filter(|p| p.tag() == "CERTIFICATE") {
        use der::Decode;
        let cert = x509_cert::Certificate::from_der(p.contents())
            .map_err(|e| format!("caBundle holds an unreadable certificate: {e}"))?;
        let not_after = cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64;
        earliest = Some(earliest.map_or(not_after, |e| e.min(not_after)));
        count += 1;
    }
    let earliest = earliest.ok_or("caBundle holds no certificate")?;
    if earliest <= now_unix() {
        return Err(format!(
            "a caBundle certificate EXPIRED at {}",
            rfc3339(earliest)
        ));
    }
    Ok(format!(
        "{count} certificate(s), first expiry {}",
        rfc3339(earliest)
    ))
}

fn ready_endpoints(slices: &Value) -> usize {
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["conditions"]["ready"] != false)
        .count()
}

fn finish(report: &mut Report, strict: bool) {
    for item in &report.checks {
        let line = format!("{}: {}", item.check, item.detail);
        match item.status {
            Status::Fail => report.problems.push(line),
            Status::Warn if strict => report.problems.push(line),
            Status::Warn => report.warnings.push(line),
            _ => {}
        }
    }
    report.healthy = report.problems.is_empty();
}

fn render(report: &Report) -> String {
    let mut out = format!("pqmesh check: {}\n\n", report.source);
    let mut table = Table::new(&["CHECK", "STATUS", "DETAIL"]);
    for item in &report.checks {
        let status = match item.status {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        table.row(vec![item.check.clone(), status.into(), item.detail.clone()]);
    }
    out.push_str(&table.render(""));
    out.push('\n');
    for (what, list) in [("problem", &report.problems), ("warning", &report.warnings)] {
        if !list.is_empty() {
            let _ = writeln!(
                out,
                "{} {what}{}:",
                list.len(),
                if list.len() == 1 { "" } else { "s" }
            );
            for l in list {
                let _ = writeln!(out, "  - {l}");
            }
        }
    }
    if report.healthy {
        out.push_str("pqmesh is healthy.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expiry_thresholds() {
        let day = 86_400;
        assert_eq!(expiry(None, 0, day, "CA root").0, Status::Fail);
        assert_eq!(expiry(Some(f64::NAN), 0, day, "CA root").0, Status::Fail);
        assert_eq!(expiry(Some(100.0), 200, day, "CA root").0, Status::Fail);
        assert_eq!(
            expiry(Some((10 * day) as f64), 0, 30 * day, "CA root").0,
            Status::Warn
        );
        assert_eq!(
            expiry(Some((40 * day) as f64), 0, 30 * day, "CA root").0,
            Status::Ok
        );
    }

    #[test]
    fn policy_status_nacks_and_laggards() {
        let v = json!({
            "connected_sidecars": 3, "sidecars_on_current_version": 1,
            "sidecars": [
                {"identity": "spiffe://cluster.local/ns/shop/sa/a", "pod": "a-0", "sent_version": "v2", "acked_version": "v2", "nack": null},
                {"identity": "spiffe://cluster.local/ns/shop/sa/b", "pod": "b-0", "sent_version": "v2", "acked_version": "v1", "nack": ["v2", "two issuers claim iss x"]},
                {"identity": "spiffe://cluster.local/ns/shop/sa/c", "pod": "", "sent_version": "v2", "acked_version": null, "nack": null},
            ]
        });
        let mut r = Report::default();
        let mut t = SidecarTotals::default();
        policy_status(&v, "", &mut r, &mut t);
        assert_eq!((t.connected, t.on_current), (3, 1));
        assert_eq!(r.checks.len(), 2);
        assert_eq!(r.checks[0].status, Status::Fail);
        assert!(r.checks[0]
            .detail
            .contains("rejected policy version v2: two issuers"));
        assert_eq!(r.checks[1].status, Status::Warn);
        assert!(r.checks[1]
            .detail
            .contains("(pod ?) has not ACKed version v2"));
        let mut r = Report::default();
        policy_status(&json!({"oops": 1}), "", &mut r, &mut t);
        assert_eq!(r.checks[0].status, Status::Fail);
    }

    #[test]
    fn policy_status_compile_errors() {
        let v = json!({
            "connected_sidecars": 1, "sidecars_on_current_version": 1,
            "sidecars": [
                {"identity": "spiffe://cluster.local/ns/shop/sa/api", "pod": "api-0", "sent_version": "v1", "acked_version": "v1", "nack": null,
                 "compile_error": "AccessPolicies shop/orders: TokenIssuers shop/a and shop/b both configure introspection"},
            ]
        });
        let mut r = Report::default();
        let mut t = SidecarTotals::default();
        policy_status(&v, "", &mut r, &mut t);
        assert_eq!(r.checks.len(), 1);
        assert_eq!(r.checks[0].status, Status::Fail);
        assert!(r.checks[0].detail.contains(
            "(pod api-0): the control plane cannot compile its policy: AccessPolicies shop/orders"
        ));
    }

    #[test]
    fn ca_bundles() {
        assert_eq!(ca_bundle(&json!("")).unwrap_err(), "caBundle is empty");
        assert_eq!(ca_bundle(&Value::Null).unwrap_err(), "caBundle is empty");
        assert!(ca_bundle(&json!("%%%")).unwrap_err().contains("not base64"));
        let not_pem = base64::engine::general_purpose::STANDARD.encode("hello");
        assert!(ca_bundle(&json!(not_pem))
            .unwrap_err()
            .contains("no certificate"));
    }

    #[test]
    fn endpoint_slices() {
        let v = json!({"items": [{"endpoints": [{"conditions": {"ready": true}}, {"conditions": {"ready": false}}, {}]}]});
        assert_eq!(ready_endpoints(&v), 2);
        assert_eq!(ready_endpoints(&json!({})), 0);
    }
}
