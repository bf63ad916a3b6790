//! The one HTTPS client for OAuth servers (JWKS and introspection): webpki roots, the mesh's
//! crypto provider with classical groups allowed (OAuth servers are outside the mesh), bounded
//! bodies and an overall deadline per request. Redirects are not followed.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pqmesh_mtls::{crypto_provider, KeyExchangePolicy};

use super::config::ConfigError;

pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    /// The media type without parameters, lower-cased (`application/jwt; charset=utf-8` → `application/jwt`).
    pub(crate) fn media_type(&self) -> Option<String> {
        let value = self.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next()?.trim().to_ascii_lowercase();
        Some(essence)
    }

    /// All `Cache-Control` directives, lower-cased, across repeated headers.
    pub(crate) fn cache_control(&self) -> Vec<String> {
        self.headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect()
    }
}

#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    pub(crate) fn new() -> Result<Self, ConfigError> {
        Self::with_roots(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
    }

    pub(crate) fn with_roots(roots: rustls::RootCertStore) -> Result<Self, ConfigError> {
        let mut provider = (*crypto_provider(KeyExchangePolicy::AllowClassical)).clone();
        // The mesh provider is TLS 1.3 only; OAuth servers outside the mesh may still be TLS 1.2.
        provider.cipher_suites.extend(
            rustls::crypto::aws_lc_rs::DEFAULT_CIPHER_SUITES
                .iter()
                .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
                .copied(),
        );
        let tls = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ConfigError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        // Endpoints were checked at config time: https, or http only to loopback.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(HttpClient { client })
    }

    pub(crate) async fn get(
        &self,
        uri: &Uri,
        accept: &'static str,
        limit: usize,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(ACCEPT, accept)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.send(request, limit, timeout).await
    }

    pub(crate) async fn post_form(
        &self,
        uri: &Uri,
        authorization: HeaderValue,
        accept: &'static str,
        body: String,
        limit: usize,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, accept)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.send(request, limit, timeout).await
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| format!("reading the response body: {e}"))?
                .to_bytes();
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no response within {timeout:?}"))?
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
