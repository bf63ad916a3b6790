//! TokenReview authentication against recorded kube-apiserver responses. There is no API server
//! on this machine: a local HTTP server answers `POST /apis/authentication.k8s.io/v1/tokenreviews`
//! with response bodies of the shape a real API server (v1.33) returns, recorded under
//! `tests/fixtures/tokenreview/`, and records what the control plane sent.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pqmesh_control_plane::token_review::{service_account_id, TokenReviewer};
use pqmesh_control_plane::tokens::AuthError;

struct FakeApiServer {
    url: String,
    requests: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn api_server(status: u16, fixture: &'static str) -> FakeApiServer {
    let body = std::fs::read_to_string(format!(
        "{}/tests/fixtures/tokenreview/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let body = body.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    let seen = seen.clone();
                    async move {
                        assert_eq!(
                            req.uri().path(),
                            "/apis/authentication.k8s.io/v1/tokenreviews"
                        );
                        assert_eq!(req.method(), "POST");
                        let sent = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&sent).unwrap());
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    FakeApiServer { url, requests }
}

fn reviewer(server: &FakeApiServer) -> TokenReviewer {
    let config = kube::Config::new(server.url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    TokenReviewer::new(client, "pqmesh-ca", "cluster.local")
}

/// A syntactically real projected token (unsigned here; the API server is what verifies it).
fn projected_token(exp_in: Duration) -> String {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = (SystemTime::now() + exp_in)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(serde_json::json!({"alg": "RS256", "kid": "k1"})),
        b64(
            serde_json::json!({"aud": ["pqmesh-ca"], "exp": exp, "sub": "system:serviceaccount:shop:web"})
        )
    )
}

#[tokio::test]
async fn an_authenticated_service_account_token_maps_to_its_spiffe_id_and_is_cached() {
    let server = api_server(201, "authenticated.json").await;
    let r = reviewer(&server);
    let token = projected_token(Duration::from_secs(600));
    let id = r.authenticate(&token, SystemTime::now()).await.unwrap();
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    let sent = server.requests.lock().unwrap()[0].clone();
    assert_eq!(
        sent["spec"]["audiences"],
        serde_json::json!(["pqmesh-ca"]),
        "the audience is asked for"
    );
    assert_eq!(sent["spec"]["token"], token);
    // Cached until the token expires: no second review.
    r.authenticate(&token, SystemTime::now()).await.unwrap();
    assert_eq!(server.requests.lock().unwrap().len(), 1);
    // After the token's expiry the cache no longer vouches for it.
    r.authenticate(&token, SystemTime::now() + Duration::from_secs(601))
        .await
        .unwrap();
    assert_eq!(server.requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn everything_the_api_server_does_not_confirm_is_refused() {
    let cases: [(u16, &str, &str); 6] = [
        (
            201,
            "wrong-audience.json",
            "invalid for the target audiences",
        ),
        (
            201,
            "audience-ignored.json",
            "not valid for audience \"pqmesh-ca\"",
        ),
        (
            201,
            "unauthenticated.json",
            "service account token has been invalidated",
        ),
        (
            201,
            "not-a-service-account.json",
            "\"kubernetes-admin\" is not a service account",
        ),
        (403, "forbidden.json", "TokenReview failed"),
        (500, "forbidden.json", "TokenReview failed"),
    ];
    for (status, fixture, want) in cases {
        let server = api_server(status, fixture).await;
        let err = reviewer(&server)
            .authenticate(&projected_token(Duration::from_secs(60)), SystemTime::now())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(want), "{fixture}: {err}");
        if status >= 400 {
            assert!(
                matches!(err, AuthError::Unavailable(_)),
                "{fixture}: API errors are 'unavailable', never allow"
            );
        }
    }
    let unreachable = TokenReviewer::new(
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap(),
        "pqmesh-ca",
        "cluster.local",
    );
    assert!(matches!(
        unreachable.authenticate("x.y.z", SystemTime::now()).await,
        Err(AuthError::Unavailable(_))
    ));
    assert_eq!(
        unreachable.authenticate("", SystemTime::now()).await,
        Err(AuthError::Missing)
    );
}

#[test]
fn usernames() {
    assert_eq!(
        service_account_id("system:serviceaccount:shop:web", "td.local")
            .unwrap()
            .to_string(),
        "spiffe://td.local/ns/shop/sa/web"
    );
    for bad in [
        "kubernetes-admin",
        "system:serviceaccount:shop",
        "system:serviceaccount::web",
        "system:serviceaccount:Shop:web",
        "system:node:worker-1",
    ] {
        assert!(service_account_id(bad, "td.local").is_err(), "{bad}");
    }
}
