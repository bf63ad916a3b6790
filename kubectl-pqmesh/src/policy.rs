//! `kubectl pqmesh policy <pod>`: the policy snapshot a sidecar applied (version, AccessPolicies,
//! TokenIssuers with secrets redacted), its decision counters, and the control plane's view of
//! that sidecar's stream (sent and ACKed versions, NACK reason).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use crate::cli::{ClusterArgs, Format, PolicyArgs};
use crate::render::{fields, redact, scalar, Table};
use crate::target::{self, PodRef};
use crate::{prom, Outcome};

#[derive(Debug, Serialize)]
pub struct Report {
    pub pod: Option<PodRef>,
    pub admin: String,
    pub spiffe_id: Option<String>,
    pub inbound_mode: Option<String>,
    /// Null until the first snapshot arrived.
    pub version: Option<String>,
    pub access_policies: Vec<Value>,
    pub token_issuers: Vec<Value>,
    pub snapshots: BTreeMap<String, u64>,
    pub decisions: Vec<Counter>,
    pub token_authentications: Vec<Counter>,
    pub introspections: Vec<Counter>,
    /// The control plane's record of this sidecar's policy stream, when asked.
    pub control_plane: Option<ControlPlaneView>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Counter {
    pub labels: BTreeMap<String, String>,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct ControlPlaneView {
    pub source: String,
    pub found: bool,
    pub selected_by: Vec<String>,
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub nack: Option<(String, String)>,
    /// The version the sidecar runs is the one the control plane recorded as ACKed.
    pub acked: bool,
    pub detail: String,
}

pub async fn run(cluster: &ClusterArgs, args: &PolicyArgs) -> anyhow::Result<Outcome> {
    let sidecar = target::sidecar(cluster, args.pod.as_deref(), args.admin_url.as_deref()).await?;
    let result = collect(&sidecar).await;
    let hint = sidecar.hint.clone();
    sidecar.endpoint.close().await;
    let mut report = result.map_err(|e| target::with_hint(e, hint.as_deref()))?;

    // The ACK status lives in the control plane: asked directly with --control-plane-url, through
    // every replica on the cluster path, not at all with only --admin-url.
    let cp_url = args.control_plane_url.as_deref();
    if cp_url.is_some() || args.admin_url.is_none() {
        report.control_plane = Some(control_plane_view(cluster, cp_url, &report).await);
    }
    if let Some(cp) = &report.control_plane {
        if !cp.acked {
            report.warnings.push(cp.detail.clone());
        }
    }
    let text = match args.output {
        // Built from the redacted dump, so no secret reaches this output.
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Table => render(&report),
    };
    Ok(Outcome { text, exit: 0 })
}

async fn collect(sidecar: &target::Sidecar) -> anyhow::Result<Report> {
    let ep = &sidecar.endpoint;
    let mut dump = ep.get_json("/config_dump").await?;
    redact(&mut dump);
    let mut warnings = Vec::new();
    let policy = &dump["policy"];
    let list = |k: &str| policy[k].as_array().cloned().unwrap_or_default();
    let version = match policy {
        Value::Null => None,
        p => Some(
            p["version"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| p["version"].as_u64().map(|n| n.to_string()))
                .ok_or_else(|| anyhow::anyhow!("/config_dump policy has no version"))?,
        ),
    };
    if version.is_none() {
        warnings.push(
            "no policy snapshot received yet: the sidecar has not completed Policy/Watch with the control plane".into(),
        );
    }
    let mut report = Report {
        pod: sidecar.pod.clone(),
        admin: if ep.via_port_forward() {
            format!("{} (kubectl port-forward)", ep.base_url())
        } else {
            ep.base_url().to_owned()
        },
        spiffe_id: dump["certificate"]["spiffe_id"].as_str().map(str::to_owned),
        inbound_mode: dump["config"]["inbound"]["mode"]
            .as_str()
            .map(str::to_owned),
        version,
        access_policies: list("access_policies"),
        token_issuers: list("token_issuers"),
        snapshots: BTreeMap::new(),
        decisions: Vec::new(),
        token_authentications: Vec::new(),
        introspections: Vec::new(),
        control_plane: None,
        warnings: Vec::new(),
    };
    match ep.get_ok("/metrics").await.map(|t| prom::parse(&t)) {
        Ok(Ok(samples)) => {
            for s in prom::select(&samples, "pqmesh_policy_updates_total", &[]) {
                let outcome = s.labels.get("outcome").cloned().unwrap_or_default();
                *report.snapshots.entry(outcome).or_default() += s.value as u64;
            }
            report.decisions = counters(&samples, "pqmesh_policy_decisions_total");
            report.token_authentications = counters(&samples, "pqmesh_token_authentications_total");
            report.introspections = counters(&samples, "pqmesh_token_introspections_total");
            if report.snapshots.get("rejected").is_some_and(|n| *n > 0) {
                warnings.push(format!(
                    "the sidecar rejected {} snapshot(s) since it started (it keeps its last good policy; see `kubectl pqmesh check` for the reason)",
                    report.snapshots["rejected"]
                ));
            }
        }
        Ok(Err(e)) => warnings.push(format!(
            "decision counters unknown: unreadable /metrics: {e}"
        )),
        Err(e) => warnings.push(format!("decision counters unknown: {e}")),
    }
    report.warnings = warnings;
    Ok(report)
}

fn counters(samples: &[prom::Sample], name: &str) -> Vec<Counter> {
    let mut out: BTreeMap<BTreeMap<String, String>, u64> = BTreeMap::new();
    for s in prom::select(samples, name, &[]) {
        *out.entry(s.labels.clone()).or_default() += s.value as u64;
    }
    out.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(labels, count)| Counter { labels, count })
        .collect()
}

async fn control_plane_view(
    cluster: &ClusterArgs,
    url: Option<&str>,
    report: &Report,
) -> ControlPlaneView {
    let mut view = ControlPlaneView {
        source: url.map(str::to_owned).unwrap_or_else(|| {
            format!("control-plane pods in {}", cluster.control_plane_namespace)
        }),
        found: false,
        selected_by: Vec::new(),
        sent_version: None,
        acked_version: None,
        nack: None,
        acked: false,
        detail: String::new(),
    };
    let replicas = match target::control_plane(cluster, url).await {
        Ok(r) => r,
        Err(e) => {
            view.detail = format!("ACK status unknown: {e:#}");
            return view;
        }
    };
    let mut streams = Vec::new();
    let mut errors = Vec::new();
    for replica in replicas {
        match replica.endpoint {
            Ok(ep) => {
                match ep.get_json("/policy_status").await {
                    Ok(v) => streams.extend(v["sidecars"].as_array().cloned().unwrap_or_default()),
                    Err(e) => errors.push(e.to_string()),
                }
                ep.close().await;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let pod_name = report.pod.as_ref().map(|p| p.name.as_str());
    let matches: Vec<&Value> = streams
        .iter()
        .filter(|s| {
            report
                .spiffe_id
                .as_deref()
                .is_some_and(|id| s["identity"] == id)
                && pod_name.is_none_or(|p| s["pod"] == p)
        })
        .collect();
    let stream = match matches.as_slice() {
        [one] => *one,
        [] => {
            view.detail = format!(
                "the control plane has no policy stream from this sidecar ({}){}",
                report.spiffe_id.as_deref().unwrap_or("no identity yet"),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; unreachable: {}", errors.join("; "))
                }
            );
            return view;
        }
        many => {
            view.detail = format!(
                "{} policy streams from {}: name the pod to tell them apart",
                many.len(),
                report.spiffe_id.as_deref().unwrap_or("?")
            );
            return view;
        }
    };
    let opt = |k: &str| stream[k].as_str().map(str::to_owned);
    view.found = true;
    view.selected_by = stream["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    view.sent_version = opt("sent_version");
    view.acked_version = opt("acked_version");
    view.nack = stream["nack"].as_array().and_then(|n| {
        Some((
            n.first()?.as_str()?.to_owned(),
            n.get(1)?.as_str()?.to_owned(),
        ))
    });
    let running = report.version.as_deref();
    view.acked = running.is_some() && view.acked_version.as_deref() == running;
    view.detail = match (&view.nack, view.acked) {
        (Some((v, reason)), _) if Some(v) == view.sent_version.as_ref() => {
            format!("the sidecar NACKed version {v}: {reason}")
        }
        (_, true) if view.sent_version == view.acked_version => {
            "ACKed: the sidecar runs the latest version the control plane sent".into()
        }
        (_, true) => format!(
            "ACKed, but version {} was sent since and is not ACKed yet",
            view.sent_version.as_deref().unwrap_or("-")
        ),
        (_, false) => format!(
            "not ACKed: the control plane recorded {} as ACKed, the sidecar runs {}",
            view.acked_version.as_deref().unwrap_or("nothing"),
            running.unwrap_or("nothing")
        ),
    };
    view
}

/// An AccessPolicy entry: a name today; an object with `name` (and details) if the dump grows.
fn policy_name(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .or_else(|| v["name"].as_str().map(str::to_owned))
        .unwrap_or_else(|| v.to_string())
}

fn render(r: &Report) -> String {
    let mut head = Vec::new();
    if let Some(p) = &r.pod {
        head.push(("Pod", p.to_string()));
    }
    head.push(("Sidecar admin", r.admin.clone()));
    head.push((
        "SPIFFE ID",
        r.spiffe_id.clone().unwrap_or_else(|| "none yet".into()),
    ));
    if let Some(m) = &r.inbound_mode {
        head.push(("Inbound mode", m.clone()));
    }
    head.push((
        "Policy version",
        r.version.clone().unwrap_or_else(|| "none received".into()),
    ));
    if let Some(cp) = &r.control_plane {
        head.push(("Control plane", cp.detail.clone()));
        if !cp.selected_by.is_empty() {
            head.push(("Selected by", cp.selected_by.join(", ")));
        }
    }
    if !r.snapshots.is_empty() {
        head.push((
            "Snapshots",
            r.snapshots
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let mut out = fields(&head);

    let _ = writeln!(out, "\nAccessPolicies ({})", r.access_policies.len());
    if r.access_policies.is_empty() {
        out.push_str("  none select this workload: no policy enforced beyond the sidecar's own inbound settings\n");
    }
    for p in &r.access_policies {
        let _ = writeln!(out, "  {}", policy_name(p));
        // Richer dumps (an object per policy) show their details under the name.
        if let Some(details) = p.as_object() {
            for (k, v) in details.iter().filter(|(k, _)| k.as_str() != "name") {
                let _ = writeln!(out, "    {k}: {}", scalar(v));
            }
        }
    }

    let _ = writeln!(out, "\nTokenIssuers ({})", r.token_issuers.len());
    if !r.token_issuers.is_empty() {
        let mut t = Table::new(&["NAME", "ISSUER", "JWKS", "INTROSPECTION", "CLIENT ID"]);
        for i in &r.token_issuers {
            let intro = &i["introspection"];
            t.row(vec![
                scalar(&i["name"]),
                scalar(&i["issuer"]),
                scalar(&i["jwks_uri"]),
                scalar(&intro["endpoint"]),
                scalar(&intro["client_id"]),
            ]);
        }
        out.push_str(&t.render("  "));
    }

    for (title, list, keys) in [
        ("Decisions", &r.decisions, &["decision", "reason"][..]),
        (
            "Token authentications",
            &r.token_authentications,
            &["outcome"][..],
        ),
        (
            "Introspections",
            &r.introspections,
            &["issuer", "outcome"][..],
        ),
    ] {
        if title != "Decisions" && list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title} (since the sidecar started)");
        if list.is_empty() {
            out.push_str("  none yet\n");
            continue;
        }
        let mut header: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
        header.push("COUNT".into());
        let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
        for c in list {
            let mut row: Vec<String> = keys
                .iter()
                .map(|k| c.labels.get(*k).cloned().unwrap_or_else(|| "-".into()))
                .collect();
            row.push(c.count.to_string());
            t.row(row);
        }
        out.push_str(&t.render("  "));
    }
    if !r.warnings.is_empty() {
        out.push('\n');
        for w in &r.warnings {
            let _ = writeln!(out, "WARNING: {w}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_from_strings_or_objects() {
        assert_eq!(
            policy_name(&serde_json::json!("shop/orders")),
            "shop/orders"
        );
        assert_eq!(
            policy_name(&serde_json::json!({"name": "shop/orders", "ports": [8080]})),
            "shop/orders"
        );
        assert_eq!(policy_name(&serde_json::json!(7)), "7");
    }
}
