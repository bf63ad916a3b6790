//! The sidecar's listening sockets. `pqmesh-sidecar init` redirects IPv4 connections to the
//! configured (IPv4) inbound and outbound addresses and IPv6 connections to the same ports over
//! IPv6: inbound to an address of the pod (any of them), outbound to `::1`. So each IPv4 listener
//! on 0.0.0.0 or 127.0.0.1 with a fixed port gets an IPv6 twin on `[::]` or `[::1]`, same port,
//! IPv6-only (the IPv4 socket keeps the IPv4 connections).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

use crate::StartError;

/// The IPv6 address that receives what ip6tables redirects to `addr`'s port, if `addr` is one of
/// the IPv4 listen addresses interception uses. Port 0 (tests, explicit mode) has no twin: the
/// rules name fixed ports.
pub fn ipv6_twin(addr: SocketAddr) -> Option<SocketAddr> {
    if addr.port() == 0 {
        return None;
    }
    match addr.ip() {
        IpAddr::V4(ip) if ip == Ipv4Addr::UNSPECIFIED => {
            Some(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port()))
        }
        IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST => {
            Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()))
        }
        _ => None,
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Binds `addr`'s IPv6 twin. `Ok(None)` when there is no twin, or the namespace has no IPv6
/// (nothing can arrive over it then); any other failure is an error: with IPv6 present,
/// redirected IPv6 connections need this listener.
pub fn bind_ipv6_twin(addr: SocketAddr) -> Result<Option<TcpListener>, StartError> {
    let Some(twin) = ipv6_twin(addr) else {
        return Ok(None);
    };
    let fail = |source| StartError::Bind { addr: twin, source };
    let socket = match TcpSocket::new_v6() {
        Ok(s) => s,
        Err(e) if no_ipv6(&e) => return Ok(no_ipv6_here(twin, &e)),
        Err(e) => return Err(fail(e)),
    };
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &true)
        .map_err(|e| fail(e.into()))?;
    socket.set_reuseaddr(true).map_err(fail)?;
    match socket.bind(twin) {
        Ok(()) => {}
        Err(e) if no_ipv6(&e) => return Ok(no_ipv6_here(twin, &e)),
        Err(e) => return Err(fail(e)),
    }
    socket.listen(1024).map(Some).map_err(fail)
}

/// The errors that mean "no IPv6 in this network namespace" (kernel without IPv6, or `::1`
/// missing because IPv6 is disabled).
fn no_ipv6(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL)
    )
}

fn no_ipv6_here(twin: SocketAddr, e: &io::Error) -> Option<TcpListener> {
    tracing::info!(addr = %twin, error = %e, "no IPv6 in this network namespace: IPv4 listener only");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interception_addresses_have_a_twin() {
        let twin = |s: &str| ipv6_twin(s.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(twin("0.0.0.0:15006").as_deref(), Some("[::]:15006"));
        assert_eq!(twin("127.0.0.1:15001").as_deref(), Some("[::1]:15001"));
        assert_eq!(twin("127.0.0.1:0"), None, "ephemeral ports: tests");
        assert_eq!(twin("10.0.0.5:15006"), None, "a specific address");
        assert_eq!(twin("[::]:15006"), None, "already IPv6");
    }

    #[tokio::test]
    async fn the_twin_takes_ipv6_only_beside_the_ipv4_listener() {
        // A port of our own on 127.0.0.1, then its [::1] twin: both bind, so the twin is
        // IPv6-only (a dual-stack socket would collide with the IPv4 one).
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = v4.local_addr().unwrap();
        let Some(v6) = bind_ipv6_twin(addr).unwrap() else {
            eprintln!("SKIPPED: no IPv6 on this machine's loopback");
            return;
        };
        assert_eq!(v6.local_addr().unwrap(), ipv6_twin(addr).unwrap());
        let client = tokio::net::TcpStream::connect(ipv6_twin(addr).unwrap());
        let (accepted, _) = tokio::join!(v6.accept(), client);
        assert!(accepted.unwrap().1.is_ipv6());
    }
}
