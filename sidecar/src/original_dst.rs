//! Where an intercepted connection was originally going. iptables REDIRECT rewrites the
//! destination; the kernel keeps the original, readable with `SO_ORIGINAL_DST`. Behind a trait so
//! in-process tests can say where a connection "was going" without iptables.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use tokio::net::TcpStream;

pub trait OriginalDst: Send + Sync + 'static {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
}

/// The form addresses are compared and looked up in: an IPv4-mapped IPv6 address (a dual-stack
/// socket's view of an IPv4 connection) as IPv4, and IPv6 without flow label or scope (the kernel
/// fills both from the accepting socket, not from the connection; discovery answers carry none).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => SocketAddr::new((*v6.ip()).into(), v6.port()),
        },
        v4 => v4,
    }
}

/// The kernel's answer (IPv4 `SO_ORIGINAL_DST`, IPv6 `IP6T_SO_ORIGINAL_DST`).
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        use nix::sys::socket::{getsockopt, sockopt};
        // An IPv4 connection on a dual-stack socket (a listener configured as `[::]:PORT`) was
        // redirected by iptables, not ip6tables: ask the IPv4 table.
        let local = canonical(stream.local_addr()?);
        if local.is_ipv4() {
            let addr = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
            Ok(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(addr.sin_addr.s_addr).into(),
                u16::from_be(addr.sin_port),
            )))
        } else {
            let addr = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
            Ok(SocketAddr::V6(SocketAddrV6::new(
                addr.sin6_addr.s6_addr.into(),
                u16::from_be(addr.sin6_port),
                addr.sin6_flowinfo,
                addr.sin6_scope_id,
            )))
        }
    }
}

/// For tests and explicit set-ups: every connection "was going" to a fixed address.
pub struct FixedOriginalDst(pub SocketAddr);

impl OriginalDst for FixedOriginalDst {
    fn original_dst(&self, _stream: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;
    use std::net::SocketAddr;

    #[test]
    fn canonical_forms_compare_equal() {
        let c = |s: &str| canonical(s.parse::<SocketAddr>().unwrap()).to_string();
        assert_eq!(c("[::ffff:10.0.0.2]:8080"), "10.0.0.2:8080");
        assert_eq!(c("10.0.0.2:8080"), "10.0.0.2:8080");
        assert_eq!(c("[fd00::2]:8080"), "[fd00::2]:8080");
        assert_eq!(c("[fe80::1%3]:8080"), "[fe80::1]:8080");
        // What the outbound proxy dials: the text form parses back to the same address.
        let v6: SocketAddr = "[fd00::2]:8080".parse().unwrap();
        assert_eq!(c("[fd00::2]:8080").parse::<SocketAddr>().unwrap(), v6);
    }
}
