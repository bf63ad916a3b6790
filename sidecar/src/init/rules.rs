//! The nat rules `pqmesh-sidecar init` installs, once per address family: the same chains, the
//! same exclusions, for iptables (IPv4) and ip6tables (IPv6). Only the loopback addresses differ,
//! and an excluded CIDR goes to the table of its own family.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::InitConfig;

pub const CHAIN_INBOUND: &str = "PQMESH_INBOUND";
pub const CHAIN_OUTPUT: &str = "PQMESH_OUTPUT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Destinations that are never intercepted outbound: the loopback range.
    fn loopback_range(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// The address a nat OUTPUT REDIRECT rewrites to (the kernel's choice for each family).
    fn loopback_address(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
}

/// An `--exclude-outbound-cidrs` entry, as given (`10.0.0.0/8`, `169.254.169.254`, `fd00::/8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub family: Family,
    pub text: String,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text, None),
        };
        // `u8::from_str` accepts "+8"; iptables does not.
        let len_ok = |max: u8| {
            len.is_none_or(|l| !l.starts_with('+') && l.parse::<u8>().is_ok_and(|l| l <= max))
        };
        let family = if ip.parse::<Ipv4Addr>().is_ok() && len_ok(32) {
            Family::V4
        } else if ip.parse::<Ipv6Addr>().is_ok() && len_ok(128) {
            Family::V6
        } else {
            return Err(format!(
                "{text:?}: not an IPv4 or IPv6 address or CIDR (like 10.0.0.0/8 or fd00::/8)"
            ));
        };
        Ok(Cidr {
            family,
            text: text.to_owned(),
        })
    }
}

impl InitConfig {
    /// Ports whose inbound traffic is never redirected: the sidecar's own listeners (so nothing
    /// loops) and its admin/health port, plus the configured exclusions.
    fn inbound_exclusions(&self) -> Vec<u16> {
        let mut ports = vec![15000, self.inbound_port, self.outbound_port];
        ports.extend(&self.exclude_inbound_ports);
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The `iptables-restore --noflush` (or `ip6tables-restore`) input for one family: declaring
    /// the chains creates or flushes them, so applying twice leaves exactly one set of rules.
    pub fn restore_input(&self, family: Family) -> String {
        let mut out = String::from("*nat\n");
        out.push_str(&format!(
            ":{CHAIN_INBOUND} - [0:0]\n:{CHAIN_OUTPUT} - [0:0]\n"
        ));
        for p in self.inbound_exclusions() {
            out.push_str(&format!(
                "-A {CHAIN_INBOUND} -p tcp --dport {p} -j RETURN\n"
            ));
        }
        out.push_str(&format!(
            "-A {CHAIN_INBOUND} -p tcp -j REDIRECT --to-ports {}\n",
            self.inbound_port
        ));
        // The sidecar dialing its own pod IP (the app calling itself through the mesh) must enter
        // its own inbound listener, as a remote peer would.
        out.push_str(&format!(
            "-A {CHAIN_OUTPUT} -o lo ! -d {} -p tcp -m owner --uid-owner {} -j REDIRECT --to-ports {}\n",
            family.loopback_address(),
            self.proxy_uid,
            self.inbound_port
        ));
        out.push_str(&format!(
            "-A {CHAIN_OUTPUT} -m owner --uid-owner {} -j RETURN\n",
            self.proxy_uid
        ));
        out.push_str(&format!(
            "-A {CHAIN_OUTPUT} -d {} -j RETURN\n",
            family.loopback_range()
        ));
        for cidr in self.exclude_outbound_cidrs.iter() {
            if cidr.family == family {
                out.push_str(&format!("-A {CHAIN_OUTPUT} -d {} -j RETURN\n", cidr.text));
            }
        }
        for p in &self.exclude_outbound_ports {
            out.push_str(&format!("-A {CHAIN_OUTPUT} -p tcp --dport {p} -j RETURN\n"));
        }
        out.push_str(&format!(
            "-A {CHAIN_OUTPUT} -p tcp -j REDIRECT --to-ports {}\n",
            self.outbound_port
        ));
        out.push_str("COMMIT\n");
        out
    }

    /// The jumps from the built-in chains into pqmesh's chains (added only if absent); the same
    /// for both families.
    pub fn jumps(&self) -> [[&'static str; 6]; 2] {
        [
            ["-t", "nat", "PREROUTING", "-p", "tcp", CHAIN_INBOUND],
            ["-t", "nat", "OUTPUT", "-p", "tcp", CHAIN_OUTPUT],
        ]
    }

    /// The iptables binary for a family (`--iptables` / `--ip6tables`).
    pub fn tool(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.iptables,
            Family::V6 => &self.ip6tables,
        }
    }
}
