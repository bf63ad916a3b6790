//! What one control-plane replica's admin endpoint says about the mesh: CA root and serving
//! certificate expiry (from `/metrics`) and every connected sidecar's policy and CA versions
//! (from `/policy_status`). `check` and `analyze` both judge from these facts, each in its own
//! words.

use serde_json::Value;

use crate::admin::{AdminEndpoint, AdminError};
use crate::prom;

/// A serving certificate this close to expiry means renewal (at 50 % of lifetime) is overdue.
pub const SERVING_CERT_MIN_LEFT_SECS: i64 = 300;

/// How far a certificate is from its `notAfter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The metric is absent, zero or not a number.
    Unreported,
    /// Expired at `at` (unix seconds).
    Expired {
        at: i64,
        ago: i64,
    },
    /// Expires at `at`, within the warning window.
    Soon {
        at: i64,
        left: i64,
    },
    Valid {
        at: i64,
        left: i64,
    },
}

/// Classifies an expiry timestamp against `now` and a warning window (both in seconds).
pub fn expiry(at: Option<f64>, now: i64, warn_within: i64) -> Expiry {
    let Some(at) = at.filter(|v| v.is_finite() && *v > 0.0) else {
        return Expiry::Unreported;
    };
    let at = at as i64;
    let left = at - now;
    if left <= 0 {
        Expiry::Expired { at, ago: -left }
    } else if left < warn_within {
        Expiry::Soon { at, left }
    } else {
        Expiry::Valid { at, left }
    }
}

/// The CA root's and the serving certificate's `notAfter`, as the replica exports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CertExpiries {
    pub root: Option<f64>,
    pub serving: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("unreadable /metrics: {0}")]
    Metrics(#[from] prom::ParseError),
}

/// GET /metrics and pick the two expiry gauges.
pub async fn cert_expiries(ep: &AdminEndpoint) -> Result<CertExpiries, ReadError> {
    let samples = prom::parse(&ep.get_ok("/metrics").await?)?;
    Ok(CertExpiries {
        root: prom::value(&samples, "pqmesh_ca_root_expiry_timestamp_seconds"),
        serving: prom::value(&samples, "pqmesh_serving_cert_expiry_timestamp_seconds"),
    })
}

/// Why a connected sidecar is not on what the control plane wants it to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lag {
    /// The control plane cannot compile this workload's policy (it keeps its last snapshot).
    Uncompilable { reason: String },
    /// The sidecar NACKed the version last sent to it.
    Rejected { version: String, reason: String },
    /// Sent but not (yet) ACKed.
    NotAcked { sent: String, acked: Option<String> },
    /// Its certificate was issued under another CA version than the one in force.
    StaleCa { has: String, current: String },
}

/// One lagging sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarLag {
    pub identity: String,
    /// The pod name, when the sidecar reported it.
    pub pod: Option<String>,
    pub lag: Lag,
}

impl SidecarLag {
    /// `spiffe://… (pod NAME)`, `(pod ?)` when the pod is unknown.
    pub fn who(&self) -> String {
        format!(
            "{} (pod {})",
            self.identity,
            self.pod.as_deref().unwrap_or("?")
        )
    }
}

/// `/policy_status` reduced to what is wrong with the sidecars.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyStatus {
    pub connected: u64,
    pub on_current: u64,
    /// A sidecar appears at most once for its policy (the first of uncompilable, rejected, not
    /// ACKed) and at most once for its CA.
    pub lags: Vec<SidecarLag>,
}

/// Reads a `/policy_status` document; `Err` names what it lacks.
pub fn policy_status(v: &Value) -> Result<PolicyStatus, &'static str> {
    let (Some(connected), Some(on_current)) = (
        v["connected_sidecars"].as_u64(),
        v["sidecars_on_current_version"].as_u64(),
    ) else {
        return Err("/policy_status lacks connected_sidecars / sidecars_on_current_version");
    };
    let current_ca = v["ca_version"].as_str().filter(|s| !s.is_empty());
    let mut out = PolicyStatus {
        connected,
        on_current,
        lags: Vec::new(),
    };
    for s in v["sidecars"].as_array().into_iter().flatten() {
        let identity = s["identity"].as_str().unwrap_or("?").to_owned();
        let pod = s["pod"]
            .as_str()
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        let mut push = |lag| {
            out.lags.push(SidecarLag {
                identity: identity.clone(),
                pod: pod.clone(),
                lag,
            })
        };
        let sent = s["sent_version"].as_str();
        let acked = s["acked_version"].as_str();
        // `nack` is [version, reason] for the last rejected snapshot.
        let nack = s["nack"]
            .as_array()
            .and_then(|n| Some((n.first()?.as_str()?, n.get(1)?.as_str()?)));
        if let Some(reason) = s["compile_error"].as_str() {
            push(Lag::Uncompilable {
                reason: reason.to_owned(),
            });
        } else {
            match (nack, sent) {
                (Some((version, reason)), Some(sent)) if version == sent => push(Lag::Rejected {
                    version: version.to_owned(),
                    reason: reason.to_owned(),
                }),
                (_, Some(sent)) if Some(sent) != acked => push(Lag::NotAcked {
                    sent: sent.to_owned(),
                    acked: acked.map(str::to_owned),
                }),
                _ => {}
            }
        }
        // A sidecar that has not reported a CA version yet is not known to be stale.
        if let (Some(current), Some(has)) = (current_ca, s["ca_version"].as_str()) {
            if has != current {
                push(Lag::StaleCa {
                    has: has.to_owned(),
                    current: current.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expiry_thresholds() {
        let day = 86_400;
        assert_eq!(expiry(None, 0, day), Expiry::Unreported);
        assert_eq!(expiry(Some(f64::NAN), 0, day), Expiry::Unreported);
        assert_eq!(
            expiry(Some(100.0), 200, day),
            Expiry::Expired { at: 100, ago: 100 }
        );
        assert_eq!(
            expiry(Some((10 * day) as f64), 0, 30 * day),
            Expiry::Soon {
                at: 10 * day,
                left: 10 * day
            }
        );
        assert!(matches!(
            expiry(Some((40 * day) as f64), 0, 30 * day),
            Expiry::Valid { .. }
        ));
    }

    #[test]
    fn lags_of_every_kind() {
        let v = json!({
            "connected_sidecars": 5, "sidecars_on_current_version": 2, "ca_version": "ca2",
            "sidecars": [
                {"identity": "a", "pod": "a-0", "sent_version": "v2", "acked_version": "v2", "ca_version": "ca2"},
                {"identity": "b", "pod": "b-0", "sent_version": "v2", "acked_version": "v1", "nack": ["v2", "bad"], "ca_version": "ca2"},
                {"identity": "c", "pod": "", "sent_version": "v2", "acked_version": null},
                {"identity": "d", "pod": "d-0", "sent_version": "v2", "acked_version": "v2", "ca_version": "ca1"},
                {"identity": "e", "pod": "e-0", "compile_error": "no issuer", "ca_version": "ca2"},
            ]
        });
        let s = policy_status(&v).unwrap();
        assert_eq!((s.connected, s.on_current), (5, 2));
        let lags: Vec<(&str, &Lag)> = s
            .lags
            .iter()
            .map(|l| (l.identity.as_str(), &l.lag))
            .collect();
        assert_eq!(lags.len(), 4, "{lags:?}");
        assert!(matches!(lags[0], ("b", Lag::Rejected { version, .. }) if version == "v2"));
        assert!(matches!(lags[1], ("c", Lag::NotAcked { acked: None, .. })));
        assert!(matches!(lags[2], ("d", Lag::StaleCa { has, .. }) if has == "ca1"));
        assert!(matches!(lags[3], ("e", Lag::Uncompilable { .. })));
        assert_eq!(s.lags[1].who(), "c (pod ?)");
        assert!(policy_status(&json!({"oops": 1})).is_err());
        assert!(policy_status(&json!("garbage")).is_err());
    }
}
