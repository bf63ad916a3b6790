//! `kubectl pqmesh identity <pod>`: the workload certificate a sidecar holds (from /config_dump)
//! and the key-exchange groups its handshakes negotiated (from /metrics).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use crate::cli::{ClusterArgs, Format, IdentityArgs};
use crate::render::{fields, now_unix, rfc3339, scalar, time_left, Table};
use crate::target::{self, PodRef};
use crate::{prom, Outcome};

/// The only key exchange pqmesh uses by default; anything else was allowed for migration.
pub const HYBRID_GROUP: &str = "X25519MLKEM768";

#[derive(Debug, Serialize)]
pub struct Report {
    pub pod: Option<PodRef>,
    pub admin: String,
    pub certificate: Option<Certificate>,
    /// The sidecar's key-exchange setting (hybrid only, or classical groups allowed).
    pub key_exchange: Option<String>,
    pub handshakes: Vec<Handshakes>,
    pub handshake_failures: Vec<Failures>,
    /// Certify attempts since the sidecar started, by outcome.
    pub renewals: std::collections::BTreeMap<String, u64>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Certificate {
    pub spiffe_id: String,
    pub serial: String,
    pub not_before: Option<i64>,
    pub not_after: i64,
    pub not_after_rfc3339: String,
    pub expires_in_seconds: i64,
    pub signature_scheme: String,
    pub trust_bundle_roots: u64,
}

#[derive(Debug, Serialize)]
pub struct Handshakes {
    pub direction: String,
    pub group: String,
    pub signature_scheme: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct Failures {
    pub direction: String,
    pub reason: String,
    pub count: u64,
}

pub async fn run(cluster: &ClusterArgs, args: &IdentityArgs) -> anyhow::Result<Outcome> {
    let sidecar = target::sidecar(cluster, args.pod.as_deref(), args.admin_url.as_deref()).await?;
    let result = collect(&sidecar).await;
    let hint = sidecar.hint.clone();
    sidecar.endpoint.close().await;
    let report = result.map_err(|e| target::with_hint(e, hint.as_deref()))?;
    let exit = if report.certificate.is_some() { 0 } else { 1 };
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Table => render(&report),
    };
    Ok(Outcome { text, exit })
}

async fn collect(sidecar: &target::Sidecar) -> anyhow::Result<Report> {
    let ep = &sidecar.endpoint;
    let dump = ep.get_json("/config_dump").await?;
    let mut warnings = Vec::new();
    let certificate = certificate(&dump["certificate"], now_unix())?;
    match &certificate {
        None => warnings.push(
            "the sidecar holds no certificate yet: it has not reached the control plane's Certify (see its logs)".into(),
        ),
        Some(c) if c.expires_in_seconds <= 0 => warnings.push(format!(
            "the workload certificate EXPIRED at {}: renewal is failing (see the sidecar's logs)",
            c.not_after_rfc3339
        )),
        Some(_) => {}
    }
    let mut renewals = BTreeMap::new();
    let (handshakes, handshake_failures) =
        match ep.get_ok("/metrics").await.map(|t| prom::parse(&t)) {
            Ok(Ok(samples)) => {
                for s in prom::select(&samples, "pqmesh_certificate_renewals_total", &[]) {
                    let outcome = s.labels.get("outcome").cloned().unwrap_or_default();
                    *renewals.entry(outcome).or_default() += s.value as u64;
                }
                renewals.retain(|_, n| *n > 0);
                tls_counters(&samples)
            }
            Ok(Err(e)) => {
                warnings.push(format!(
                    "negotiated groups unknown: unreadable /metrics: {e}"
                ));
                (Vec::new(), Vec::new())
            }
            Err(e) => {
                warnings.push(format!("negotiated groups unknown: {e}"));
                (Vec::new(), Vec::new())
            }
        };
    for h in handshakes.iter().filter(|h| h.group != HYBRID_GROUP) {
        warnings.push(format!(
            "{} {} handshake(s) negotiated {} instead of {HYBRID_GROUP}: not post-quantum (classical groups are allowed for migration only)",
            h.count, h.direction, h.group
        ));
    }
    Ok(Report {
        pod: sidecar.pod.clone(),
        admin: if ep.via_port_forward() {
            format!("{} (kubectl port-forward)", ep.base_url())
        } else {
            ep.base_url().to_owned()
        },
        certificate,
        key_exchange: dump["config"]["key_exchange"].as_str().map(str::to_owned),
        handshakes,
        handshake_failures,
        renewals,
        warnings,
    })
}

/// `.certificate` of /config_dump: null before the first Certify.
pub fn certificate(v: &Value, now: i64) -> anyhow::Result<Option<Certificate>> {
    if v.is_null() {
        return Ok(None);
    }
    let field = |k: &str| {
        v.get(k)
            .filter(|x| !x.is_null())
            .ok_or_else(|| anyhow::anyhow!("/config_dump certificate lacks {k:?}"))
    };
    let spiffe_id = field("spiffe_id")?
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("/config_dump certificate.spiffe_id is not a string"))?
        .to_owned();
    let not_after = field("not_after")?
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("/config_dump certificate.not_after is not a number"))?;
    Ok(Some(Certificate {
        spiffe_id,
        serial: scalar(&v["serial"]),
        not_before: v["not_before"].as_i64(),
        not_after,
        not_after_rfc3339: v["not_after_rfc3339"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| rfc3339(not_after)),
        expires_in_seconds: not_after - now,
        signature_scheme: scalar(&v["signature_scheme"]),
        trust_bundle_roots: v["trust_bundle_roots"].as_u64().unwrap_or(0),
    }))
}

fn tls_counters(samples: &[prom::Sample]) -> (Vec<Handshakes>, Vec<Failures>) {
    let label = |s: &prom::Sample, k: &str| s.labels.get(k).cloned().unwrap_or_else(|| "-".into());
    let mut ok: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for s in prom::select(samples, "pqmesh_tls_handshakes_total", &[]) {
        *ok.entry((
            label(s, "direction"),
            label(s, "group"),
            label(s, "signature_scheme"),
        ))
        .or_default() += s.value as u64;
    }
    let mut failed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in prom::select(samples, "pqmesh_tls_handshake_failures_total", &[]) {
        *failed
            .entry((label(s, "direction"), label(s, "reason")))
            .or_default() += s.value as u64;
    }
    (
        ok.into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((direction, group, signature_scheme), count)| Handshakes {
                direction,
                group,
                signature_scheme,
                count,
            })
            .collect(),
        failed
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((direction, reason), count)| Failures {
                direction,
                reason,
                count,
            })
            .collect(),
    )
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut head = Vec::new();
    if let Some(p) = &r.pod {
        head.push(("Pod", p.to_string()));
    }
    head.push(("Sidecar admin", r.admin.clone()));
    match &r.certificate {
        Some(c) => {
            head.push(("SPIFFE ID", c.spiffe_id.clone()));
            head.push(("Serial", c.serial.clone()));
            if let Some(nb) = c.not_before {
                head.push(("Not before", rfc3339(nb)));
            }
            head.push((
                "Not after",
                format!(
                    "{} ({})",
                    c.not_after_rfc3339,
                    time_left(c.expires_in_seconds)
                ),
            ));
            head.push(("Signature scheme", c.signature_scheme.clone()));
            head.push((
                "Trust bundle",
                format!(
                    "{} root{}",
                    c.trust_bundle_roots,
                    if c.trust_bundle_roots == 1 { "" } else { "s" }
                ),
            ));
        }
        None => head.push(("Certificate", "none yet".into())),
    }
    if let Some(kx) = &r.key_exchange {
        head.push(("Key exchange", kx.clone()));
    }
    if !r.renewals.is_empty() {
        let list: Vec<String> = r.renewals.iter().map(|(k, v)| format!("{v} {k}")).collect();
        head.push(("Certify attempts", list.join(", ")));
    }
    out.push_str(&fields(&head));
    out.push_str("\nNegotiated TLS (handshakes since the sidecar started)\n");
    if r.handshakes.is_empty() {
        out.push_str("  no mesh handshakes yet\n");
    } else {
        let mut t = Table::new(&["DIRECTION", "GROUP", "PEER SIGNATURE", "HANDSHAKES", ""]);
        for h in &r.handshakes {
            let flag = if h.group == HYBRID_GROUP {
                ""
            } else {
                "<- not post-quantum"
            };
            t.row(vec![
                h.direction.clone(),
                h.group.clone(),
                h.signature_scheme.clone(),
                h.count.to_string(),
                flag.into(),
            ]);
        }
        out.push_str(&t.render("  "));
    }
    if !r.handshake_failures.is_empty() {
        out.push_str("\nFailed handshakes\n");
        let mut t = Table::new(&["DIRECTION", "REASON", "COUNT"]);
        for f in &r.handshake_failures {
            t.row(vec![
                f.direction.clone(),
                f.reason.clone(),
                f.count.to_string(),
            ]);
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
    use serde_json::json;

    #[test]
    fn certificate_from_config_dump() {
        let c = certificate(
            &json!({"spiffe_id": "spiffe://cluster.local/ns/shop/sa/api", "serial": "0a1b", "not_before": 10,
                    "not_after": 3_610, "signature_scheme": "ML-DSA-65", "trust_bundle_roots": 2}),
            10,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.expires_in_seconds, 3_600);
        assert_eq!(c.not_after_rfc3339, "1970-01-01T01:00:10Z");
        assert!(certificate(&Value::Null, 0).unwrap().is_none());
        for bad in [
            json!({"spiffe_id": 5, "not_after": 1}),
            json!({"spiffe_id": "x"}),
            json!({"spiffe_id": "x", "not_after": "soon"}),
            json!([]),
        ] {
            assert!(certificate(&bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn groups_are_summed_and_classical_ones_flagged() {
        let samples = prom::parse(
            "pqmesh_tls_handshakes_total{direction=\"outbound\",group=\"X25519MLKEM768\",signature_scheme=\"ML-DSA-65\"} 4\n\
             pqmesh_tls_handshakes_total{direction=\"inbound\",group=\"X25519\",signature_scheme=\"ecdsa_secp256r1_sha256\"} 1\n\
             pqmesh_tls_handshakes_total{direction=\"inbound\",group=\"secp256r1\",signature_scheme=\"x\"} 0\n\
             pqmesh_tls_handshake_failures_total{direction=\"inbound\",reason=\"no_shared_group\"} 2\n",
        )
        .unwrap();
        let (ok, failed) = tls_counters(&samples);
        assert_eq!(ok.len(), 2, "zero counters are not shown");
        assert_eq!(failed[0].count, 2);
    }
}
