//! Reaching an admin endpoint (sidecar 15000, control plane 15015): either a URL given on the
//! command line or a `kubectl port-forward` to a pod, then plain HTTP/1.1 GETs with hyper.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::kubectl::{Kubectl, KubectlError, PortForward};

pub const SIDECAR_ADMIN_PORT: u16 = 15000;
/// The control plane's loopback-bound local admin port (`PQMESH_ADMIN_LOCAL_ADDR`): the only
/// one serving `/policy_status` in a cluster (15014 serves probes and metrics only); a
/// port-forward reaches it because kubectl connects from inside the pod's network namespace.
pub const CONTROL_PLANE_ADMIN_PORT: u16 = 15015;
const MAX_BODY: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{url:?} is not a usable admin URL: {reason} (expected http://HOST:PORT)")]
    BadUrl { url: String, reason: String },
    #[error("{what} unreachable at {url}: {reason}")]
    Connect {
        what: String,
        url: String,
        reason: std::io::Error,
    },
    #[error("{what} at {url} did not answer within {secs} s")]
    Timeout {
        what: String,
        url: String,
        secs: u64,
    },
    #[error("{what} at {url}: HTTP error: {detail}")]
    Http {
        what: String,
        url: String,
        detail: String,
    },
    #[error("{what} at {url} answered {status}: {body}")]
    Status {
        what: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{what} at {url} returned invalid JSON: {reason}")]
    Json {
        what: String,
        url: String,
        reason: serde_json::Error,
    },
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
}

/// One admin endpoint, kept reachable (port-forward running) for as long as this lives.
pub struct AdminEndpoint {
    /// What this is, for messages: "sidecar admin of pod shop/api-0".
    pub what: String,
    base: String,
    host: String,
    port: u16,
    timeout: Duration,
    forward: Option<PortForward>,
}

impl AdminEndpoint {
    /// An endpoint from `--admin-url`.
    pub fn from_url(what: &str, url: &str, timeout: Duration) -> Result<Self, AdminError> {
        let bad = |reason: &str| AdminError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("admin endpoints serve plain HTTP")),
            _ => return Err(bad("missing http:// scheme")),
        }
        let host = uri.host().ok_or_else(|| bad("missing host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        if !matches!(uri.path(), "" | "/") {
            return Err(bad("give the base URL without a path"));
        }
        Ok(Self {
            what: what.to_owned(),
            base: format!(
                "http://{}",
                uri.authority().map(|a| a.as_str()).unwrap_or("")
            ),
            host,
            port,
            timeout,
            forward: None,
        })
    }

    /// `kubectl port-forward` to `target` (e.g. `pod/api-0`) in `namespace`.
    pub async fn port_forward(
        what: &str,
        kubectl: &Kubectl,
        namespace: &str,
        target: &str,
        remote_port: u16,
        timeout: Duration,
    ) -> Result<Self, AdminError> {
        let forward = kubectl.port_forward(namespace, target, remote_port).await?;
        let port = forward.local_port;
        Ok(Self {
            what: what.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
            host: "127.0.0.1".to_owned(),
            port,
            timeout,
            forward: Some(forward),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn via_port_forward(&self) -> bool {
        self.forward.is_some()
    }

    /// GET `path`; any status is returned (the caller decides what a 503 means).
    pub async fn get(&self, path: &str) -> Result<(u16, String), AdminError> {
        let url = format!("{}{path}", self.base);
        match tokio::time::timeout(self.timeout, self.get_inner(path, &url)).await {
            Ok(r) => r,
            Err(_) => Err(AdminError::Timeout {
                what: self.what.clone(),
                url,
                secs: self.timeout.as_secs(),
            }),
        }
    }

    async fn get_inner(&self, path: &str, url: &str) -> Result<(u16, String), AdminError> {
        let http = |detail: String| AdminError::Http {
            what: self.what.clone(),
            url: url.to_owned(),
            detail,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|reason| AdminError::Connect {
                what: self.what.clone(),
                url: url.to_owned(),
                reason,
            })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header(
                "user-agent",
                concat!("kubectl-pqmesh/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http(format!("reading the body: {e}")))?
            .to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GET `path`, requiring 200.
    pub async fn get_ok(&self, path: &str) -> Result<String, AdminError> {
        let (status, body) = self.get(path).await?;
        if status != 200 {
            return Err(AdminError::Status {
                what: self.what.clone(),
                url: format!("{}{path}", self.base),
                status,
                body: body.trim().chars().take(300).collect(),
            });
        }
        Ok(body)
    }

    /// GET `path`, requiring 200 and a JSON body.
    pub async fn get_json(&self, path: &str) -> Result<Value, AdminError> {
        let body = self.get_ok(path).await?;
        serde_json::from_str(&body).map_err(|reason| AdminError::Json {
            what: self.what.clone(),
            url: format!("{}{path}", self.base),
            reason,
        })
    }

    /// Stops the port-forward, if any.
    pub async fn close(mut self) {
        if let Some(f) = self.forward.take() {
            f.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls() {
        let t = Duration::from_secs(1);
        let e = AdminEndpoint::from_url("x", "http://127.0.0.1:15000", t).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 15000));
        assert_eq!(e.base_url(), "http://127.0.0.1:15000");
        let e = AdminEndpoint::from_url("x", "http://[::1]:9/", t).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        for (bad, why) in [
            ("127.0.0.1:15000", "scheme"),
            ("https://a:1", "plain HTTP"),
            ("http://a:1/config_dump", "without a path"),
            ("not a url", "not a URL"),
        ] {
            let err = AdminEndpoint::from_url("x", bad, t)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
