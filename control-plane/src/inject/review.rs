//! AdmissionReview v1 in, AdmissionReview v1 out.
//!
//! Failure handling (fail closed wherever the mesh is at stake):
//! - a body that is not a readable AdmissionReview v1 with a `request.uid` cannot be answered
//!   (the response must echo the uid): [`ReviewError`], which the server turns into HTTP 400; the
//!   API server then applies the webhook's `failurePolicy` (the chart's default, `Fail`, keeps
//!   the pod out);
//! - a readable review for something other than a pod CREATE: allowed, unchanged;
//! - a pod that must be injected but cannot be (malformed spec, bad annotation, reserved name):
//!   `allowed: false` with a precise `status.message`, so it never runs without the mesh;
//! - a skipped pod: allowed, unchanged; host-network pods also get a warning for the user.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::pod::{clip, inject_pod, type_name, Decision, SkipReason};
use super::InjectConfig;

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// What the webhook did with one review, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(SkipReason),
    /// The review was for another kind of object (the webhook configuration should only send
    /// pods).
    NotAPod,
    /// Not a pod CREATE (an UPDATE, a subresource): the pod spec can no longer gain containers.
    NotACreate,
    /// `allowed: false`: the pod should be injected and cannot be.
    Refused,
}

impl Outcome {
    /// The `outcome` label of `pqmesh_injections_total` (`error` is the server's, for
    /// unreadable reviews).
    pub fn metric_label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped(reason) => reason.metric_label(),
            Outcome::NotAPod => "skipped_not_pod",
            Outcome::NotACreate => "skipped_operation",
            Outcome::Refused => "refused",
        }
    }

    /// Every label value, so the counters exist (at 0) from the start.
    pub fn all_metric_labels() -> [&'static str; 8] {
        [
            "injected",
            SkipReason::OptedOut.metric_label(),
            SkipReason::HostNetwork.metric_label(),
            SkipReason::AlreadyInjected.metric_label(),
            SkipReason::NotSelected.metric_label(),
            "skipped_not_pod",
            "skipped_operation",
            "refused",
        ]
    }
}

/// The answer to a readable review.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The AdmissionReview response, JSON.
    pub body: Vec<u8>,
    pub outcome: Outcome,
    /// `namespace/name` of the pod (or `generateName*`), for logs.
    pub subject: String,
    /// Why the pod was refused or skipped, for logs.
    pub detail: Option<String>,
}

/// A body that cannot be answered with an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("not an AdmissionReview {API_VERSION}: {0}")]
    NotAdmissionReview(String),
    #[error("the AdmissionReview cannot be answered: {0}")]
    Unanswerable(String),
}

/// Answers one AdmissionReview. Never panics; see the module docs for the failure policy.
pub fn review(body: &[u8], cfg: &InjectConfig) -> Result<Reviewed, ReviewError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    let root = value.as_object().ok_or_else(|| {
        ReviewError::NotAdmissionReview(format!("expected an object, got {}", type_name(&value)))
    })?;
    let field = |name: &str| root.get(name).and_then(Value::as_str).unwrap_or("");
    if field("apiVersion") != API_VERSION || field("kind") != "AdmissionReview" {
        return Err(ReviewError::NotAdmissionReview(format!(
            "apiVersion {:?}, kind {:?} (the webhook configuration must list admissionReviewVersions: [v1])",
            clip(field("apiVersion")),
            clip(field("kind"))
        )));
    }
    let request = match root.get("request") {
        Some(Value::Object(r)) => r,
        None | Some(Value::Null) => {
            return Err(ReviewError::Unanswerable("request is missing".into()))
        }
        Some(other) => {
            return Err(ReviewError::Unanswerable(format!(
                "request must be an object, got {}",
                type_name(other)
            )))
        }
    };
    let uid = match request.get("uid") {
        Some(Value::String(uid)) if !uid.is_empty() => uid.clone(),
        _ => {
            return Err(ReviewError::Unanswerable(
                "request.uid is missing or not a non-empty string".into(),
            ))
        }
    };
    let kind = request
        .get("kind")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ReviewError::Unanswerable("request.kind is missing or not an object".into())
        })?;
    let str_of =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let (group, kind) = match (str_of(kind, "group"), str_of(kind, "kind")) {
        (Some(g), Some(k)) => (g, k),
        _ => {
            return Err(ReviewError::Unanswerable(
                "request.kind needs string fields group and kind".into(),
            ))
        }
    };
    let object = request.get("object").unwrap_or(&Value::Null);
    let subject = subject(request, object);
    let done = |response: Map<String, Value>, outcome, detail| Reviewed {
        body: envelope(response),
        outcome,
        subject: subject.clone(),
        detail,
    };

    if !(group.is_empty() && kind == "Pod") {
        return Ok(done(allowed(&uid), Outcome::NotAPod, None));
    }
    let operation = str_of(request, "operation").unwrap_or_default();
    let sub_resource = str_of(request, "subResource").unwrap_or_default();
    if operation != "CREATE" || !sub_resource.is_empty() {
        return Ok(done(allowed(&uid), Outcome::NotACreate, None));
    }
    if object.is_null() {
        let reason = "request.object is missing".to_owned();
        return Ok(done(
            refused(&uid, &subject, &reason),
            Outcome::Refused,
            Some(reason),
        ));
    }
    Ok(match inject_pod(object, None, cfg) {
        Ok(Decision::Patch(ops)) => {
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            let mut response = allowed(&uid);
            response.insert("patchType".into(), json!("JSONPatch"));
            response.insert(
                "patch".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(patch)),
            );
            done(response, Outcome::Injected, None)
        }
        Ok(Decision::Skip(reason)) => {
            let mut response = allowed(&uid);
            if reason == SkipReason::HostNetwork {
                response.insert(
                    "warnings".into(),
                    json!([format!(
                        "pqmesh: sidecar not injected: {}",
                        reason.describe()
                    )]),
                );
            }
            done(
                response,
                Outcome::Skipped(reason),
                Some(reason.describe().to_owned()),
            )
        }
        Err(e) => {
            let reason = e.to_string();
            done(
                refused(&uid, &subject, &reason),
                Outcome::Refused,
                Some(reason),
            )
        }
    })
}

/// Runs the review decoder on arbitrary bytes: the entry point for a fuzz target (and the
/// seeded mutation test). Must never panic.
#[doc(hidden)]
pub fn fuzz_review(data: &[u8], cfg: &InjectConfig) {
    let _ = review(data, cfg);
}

fn allowed(uid: &str) -> Map<String, Value> {
    let mut response = Map::new();
    response.insert("uid".into(), json!(uid));
    response.insert("allowed".into(), json!(true));
    response
}

fn refused(uid: &str, subject: &str, reason: &str) -> Map<String, Value> {
    let mut response = Map::new();
    response.insert("uid".into(), json!(uid));
    response.insert("allowed".into(), json!(false));
    response.insert(
        "status".into(),
        json!({
            "status": "Failure",
            "reason": "BadRequest",
            "code": 400,
            "message": format!(
                "pqmesh cannot inject its sidecar into pod {subject}: {reason}; the pod is refused so that it never runs outside the mesh (fix the pod, or opt out with the annotation pqmesh.io/inject: \"false\")"
            ),
        }),
    );
    response
}

fn envelope(response: Map<String, Value>) -> Vec<u8> {
    let review = json!({
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": Value::Object(response),
    });
    serde_json::to_vec(&review).unwrap_or_default()
}

/// `namespace/name`, or `namespace/generateName*` for a pod whose name is not generated yet.
fn subject(request: &Map<String, Value>, object: &Value) -> String {
    fn text(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).filter(|s| !s.is_empty())
    }
    let namespace = text(request.get("namespace"))
        .or_else(|| text(object.pointer("/metadata/namespace")))
        .unwrap_or("?");
    let name = text(request.get("name"))
        .or_else(|| text(object.pointer("/metadata/name")))
        .map(str::to_owned)
        .or_else(|| text(object.pointer("/metadata/generateName")).map(|g| format!("{g}*")))
        .unwrap_or_else(|| "?".to_owned());
    clip(&format!("{namespace}/{name}"))
}
