//! Whether the pod's network namespace has IPv6: if it does, IPv6 must be intercepted like IPv4
//! or the pod must not start (an IPv6 address, even only a link-local one, reaches the app past
//! the sidecar otherwise). When in doubt, IPv6 is taken to be present.

use std::path::Path;

/// The answer, with the evidence in words (for the log line and the error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6State {
    Present(String),
    Absent(String),
}

/// What the kernel says about IPv6 in this network namespace (procfs shows the reader's own).
#[derive(Debug, Clone, Default)]
pub struct Ipv6Probe {
    /// `/proc/net/if_inet6` (one line per IPv6 address); `None` when it cannot be read.
    pub if_inet6: Option<String>,
    /// `/proc/sys/net/ipv6/conf/all/disable_ipv6`; `None` when IPv6 is not in the kernel.
    pub all_disable_ipv6: Option<String>,
    /// Whether `/proc/net` could be read at all (without procfs nothing can be concluded).
    pub proc_net_readable: bool,
}

impl Ipv6Probe {
    pub fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        Ipv6Probe {
            if_inet6: read("/proc/net/if_inet6"),
            all_disable_ipv6: read("/proc/sys/net/ipv6/conf/all/disable_ipv6"),
            proc_net_readable: Path::new("/proc/net/dev").exists(),
        }
    }

    pub fn judge(&self) -> Ipv6State {
        if !self.proc_net_readable {
            return Ipv6State::Present(
                "cannot read /proc/net, so IPv6 cannot be ruled out".to_owned(),
            );
        }
        let addresses = self
            .if_inet6
            .as_deref()
            .map_or(0, |t| t.lines().filter(|l| !l.trim().is_empty()).count());
        if addresses > 0 {
            return Ipv6State::Present(format!(
                "/proc/net/if_inet6 lists {addresses} IPv6 address(es)"
            ));
        }
        match self.all_disable_ipv6.as_deref().map(str::trim) {
            None => Ipv6State::Absent(
                "the kernel has no IPv6 (/proc/sys/net/ipv6 is missing)".to_owned(),
            ),
            Some("1") => Ipv6State::Absent(
                "no IPv6 addresses and net.ipv6.conf.all.disable_ipv6=1".to_owned(),
            ),
            // No address yet, but interfaces may still get one (a link coming up).
            Some(v) => Ipv6State::Present(format!(
                "no IPv6 address yet, but net.ipv6.conf.all.disable_ipv6={v}"
            )),
        }
    }
}

/// This namespace's answer.
pub fn detect() -> Ipv6State {
    Ipv6Probe::read().judge()
}
