//! Where an intercepted connection was originally going. iptables REDIRECT rewrites the
//! destination; the kernel keeps the original, readable with `SO_ORIGINAL_DST`. Behind a trait so
//! in-process tests can say where a connection "was going" without iptables.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use tokio::net::TcpStream;

pub trait OriginalDst: Send + Sync + 'static {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
}

/// The kernel's answer (IPv4 `SO_ORIGINAL_DST`, IPv6 `IP6T_SO_ORIGINAL_DST`).
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        use nix::sys::socket::{getsockopt, sockopt};
        let local = stream.local_addr()?;
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
