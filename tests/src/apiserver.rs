//! A recording stand-in for kube-apiserver, for the Kubernetes-mode tests. There is no API
//! server on this machine, so this serves objects in the shape a v1.33 API server returns them
//! (list, watch, get, create, replace, server-side apply, TokenReview) over plain HTTP to the
//! control plane's real kube-rs client, and records every request for the tests to inspect.
//! Like the real one, it answers 409 Conflict to a replace or an apply whose
//! `metadata.resourceVersion` is not the stored one, and keeps `metadata.managedFields` (one
//! entry per manager and operation, without the field sets). Stricter than the real one, as
//! the tests' oracle: a write without `fieldManager` is refused with 422 (the real server
//! accepts it and records a manager derived from the user agent, typically `unknown`; only for
//! an apply does it refuse too). TokenReview creations are exempt: nothing is stored.
//! pqmesh's own kinds (AccessPolicy, TokenIssuer) go through what the real server does to a
//! custom resource (`crd_schema`): unknown fields pruned (no strict field validation, as with
//! most clients), defaults applied, the structural schema checked (422 Invalid), and the CEL
//! rules evaluated by hand-coded equivalents. `metadata.generation` moves on spec changes only.
//! Gateway API kinds (GatewayClass, Gateway, HTTPRoute): every status write is checked against
//! the status schema of the Gateway API's CRDs (`gateway_api_schema`: metav1.Condition's
//! status enum, reason pattern, message length, RFC 3339 time, observedGeneration ≥ 0, one
//! condition per type; listener and route-parent required fields) and refused with 422 as the
//! real server does; unknown status fields are pruned. An apply without apiVersion or kind is a
//! 400. Status writes: server-side apply (merged as below) and JSON patch (`test`, `remove`, `add`,
//! `replace`). Field ownership is approximated: a manager owns the status keys and the
//! `status.replicas` entries it applied; applying a value a key already has shares the key with
//! its other owners, changing it takes the key over (a forced apply); a manager left owning
//! nothing disappears from `managedFields`, as on the real server.
//! What it cannot show: real CEL (cost limits, exact semantics), ratcheting of existing
//! objects after a CRD upgrade (`put_stored` stands in for objects stored under an older CRD),
//! conflicts between managers, and the real server's timing.
//! Simplifications, on purpose: no authentication/authorization, no field or label selectors
//! other than `metadata.name`, no pagination, and server-side apply merges objects key by key
//! (lists of objects keyed by `name` merge by that key, as `x-kubernetes-list-type: map` lists
//! do) without ownership tracking or conflicts between managers.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::broadcast;

mod status_writes;
use status_writes::{json_patch, reown, status_fields};

/// `(collection, namespace, name)`; collection is e.g. `api/v1/pods` or
/// `apis/pqmesh.io/v1alpha1/accesspolicies`.
type Key = (String, String, String);

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
    /// The `fieldManager` query parameter, percent-decoded.
    pub field_manager: Option<String>,
}

impl Recorded {
    /// Whether the request changed (or tried to change) an object.
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    version: u64,
    /// (resourceVersion, collection, event) for watches resuming from a version.
    log: Vec<(u64, String, Value)>,
    requests: Vec<Recorded>,
    /// Token → TokenReview status.
    reviews: HashMap<String, Value>,
    /// Per object and Apply manager: the status fields it owns (`key` or `replicas[name]`).
    owned: HashMap<Key, BTreeMap<String, std::collections::BTreeSet<String>>>,
}

pub struct ApiServer {
    pub url: String,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(String, Value)>,
}

fn kind_to_collection(kind: &str, api_version: &str) -> String {
    let plural = match kind {
        "AccessPolicy" => "accesspolicies".to_owned(),
        "EdgePolicy" => "edgepolicies".to_owned(),
        "GatewayClass" => "gatewayclasses".to_owned(),
        "EndpointSlice" => "endpointslices".to_owned(),
        "MutatingWebhookConfiguration" => "mutatingwebhookconfigurations".to_owned(),
        k => format!("{}s", k.to_lowercase()),
    };
    if api_version.contains('/') {
        format!("apis/{api_version}/{plural}")
    } else {
        format!("api/{api_version}/{plural}")
    }
}

/// Splits a request path into (collection, namespace, name, subresource).
fn parse_path(path: &str) -> Option<(String, String, String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (parts.get(..2)?.join("/"), &parts[2..]),
        "apis" => (parts.get(..3)?.join("/"), &parts[3..]),
        _ => return None,
    };
    let (ns, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (rest[1].to_owned(), &rest[2..])
    } else {
        (String::new(), rest)
    };
    let resource = rest.first()?;
    Some((
        format!("{prefix}/{resource}"),
        ns,
        rest.get(1).map(|s| s.to_string()).unwrap_or_default(),
        rest.get(2).map(|s| s.to_string()).unwrap_or_default(),
    ))
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Server-side-apply style merge: objects merge key by key, lists of named objects by name.
fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(a), Value::Array(b))
            if b.iter().all(|e| e.get("name").is_some())
                && a.iter().all(|e| e.get("name").is_some()) =>
        {
            for item in b {
                match a.iter_mut().find(|e| e.get("name") == item.get("name")) {
                    Some(existing) => merge(existing, item),
                    None => a.push(item.clone()),
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl ApiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (events, _) = broadcast::channel(1024);
        let server = Self {
            url: format!("http://{addr}"),
            state: state.clone(),
            events: events.clone(),
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (state, events) = (state.clone(), events.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(state.clone(), events.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        server
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Stores an object as if someone had created or changed it (watchers see the event);
    /// pqmesh kinds are pruned, defaulted and validated as the real server does. Panics on an
    /// object the server would refuse (use [`Self::try_put`] to see the refusal).
    pub fn put(&self, object: Value) {
        if let Err(e) = self.try_put(object) {
            panic!("the API server refuses this object: {e}");
        }
    }

    /// Like `put`, with the API server's refusal (422 Invalid) as the error.
    pub fn try_put(&self, mut object: Value) -> Result<(), String> {
        validate(&mut object)?;
        let mut state = self.state.lock().unwrap();
        store(&mut state, &self.events, object, None);
        Ok(())
    }

    /// Stores an object without validation: one created under an older, laxer CRD (the API
    /// server does not re-validate stored objects when a CRD gains rules).
    pub fn put_stored(&self, object: Value) {
        let mut state = self.state.lock().unwrap();
        store(&mut state, &self.events, object, None);
    }

    pub fn delete(&self, collection: &str, ns: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(mut obj) = state
            .objects
            .remove(&(collection.into(), ns.into(), name.into()))
        {
            state.version += 1;
            obj["metadata"]["resourceVersion"] = json!(state.version.to_string());
            let event = json!({"type": "DELETED", "object": obj});
            let v = state.version;
            state.log.push((v, collection.to_owned(), event.clone()));
            let _ = self.events.send((collection.to_owned(), event));
        }
    }

    pub fn get(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .get(&(collection.into(), ns.into(), name.into()))
            .cloned()
    }

    /// What TokenReview answers for `token` (the `status` of the review).
    pub fn review(&self, token: &str, status: Value) {
        self.state
            .lock()
            .unwrap()
            .reviews
            .insert(token.to_owned(), status);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// Prunes, defaults and validates pqmesh's custom resources; other kinds pass unchanged.
fn validate(object: &mut Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let Some(schema) = crate::crd_schema::schema_for(&kind) else {
        return Ok(());
    };
    let group = object["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map_or("", |(g, _)| g)
        .to_owned();
    crate::crd_schema::admit(&schema, object).map_err(|errors| {
        format!(
            "{kind}.{group} {:?} is invalid: {}",
            object["metadata"]["name"].as_str().unwrap_or_default(),
            errors.join(", ")
        )
    })
}

/// A status write to a Gateway API object is checked against the CRD's status schema, as the
/// real server does (`crate::gateway_api_schema`); pqmesh's kinds are left as before (their
/// status is the control plane's, checked by its own tests).
fn status_schema(object: &mut Value) -> Result<(), String> {
    let gateway_api = object["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"));
    if gateway_api {
        validate(object)
    } else {
        Ok(())
    }
}

/// `(manager, operation)` of a write through the API, kept in `metadata.managedFields`.
type Manager<'a> = Option<(&'a str, &'a str)>;

fn store(
    state: &mut State,
    events: &broadcast::Sender<(String, Value)>,
    object: Value,
    manager: Manager<'_>,
) -> Value {
    store_dropping(state, events, object, manager, &[])
}

/// As `store`, with `dropped` managers (left owning nothing) gone from `managedFields`.
fn store_dropping(
    state: &mut State,
    events: &broadcast::Sender<(String, Value)>,
    mut object: Value,
    manager: Manager<'_>,
    dropped: &[String],
) -> Value {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
    let collection = kind_to_collection(&kind, &api_version);
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = (collection.clone(), ns, name.clone());
    let existing = state.objects.get(&key).cloned();
    state.version += 1;
    let spec_changed = existing
        .as_ref()
        .is_some_and(|old| old.get("spec") != object.get("spec"));
    let meta = &mut object["metadata"];
    meta["resourceVersion"] = json!(state.version.to_string());
    let (generation, event_type) = match &existing {
        Some(old) => {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            meta["uid"] = old["metadata"]["uid"].clone();
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            (if spec_changed { g + 1 } else { g }, "MODIFIED")
        }
        None => {
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", state.version));
            meta["creationTimestamp"] = json!("2026-11-22T08:00:00Z");
            (1, "ADDED")
        }
    };
    object["metadata"]["generation"] = json!(generation);
    let mut managed: Vec<Value> = existing
        .as_ref()
        .and_then(|old| old["metadata"]["managedFields"].as_array().cloned())
        .unwrap_or_default();
    managed.retain(|m| !dropped.iter().any(|d| m["manager"] == json!(d)));
    if let Some((manager, operation)) = manager {
        managed.retain(|m| !(m["manager"] == json!(manager) && m["operation"] == json!(operation)));
        managed.push(
            json!({"manager": manager, "operation": operation, "apiVersion": api_version,
                            "time": "2026-11-22T08:00:00Z", "fieldsType": "FieldsV1"}),
        );
    }
    if managed.is_empty() {
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        object["metadata"]["managedFields"] = json!(managed);
    }
    state.objects.insert(key, object.clone());
    let event = json!({"type": event_type, "object": object});
    let v = state.version;
    state.log.push((v, collection.clone(), event.clone()));
    let _ = events.send((collection, event));
    object
}

fn json_response(
    status: u16,
    body: &Value,
) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

async fn handle(
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(String, Value)>,
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // `fieldSelector=metadata.name=<name>` (percent-encoded by the client) is the one selector
    // supported: it is what watches of a single object use.
    let field_manager = params.get("fieldManager").map(|m| percent_decode(m));
    let only_name: Option<String> = params
        .get("fieldSelector")
        .map(|f| f.replace("%3D", "=").replace("%3d", "="))
        .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_owned));
    let Some((collection, ns, name, sub)) = parse_path(&path) else {
        return Ok(json_response(
            404,
            &status_body(404, "NotFound", "no such path"),
        ));
    };

    if method == Method::GET
        && name.is_empty()
        && params.get("watch").map(String::as_str) == Some("true")
    {
        let since: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let named = only_name.clone();
        let named = move |e: &Value| {
            named
                .as_ref()
                .is_none_or(|n| e["object"]["metadata"]["name"] == json!(n))
        };
        let mut live = events.subscribe();
        let backlog: Vec<Value> = {
            let mut s = state.lock().unwrap();
            s.requests.push(Recorded {
                method: "WATCH".into(),
                path: path.clone(),
                query,
                content_type,
                body,
                status: 200,
                field_manager: None,
            });
            s.log
                .iter()
                .filter(|(v, c, e)| {
                    *v > since
                        && *c == collection
                        && (ns.is_empty() || e["object"]["metadata"]["namespace"] == json!(ns))
                        && named(e)
                })
                .map(|(_, _, e)| e.clone())
                .collect()
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        tokio::spawn(async move {
            for e in backlog {
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("{e}\n")))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            while let Ok((c, e)) = live.recv().await {
                if c != collection
                    || (!ns.is_empty() && e["object"]["metadata"]["namespace"] != json!(ns))
                    || !named(&e)
                {
                    continue;
                }
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("{e}\n")))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut resp = Response::new(BodyExt::boxed(body));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(resp);
    }

    let mut s = state.lock().unwrap();
    let key = (collection.clone(), ns.clone(), name.clone());
    let stored_version = s
        .objects
        .get(&key)
        .map(|o| o["metadata"]["resourceVersion"].clone());
    // A resourceVersion in the body is a precondition (replace and apply alike).
    let conflict = body["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty() && stored_version != Some(json!(v)));
    let is_write = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && collection != "apis/authentication.k8s.io/v1/tokenreviews";
    let manager = field_manager.as_deref().unwrap_or_default();
    let (status, answer) = match (&method, name.is_empty()) {
        _ if is_write && field_manager.as_deref().is_none_or(str::is_empty) => (
            422,
            status_body(
                422,
                "Invalid",
                "fieldManager: Required value: the recorded API server refuses writes without a field manager",
            ),
        ),
        (&Method::PUT | &Method::PATCH, false) if conflict => (
            409,
            status_body(
                409,
                "Conflict",
                &format!("Operation cannot be fulfilled on {collection} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            ),
        ),
        (&Method::POST, true) if collection == "apis/authentication.k8s.io/v1/tokenreviews" => {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            match s.reviews.get(token) {
                Some(review) if review.get("code").is_some() => {
                    let code = review["code"].as_u64().unwrap_or(500) as u16;
                    (
                        code,
                        status_body(code, "InternalError", "recorded API error"),
                    )
                }
                Some(review) => (
                    201,
                    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null}, "spec": body["spec"], "status": review}),
                ),
                None => (
                    201,
                    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null}, "spec": body["spec"],
                    "status": {"user": {}, "error": "[invalid bearer token, token lookup failed]"}}),
                ),
            }
        }
        (&Method::GET, true) => {
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((c, n, o), _)| {
                    *c == collection
                        && (ns.is_empty() || *n == ns)
                        && only_name.as_ref().is_none_or(|want| want == o)
                })
                .map(|(_, v)| v.clone())
                .collect();
            let kind = items
                .first()
                .and_then(|i| i["kind"].as_str())
                .unwrap_or("Object")
                .to_owned();
            (
                200,
                json!({"kind": format!("{kind}List"), "apiVersion": "v1",
                "metadata": {"resourceVersion": s.version.to_string()}, "items": items}),
            )
        }
        (&Method::GET, false) => match s.objects.get(&key) {
            Some(o) => (200, o.clone()),
            None => (
                404,
                status_body(404, "NotFound", &format!("{name} not found")),
            ),
        },
        (&Method::POST, true) if validate(&mut body.clone()).is_err() => {
            let message = validate(&mut body.clone()).unwrap_err();
            (422, status_body(422, "Invalid", &message))
        }
        (&Method::POST, true) => {
            let mut object = body.clone();
            validate(&mut object).ok();
            if !ns.is_empty() {
                object["metadata"]["namespace"] = json!(ns);
            }
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if s.objects
                .contains_key(&(collection.clone(), ns.clone(), name.clone()))
            {
                (
                    409,
                    status_body(409, "AlreadyExists", &format!("{name} already exists")),
                )
            } else {
                (201, store(&mut s, &events, object, Some((manager, "Update"))))
            }
        }
        (&Method::PUT, false) => match s.objects.get(&key) {
            Some(_) => (
                200,
                store(&mut s, &events, body.clone(), Some((manager, "Update"))),
            ),
            None => (
                404,
                status_body(404, "NotFound", &format!("{name} not found")),
            ),
        },
        (&Method::PATCH, false)
            if sub == "status" && content_type.starts_with("application/json-patch") =>
        {
            match s.objects.get(&key).cloned() {
                None => (404, status_body(404, "NotFound", &format!("{name} not found"))),
                Some(mut object) => match json_patch(&mut object, &body)
                    .and_then(|removed| status_schema(&mut object).map(|()| removed))
                {
                    Err(e) => (422, status_body(422, "Invalid", &e)),
                    Ok(removed) => {
                        let none = BTreeMap::new();
                        let empty = reown(&mut s, &key, None, &none, &none, &removed);
                        // A patch that only removes leaves its manager owning nothing: no entry.
                        let sets = body.as_array().is_some_and(|ops| ops.iter().any(|o| o["op"] == "add" || o["op"] == "replace"));
                        (200, store_dropping(&mut s, &events, object, sets.then_some((manager, "Update")), &empty))
                    }
                },
            }
        }
        (&Method::PATCH, false)
            if content_type.starts_with("application/apply-patch")
                && (body["apiVersion"].as_str().is_none_or(str::is_empty)
                    || body["kind"].as_str().is_none_or(str::is_empty)) =>
        {
            (
                400,
                status_body(400, "BadRequest", "apiVersion and kind are required in an apply patch"),
            )
        }
        (&Method::PATCH, false) if content_type.starts_with("application/apply-patch") => {
            let mut object = s.objects.get(&key).cloned().unwrap_or_else(|| {
                json!({"apiVersion": body["apiVersion"], "kind": body["kind"],
                       "metadata": {"name": name, "namespace": if ns.is_empty() { Value::Null } else { json!(ns) }}})
            });
            if sub == "status" {
                if !s.objects.contains_key(&key) {
                    (
                        404,
                        status_body(404, "NotFound", &format!("{name} not found")),
                    )
                } else {
                    let before = status_fields(&object["status"]);
                    merge(&mut object["status"], &body["status"]);
                    match status_schema(&mut object) {
                        Err(e) => (422, status_body(422, "Invalid", &e)),
                        Ok(()) => {
                            let applied = status_fields(&body["status"]);
                            let empty = reown(&mut s, &key, Some(manager), &applied, &before, &[]);
                            (200, store_dropping(&mut s, &events, object, Some((manager, "Apply")), &empty))
                        }
                    }
                }
            } else {
                let mut patch = body.clone();
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                merge(&mut object, &patch);
                (200, store(&mut s, &events, object, Some((manager, "Apply"))))
            }
        }
        _ => (
            405,
            status_body(
                405,
                "MethodNotAllowed",
                "not supported by the recorded API server",
            ),
        ),
    };
    s.requests.push(Recorded {
        method: method.to_string(),
        path,
        query,
        content_type,
        body,
        status,
        field_manager,
    });
    Ok(json_response(status, &answer))
}

/// `%XX` escapes of a query value (field managers may contain `/`).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
