//! `kubectl pqmesh analyze`: configuration mistakes, each with severity, object, what is wrong
//! and the fix. Reads the cluster through kubectl, manifest files offline (`-f`, for CI before
//! `kubectl apply`), or both; the control plane's admin endpoint adds certificate expiry and
//! stale sidecars. Exit 1 when a finding reaches `--fail-on`.

mod inventory;
mod mesh;
mod rules;

use std::fmt::Write;

use serde::Serialize;

use crate::cli::{AnalyzeArgs, ClusterArgs, Format, Severity};
use crate::kubectl::Kubectl;
use crate::render::Table;
use crate::Outcome;
use inventory::Inventory;

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable name for the kind of finding (`SelectsNoPod`, `TokenIssuerNotFound`, …).
    pub code: &'static str,
    pub kind: String,
    /// Empty for cluster-scoped objects and the control plane.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    pub message: String,
    pub fix: String,
    /// The file and document, for objects read from files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Finding {
    fn object(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    /// What was read: `cluster`, `files`, `control-plane`.
    sources: Vec<&'static str>,
    /// Objects analysed, by kind.
    analysed: std::collections::BTreeMap<String, usize>,
    findings: Vec<Finding>,
    errors: usize,
    warnings: usize,
    infos: usize,
}

pub async fn run(cluster: &ClusterArgs, args: &AnalyzeArgs) -> anyhow::Result<Outcome> {
    let mut inv = Inventory::default();
    let mut sources = Vec::new();
    let default_ns = cluster.namespace.as_deref().unwrap_or("default");
    if !args.files.is_empty() {
        inv.add_files(&args.files, args.recursive, default_ns)?;
        sources.push("files");
    }
    let use_cluster = args.files.is_empty() || args.cluster;
    if use_cluster {
        let kubectl = Kubectl::new(cluster);
        inv.add_cluster(&kubectl, &args.webhook).await?;
        inv.add_referenced_secrets(&kubectl).await?;
        sources.push("cluster");
    }
    let ctx = rules::Context {
        trust_domain: &args.trust_domain,
        control_plane_namespace: &cluster.control_plane_namespace,
    };
    let mut findings = rules::findings(&inv, &ctx);
    if use_cluster || args.admin_url.is_some() {
        findings.extend(mesh::findings(cluster, args).await?);
        sources.push("control-plane");
    }
    if let Some(ns) = &cluster.namespace {
        // Objects of that namespace (and the mesh-wide control-plane findings).
        findings.retain(|f| {
            f.kind == "ControlPlane"
                || &f.namespace == ns
                || (f.kind == "Namespace" && &f.name == ns)
        });
    }
    findings.sort_by(|a, b| {
        (b.severity, a.object(), a.code, &a.message).cmp(&(
            a.severity,
            b.object(),
            b.code,
            &b.message,
        ))
    });
    // Every replica reports the CA: the same finding once.
    findings.dedup();
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let report = Report {
        sources,
        analysed: inv.counts(),
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        infos: count(Severity::Info),
        findings,
    };
    let failing = report.findings.iter().any(|f| f.severity >= args.fail_on);
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Table => render(&report),
    };
    Ok(Outcome {
        text,
        exit: u8::from(failing),
    })
}

fn render(report: &Report) -> String {
    let analysed: Vec<String> = report
        .analysed
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    let mut out = format!(
        "pqmesh analyze: {} ({})\n\n",
        report.sources.join(" + "),
        if analysed.is_empty() {
            "no objects".to_owned()
        } else {
            analysed.join(", ")
        }
    );
    if report.findings.is_empty() {
        out.push_str("No findings.\n");
        return out;
    }
    let mut table = Table::new(&["SEVERITY", "CODE", "OBJECT", "FINDING"]);
    for f in &report.findings {
        let severity = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        let mut what = f.message.clone();
        if let Some(src) = &f.source {
            let _ = write!(what, " [{src}]");
        }
        table.row(vec![severity.into(), f.code.into(), f.object(), what]);
        table.row(vec![
            String::new(),
            String::new(),
            String::new(),
            format!("fix: {}", f.fix),
        ]);
    }
    out.push_str(&table.render(""));
    let _ = writeln!(
        out,
        "\n{} error(s), {} warning(s), {} info",
        report.errors, report.warnings, report.infos
    );
    out
}
