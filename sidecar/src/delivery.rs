//! Where admitted inbound traffic is delivered. A redirected connection goes to its original
//! destination — the pod IP and port the peer dialled — as Istio does since 1.10, so an app
//! listening only on its pod IP is reached; when that address refuses, 127.0.0.1 on the same
//! port (an app listening only on loopback). Explicit mode delivers to the configured address.
//!
//! The pod IP is dialled from source 127.0.0.6, which the interception rules let through
//! (`init`): the sidecar's own (UID 1337) connections to its pod IP are otherwise redirected to
//! its inbound port, to serve the app's calls to itself through the mesh.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

/// Source of the sidecar's connections to its own pod IP (Istio's InboundPassthrough uses it too).
pub const PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Bound on each connect to the app.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Redirected by iptables: the original destination, then 127.0.0.1 on its port.
    OriginalDst(SocketAddr),
    /// Explicit mode (`PQMESH_INBOUND_APP_ADDR`): that address only.
    Configured(SocketAddr),
}

impl Delivery {
    /// The address requests are addressed to (and pooled by).
    pub fn addr(&self) -> SocketAddr {
        match self {
            Delivery::OriginalDst(a) | Delivery::Configured(a) => *a,
        }
    }

    /// The addresses tried in order, with the source to bind for each.
    fn attempts(&self) -> Vec<(SocketAddr, Option<IpAddr>)> {
        match *self {
            Delivery::Configured(a) => vec![(a, None)],
            // IPv6 has no passthrough source yet: loopback of the client's family, then IPv4's.
            Delivery::OriginalDst(a) if a.is_ipv6() => vec![
                (
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), a.port()),
                    None,
                ),
                (loopback(a.port()), None),
            ],
            Delivery::OriginalDst(a) => {
                let mut v = vec![(a, Some(IpAddr::V4(PASSTHROUGH_SOURCE)))];
                if a != loopback(a.port()) {
                    v.push((loopback(a.port()), None));
                }
                v
            }
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// No address of a delivery answered; names each one and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the application is unreachable at {0}")]
pub struct Unreachable(String);

/// Connects to the app as `delivery` says (each attempt bounded by `timeout`).
pub async fn connect(delivery: Delivery, timeout: Duration) -> Result<TcpStream, Unreachable> {
    let mut tried = Vec::new();
    for (addr, source) in delivery.attempts() {
        match tokio::time::timeout(timeout, connect_from(addr, source)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => tried.push(format!("{addr} ({e})")),
            Err(_) => tried.push(format!("{addr} (no answer within {timeout:?})")),
        }
    }
    Err(Unreachable(tried.join(" or ")))
}

async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// The first [`Unreachable`] in an error's chain (what the HTTP client's error wraps).
pub fn unreachable_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Unreachable> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(u) = e.downcast_ref::<Unreachable>() {
            return Some(u);
        }
        next = e.source();
    }
    None
}

/// The HTTP client's connector: `OriginalDst` or `Configured` delivery of the request's
/// authority (always `ip:port`, set by the proxy).
#[derive(Debug, Clone, Copy)]
pub struct AppConnector {
    pub original_dst: bool,
}

impl tower_service::Service<hyper::Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Unreachable;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Unreachable>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Unreachable>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let original_dst = self.original_dst;
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let addr: SocketAddr = authority
                .parse()
                .map_err(|_| Unreachable(format!("{authority:?} (not an ip:port)")))?;
            let delivery = if original_dst {
                Delivery::OriginalDst(addr)
            } else {
                Delivery::Configured(addr)
            };
            connect(delivery, CONNECT_TIMEOUT).await.map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn listen(ip: [u8; 4]) -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::from(ip), 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        addr
    }

    /// A port on `ip` that nothing listens on.
    async fn closed(ip: [u8; 4]) -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::from(ip), 0)).await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn the_original_destination_first_from_the_passthrough_source() {
        // An app listening only on "its pod IP" (127.0.0.2 here): 127.0.0.1 would not reach it.
        let app = listen([127, 0, 0, 2]).await;
        let s = connect(Delivery::OriginalDst(app), CONNECT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), app);
        assert_eq!(s.local_addr().unwrap().ip(), IpAddr::V4(PASSTHROUGH_SOURCE));
    }

    #[tokio::test]
    async fn loopback_when_the_original_destination_refuses() {
        // An app listening only on 127.0.0.1; the pod IP (127.0.0.3 here) refuses its port.
        let app = listen([127, 0, 0, 1]).await;
        let dialled = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 3).into(), app.port());
        let s = connect(Delivery::OriginalDst(dialled), CONNECT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), app);
    }

    #[tokio::test]
    async fn unreachable_both_ways_names_both_addresses() {
        let gone = closed([127, 0, 0, 1]).await;
        let dialled = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 4).into(), gone.port());
        let e = connect(Delivery::OriginalDst(dialled), CONNECT_TIMEOUT)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&dialled.to_string()), "{text}");
        assert!(text.contains(&gone.to_string()), "{text}");
        assert!(text.contains("refused"), "{text}");
    }

    #[tokio::test]
    async fn explicit_mode_uses_the_configured_address_only() {
        let app = listen([127, 0, 0, 1]).await;
        let s = connect(Delivery::Configured(app), CONNECT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), app);
        // Another loopback address on the same port is not tried instead.
        let elsewhere = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 5).into(), app.port());
        let e = connect(Delivery::Configured(elsewhere), CONNECT_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.to_string().matches(" or ").count(), 0, "{e}");
    }

    #[test]
    fn attempts_per_delivery() {
        let pod: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        assert_eq!(
            Delivery::OriginalDst(pod).attempts(),
            vec![
                (pod, Some(IpAddr::V4(PASSTHROUGH_SOURCE))),
                ("127.0.0.1:8080".parse().unwrap(), None)
            ]
        );
        let v6: SocketAddr = "[fd00::2]:8080".parse().unwrap();
        assert_eq!(
            Delivery::OriginalDst(v6).attempts(),
            vec![
                ("[::1]:8080".parse().unwrap(), None),
                ("127.0.0.1:8080".parse().unwrap(), None)
            ]
        );
        assert_eq!(Delivery::Configured(pod).attempts(), vec![(pod, None)]);
    }
}
