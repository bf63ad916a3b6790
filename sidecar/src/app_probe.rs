//! The app's own liveness/readiness/startup probes, through the sidecar. In a STRICT pod the
//! kubelet's plaintext probe to the app's port would be refused by the inbound listener, so the
//! injector points httpGet/tcpSocket probes at the admin port (`/app-health/<container>/<kind>`,
//! a port iptables leaves alone) and hands the original targets over in `PQMESH_APP_PROBES`; the
//! sidecar runs each probe against the app on 127.0.0.1 and answers 200 or 503, as Istio's
//! agent does on its port 15020.
//!
//! The admin server is single-threaded and these checks block it, so each is bounded: 1 s to
//! connect and 1 s for the status line (a healthy app answers in milliseconds).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Deserialize;

pub const PATH_PREFIX: &str = "/app-health/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// One rewritten probe: what the kubelet would have checked. The JSON the injector writes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeTarget {
    pub port: u16,
    /// `Some` for an httpGet probe; `None` for a tcpSocket probe (connect only).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// Admin path → target, from `PQMESH_APP_PROBES`.
pub type ProbeTable = BTreeMap<String, ProbeTarget>;

/// Parses `PQMESH_APP_PROBES`; every key must be under `/app-health/`, paths must be origin-form
/// and header text must not break the request line.
pub fn parse_table(text: &str) -> Result<ProbeTable, String> {
    let table: ProbeTable = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (key, target) in &table {
        if !key.starts_with(PATH_PREFIX) {
            return Err(format!("{key:?} is not under {PATH_PREFIX}"));
        }
        if target.port == 0 {
            return Err(format!("{key}: port 0"));
        }
        let bad = |s: &str| s.chars().any(|c| c.is_control() || c == ' ');
        if let Some(path) = &target.path {
            if !path.starts_with('/') || bad(path) {
                return Err(format!("{key}: path {path:?} is not an origin-form path"));
            }
        }
        for (name, value) in &target.headers {
            if name.is_empty()
                || bad(name)
                || name.contains(':')
                || value.chars().any(char::is_control)
            {
                return Err(format!("{key}: header {name:?} is not a valid header"));
            }
        }
    }
    Ok(table)
}

/// Runs the probe against the app: `Ok` with a short note when it passes (TCP connect, or an
/// HTTP status 200–399 as the kubelet counts it), `Err` with the reason otherwise.
pub fn check(target: &ProbeTarget) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], target.port));
    let mut tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let Some(path) = &target.path else {
        return Ok(format!("tcp {addr} open"));
    };
    tcp.set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: kube-probe/1.33 (via pqmesh)\r\nAccept: */*\r\nConnection: close\r\n",
        target.port
    );
    for (name, value) in &target.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match tcp.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if (200..400).contains(&status) {
        Ok(format!("http {status}"))
    } else {
        Err(format!("http {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn app(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(response.as_bytes());
            }
        });
        port
    }

    fn http(port: u16) -> ProbeTarget {
        ProbeTarget {
            port,
            path: Some("/healthz".into()),
            headers: vec![("X-Probe".into(), "1".into())],
        }
    }

    #[test]
    fn passes_on_2xx_3xx_and_fails_otherwise() {
        assert!(check(&http(app("HTTP/1.1 200 OK\r\n\r\n"))).is_ok());
        assert!(check(&http(app("HTTP/1.0 302 Found\r\n\r\n"))).is_ok());
        assert_eq!(
            check(&http(app("HTTP/1.1 500 Oops\r\n\r\n"))),
            Err("http 500".into())
        );
        assert!(check(&http(app("SSH-2.0-OpenSSH\r\n")))
            .unwrap_err()
            .contains("not an HTTP response"));
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(check(&http(closed)).unwrap_err().contains("connect"));
        let tcp = ProbeTarget {
            port: app(""),
            path: None,
            headers: vec![],
        };
        assert!(check(&tcp).is_ok());
    }

    #[test]
    fn a_hung_app_fails_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _keep = std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(5));
            drop(held);
        });
        let err = check(&http(port)).unwrap_err();
        assert!(err.starts_with("read"), "{err}");
    }

    #[test]
    fn rejects_bad_tables() {
        let good = r#"{"/app-health/app/readyz": {"port": 8080, "path": "/healthz", "headers": [["X-A", "b"]]},
                       "/app-health/app/livez": {"port": 8080}}"#;
        assert_eq!(parse_table(good).unwrap().len(), 2);
        for bad in [
            r#"{"/metrics": {"port": 8080}}"#,
            r#"{"/app-health/a/readyz": {"port": 0}}"#,
            r#"{"/app-health/a/readyz": {"port": 8080, "path": "healthz"}}"#,
            r#"{"/app-health/a/readyz": {"port": 8080, "path": "/a b"}}"#,
            r#"{"/app-health/a/readyz": {"port": 8080, "path": "/a\r\nX: y"}}"#,
            r#"{"/app-health/a/readyz": {"port": 8080, "headers": [["X-A", "b\r\nEvil: 1"]]}}"#,
            r#"{"/app-health/a/readyz": {"port": 8080, "extra": 1}}"#,
            r#"[]"#,
        ] {
            assert!(parse_table(bad).is_err(), "{bad}");
        }
    }
}
