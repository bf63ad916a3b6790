//! The edge gateway in Kubernetes mode, end to end. There is no kube-apiserver on this machine:
//! the control plane and the gateway talk to `pqmesh_tests::apiserver` with their real kube-rs
//! clients. The gateway certifies with a service-account-shaped token that the control plane
//! checks by TokenReview (as a sidecar in a cluster does), reads GatewayClasses, Gateways,
//! HTTPRoutes, EdgePolicies and the listener's `kubernetes.io/tls` Secret from the API server,
//! and resolves the route's Service through the control plane's discovery to the service's
//! sidecar (a real one, on a loopback address standing in for its pod IP), which checks the
//! gateway's identity. Then objects change under it, without a restart: a new route, a bad
//! route, an EdgePolicy attached and a second one conflicting with it, a rotated and then a
//! broken certificate Secret, a new listener, a deleted route.
//! What the stand-in cannot show: a real cluster's network (pod IPs here are 127.0.0.x, the
//! gateway's Service and kube-proxy are not involved), and the real API server's defaulting of
//! Gateway API objects (the objects below are written as the API server returns them, with
//! `allowedRoutes` filled in).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pqmesh_tests::apiserver::ApiServer;
use pqmesh_tests::*;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::gateway::{call, free_port, header_app};
use crate::kubernetes::{authenticated, cluster, mounted_bundle, pod, replica, sidecar_env, token};

/// The loopback address standing in for the orders pod's IP.
const ORDERS_IP: &str = "127.0.0.21";
const UNMESHED_IP: &str = "127.0.0.22";
const GATEWAY_IP: &str = "127.0.0.23";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn tls_secret(name: &str, crt: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": "shop"},
           "data": {"tls.crt": b64(crt), "tls.key": b64(key)}})
}

fn service(name: &str, cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

fn endpoint_slice(service: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abcde"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

pub(crate) fn gateway_class(name: &str, controller: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
           "metadata": {"name": name}, "spec": {"controllerName": controller}})
}

/// A listener as the API server returns it (defaults filled in).
pub(crate) fn listener(name: &str, port: u16, tls_secret: Option<&str>) -> Value {
    let mut l = json!({"name": name, "port": port, "protocol": "HTTP",
                       "allowedRoutes": {"namespaces": {"from": "Same"}}});
    if let Some(secret) = tls_secret {
        l["protocol"] = json!("HTTPS");
        l["hostname"] = json!("shop.example");
        l["tls"] = json!({"mode": "Terminate",
                          "certificateRefs": [{"group": "", "kind": "Secret", "name": secret}]});
    }
    l
}

pub(crate) fn gateway(name: &str, class: &str, listeners: Vec<Value>) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"gatewayClassName": class, "listeners": listeners}})
}

pub(crate) fn http_route(name: &str, prefix: &str, service: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                               "backendRefs": [{"group": "", "kind": "Service", "name": service, "port": 80, "weight": 1}]}]}})
}

fn edge_policy(route: &str, requests: u32) -> Value {
    json!({"apiVersion": "pqmesh.io/v1alpha1", "kind": "EdgePolicy",
           "metadata": {"name": format!("{route}-edge"), "namespace": "shop"},
           "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route},
                    "rateLimit": {"key": "sourceIP", "requests": requests, "periodSeconds": 3600}}})
}

/// An HTTPS GET trusting only `ca` (PEM), with SNI and Host `shop.example`.
async fn https_get(addr: SocketAddr, ca: &str, path: &str) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pqmesh_mtls::x509::certs_from_pem(ca).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("shop.example").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "shop.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// Waits up to `secs` for `cond`.
pub(crate) async fn within<F, Fut>(secs: u64, what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

pub(crate) struct Cluster {
    pub(crate) api: ApiServer,
    pub(crate) gateway: pqmesh_gateway::RunningGateway,
    pub(crate) http: u16,
    pub(crate) https: u16,
    pub(crate) ca: String,
    pub(crate) app_hits: Arc<std::sync::atomic::AtomicUsize>,
    _cp: pqmesh_control_plane::RunningControlPlane,
    _orders: pqmesh_sidecar::RunningSidecar,
    _dir: TempDir,
}

/// A cluster with the control plane, the orders service behind its sidecar, and a gateway
/// (class `pqmesh`, Gateway `shop/edge` with an HTTP and an HTTPS listener, route `orders`).
pub(crate) async fn gateway_cluster() -> Cluster {
    let api = ApiServer::start().await;
    cluster(&api);
    for sa in ["gateway", "orders"] {
        api.review(&token(sa), authenticated(sa, &["pqmesh-ca"]));
    }
    api.put(pod(
        "orders-7d9f8c6b5d-a1b2c",
        "orders",
        ORDERS_IP,
        "orders",
        true,
    ));
    api.put(pod(
        "plain-7d9f8c6b5d-a1b2c",
        "plain",
        UNMESHED_IP,
        "plain",
        false,
    ));
    // The gateway's own pod: in Kubernetes mode the control plane opens a policy stream only for
    // a known pod running as the caller's service account, and the gateway serves nothing until
    // its first snapshot (the deny list) is applied (review 12, F5).
    api.put(pod("gateway-0", "gateway", GATEWAY_IP, "gateway", false));
    api.put(service("orders", "10.96.0.30"));
    api.put(service("plain", "10.96.0.31"));
    api.put(endpoint_slice("plain", UNMESHED_IP, 8080));
    api.put(json!({"apiVersion": "pqmesh.io/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "orders"}}, "mtls": "STRICT", "peers": ["shop/gateway"]}}));
    let cp = replica(&api, "cp-0", &[])
        .await
        .expect("control plane starts");
    let dir = TempDir::new("gateway-k8s");
    eventually("the trust bundle ConfigMap", || {
        api.get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
            .is_some()
    })
    .await;
    let bundle = mounted_bundle(&api, &dir);

    let (app, app_hits) = header_app("orders").await;
    let orders = sidecar_redirected(
        with(
            sidecar_env(&cp, &bundle, "orders", "orders-7d9f8c6b5d-a1b2c"),
            &[("PQMESH_INBOUND_ADDR", &format!("{ORDERS_IP}:0"))],
        ),
        Some(app),
    )
    .await;
    api.put(endpoint_slice(
        "orders",
        ORDERS_IP,
        orders.inbound_addr.port(),
    ));

    let (crt, key) = self_signed();
    api.put(tls_secret("edge-cert", &crt, &key));
    let (http, https) = (free_port(), free_port());
    api.put(gateway_class("pqmesh", "pqmesh.io/gateway"));
    api.put(gateway_class("other", "example.com/other-controller"));
    api.put(gateway(
        "edge",
        "pqmesh",
        vec![
            listener("web", http, None),
            listener("secure", https, Some("edge-cert")),
        ],
    ));
    api.put(gateway(
        "theirs",
        "other",
        vec![listener("web", free_port(), None)],
    ));
    api.put(http_route("orders", "/orders", "orders"));
    api.put(http_route("plain", "/plain", "plain"));

    let mut env = sidecar_env(&cp, &bundle, "gateway", "gateway-0");
    for k in [
        "PQMESH_INBOUND_ADDR",
        "PQMESH_OUTBOUND_ADDR",
        "PQMESH_ADMIN_ADDR",
    ] {
        env.remove(k);
    }
    env.insert("PQMESH_GATEWAY_LISTEN_HOST".into(), "127.0.0.1".into());
    env.insert("PQMESH_GATEWAY_ADMIN_ADDR".into(), "127.0.0.1:0".into());
    let config = pqmesh_gateway::config::Config::from_settings(true, &env).expect("gateway config");
    let gateway = pqmesh_gateway::start_kubernetes_with_client(config, api.client())
        .await
        .expect("gateway starts");
    tokio::time::timeout(Duration::from_secs(20), gateway.ready())
        .await
        .expect("gateway certified and got its first policy snapshot");
    Cluster {
        api,
        gateway,
        http,
        https,
        ca: crt,
        app_hits,
        _cp: cp,
        _orders: orders,
        _dir: dir,
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn kubernetes_mode_serves_from_the_api_server_and_follows_changes_without_restart() {
    let c = gateway_cluster().await;
    let api = &c.api;
    assert_eq!(
        c.gateway.current().unwrap().creds.id.to_string(),
        spiffe("gateway"),
        "the gateway's identity comes from its service account, by TokenReview"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.path.ends_with("/tokenreviews")
                && r.body["spec"]["token"] == json!(token("gateway"))),
        "the control plane reviewed the gateway's token"
    );
    let mut served: Vec<String> = c.gateway.listeners().into_iter().map(|(n, _)| n).collect();
    served.sort();
    assert_eq!(
        served,
        ["shop/edge/secure", "shop/edge/web"],
        "the other controller's Gateway is left alone"
    );

    // A route to a Service, resolved by discovery to the meshed endpoint and its identity.
    within(20, "the orders route answers through discovery", || async {
        call(local(c.http), "/orders/1", &[]).await.status == 200
    })
    .await;
    let r = call(
        local(c.http),
        "/orders/1",
        &[("x-pqmesh-peer-identity", "spoofed")],
    )
    .await;
    assert!(r.body.starts_with("app=orders GET /orders/1"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("x-pqmesh-peer-identity: {}", spiffe("gateway"))),
        "the service's sidecar saw the gateway's identity: {}",
        r.body
    );
    let (status, body) = https_get(local(c.https), &c.ca, "/orders/tls")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("app=orders GET /orders/tls"), "{body}");
    // A Service without a meshed endpoint is never reached in plaintext.
    let hits = c.app_hits.load(Ordering::SeqCst);
    let plain = call(local(c.http), "/plain/1", &[]).await;
    assert_eq!(plain.status, 502, "{}", plain.body);
    assert!(plain.body.contains("not in the mesh"), "{}", plain.body);
    assert_eq!(c.app_hits.load(Ordering::SeqCst), hits);

    // A new route, and a bad one: the new one serves, the bad one affects only itself.
    assert_eq!(call(local(c.http), "/new/1", &[]).await.status, 404);
    api.put(http_route("new", "/new", "orders"));
    let mut bad = http_route("bad", "/bad", "orders");
    bad["spec"]["rules"][0]["timeouts"] = json!({"request": "10s"});
    api.put(bad);
    within(10, "the new route serves", || async {
        call(local(c.http), "/new/1", &[]).await.status == 200
    })
    .await;
    // Refused with no accepted version: a placeholder closes what it declares (review 10, F1).
    assert_eq!(call(local(c.http), "/bad/1", &[]).await.status, 503);
    assert_eq!(call(local(c.http), "/orders/2", &[]).await.status, 200);
    let verdicts = call(c.gateway.admin_addr, "/verdicts", &[]).await.body;
    assert!(
        verdicts.lines().any(|l| l.starts_with("HTTPRoute shop/bad")
            && l.contains("Accepted=False")
            && l.contains("timeouts")),
        "{verdicts}"
    );

    // An EdgePolicy attached later applies to new requests: one request per hour per client.
    api.put(edge_policy("new", 1));
    within(10, "the rate limit is in force", || async {
        call(local(c.http), "/new/2", &[]).await.status == 429
    })
    .await;
    assert_eq!(
        call(local(c.http), "/orders/3", &[]).await.status,
        200,
        "other routes are not limited"
    );
    // A second EdgePolicy on the route (review 7, F3): both Conflicted, the route closed (503)
    // until one is left.
    let mut second = edge_policy("new", 1000);
    second["metadata"]["name"] = json!("new-edge-2");
    api.put(second);
    within(10, "the conflicted route is closed", || async {
        call(local(c.http), "/new/3", &[]).await.status == 503
    })
    .await;
    let verdicts = call(c.gateway.admin_addr, "/verdicts", &[]).await.body;
    assert!(
        verdicts
            .lines()
            .any(|l| l.starts_with("EdgePolicy shop/new-edge-2")
                && l.contains("Accepted=False: Conflicted")),
        "{verdicts}"
    );
    api.delete("apis/pqmesh.io/v1alpha1/edgepolicies", "shop", "new-edge-2");
    within(
        10,
        "with one EdgePolicy left its rate limit applies again",
        || async { call(local(c.http), "/new/4", &[]).await.status == 429 },
    )
    .await;

    // A rotated certificate Secret is served to new connections (Secrets are re-read every 10 s).
    let (crt2, key2) = self_signed();
    api.put(tls_secret("edge-cert", &crt2, &key2));
    within(25, "the rotated certificate is served", || async {
        https_get(local(c.https), &crt2, "/orders/rotated")
            .await
            .is_ok()
    })
    .await;
    assert!(
        https_get(local(c.https), &c.ca, "/orders/old")
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    // A broken Secret keeps the certificate in force.
    api.put(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                   "metadata": {"name": "edge-cert", "namespace": "shop"},
                   "data": {"tls.crt": b64("not a certificate"), "tls.key": b64(&key2)}}),
    );
    let registry = &c.gateway.metrics.registry;
    within(
        25,
        "the broken certificate is counted as not loaded",
        || async {
            metric(
                registry,
                "pqmesh_gateway_certificate_reloads_total",
                &[("listener", "shop/edge/secure"), ("outcome", "error")],
            ) >= 1.0
        },
    )
    .await;
    let (status, _) = https_get(local(c.https), &crt2, "/orders/kept")
        .await
        .expect("the last good certificate stays");
    assert_eq!(status, 200);

    // A new listener on a new port is bound; a deleted route stops serving.
    let extra = free_port();
    api.put(gateway(
        "edge",
        "pqmesh",
        vec![
            listener("web", c.http, None),
            listener("secure", c.https, Some("edge-cert")),
            listener("extra", extra, None),
        ],
    ));
    within(10, "the new listener serves", || async {
        TcpStream::connect(local(extra)).await.is_ok()
            && call(local(extra), "/orders/extra", &[]).await.status == 200
    })
    .await;
    api.delete(
        "apis/gateway.networking.k8s.io/v1/httproutes",
        "shop",
        "orders",
    );
    within(10, "the deleted route stops serving", || async {
        call(local(c.http), "/orders/4", &[]).await.status == 404
    })
    .await;
}
