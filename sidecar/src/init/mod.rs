//! `pqmesh-sidecar init`: what the pod's init container runs. Installs nat rules in the pod's
//! network namespace that send the app's outbound TCP to the sidecar's 15001 and inbound TCP to
//! its 15006, in chains of pqmesh's own so re-running replaces them and `--remove` never touches
//! anyone else's rules. The sidecar's own traffic (UID 1337) is never redirected.
//!
//! Both address families: iptables for IPv4 and ip6tables for IPv6, with the same rules. When the
//! namespace has IPv6 and the IPv6 rules cannot be installed, init fails (fail closed): the pod
//! does not start rather than serve its app over IPv6 past the sidecar.

mod ipv6;
mod rules;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::process::{Command, Stdio};

pub use ipv6::{detect as detect_ipv6, Ipv6Probe, Ipv6State};
pub use rules::{Cidr, Family, CHAIN_INBOUND, CHAIN_OUTPUT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub proxy_uid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Inbound destination ports left alone (the sidecar's admin port is always among them).
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Each goes to the table of its own family.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    pub action: InitAction,
    pub iptables: String,
    pub ip6tables: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitAction {
    Apply,
    DryRun,
    Remove,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("pqmesh-sidecar init: {0}")]
    Usage(String),
    #[error("{tool} was not found: install iptables (it provides ip6tables too) in the init container image ({source})")]
    Missing {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} needs the NET_ADMIN and NET_RAW capabilities in the pod's network namespace: {stderr}")]
    Permission { tool: String, stderr: String },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("IPv6 is enabled in this pod's network namespace ({evidence}) but its interception rules could not be installed, so IPv6 would bypass the sidecar; refusing to start the pod. Make ip6tables with the nat table work (the node's kernel needs ip6table_nat or nft_chain_nat) or disable IPv6 in the pod: {reason}")]
    Ipv6Open {
        evidence: String,
        reason: Box<InitError>,
    },
}

pub const USAGE: &str = "usage: pqmesh-sidecar init [--dry-run | --remove] [--proxy-uid 1337] \
[--outbound-port 15001] [--inbound-port 15006] [--exclude-inbound-ports P,..] \
[--exclude-outbound-ports P,..] [--exclude-outbound-cidrs CIDR,.. (IPv4 or IPv6)] \
[--iptables PATH] [--ip6tables PATH]";

impl InitConfig {
    pub fn from_args(args: &[String]) -> Result<Self, InitError> {
        let mut config = InitConfig {
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_inbound_ports: vec![],
            exclude_outbound_ports: vec![],
            exclude_outbound_cidrs: vec![],
            action: InitAction::Apply,
            iptables: "iptables".to_owned(),
            ip6tables: "ip6tables".to_owned(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| InitError::Usage(format!("{name} needs a value\n{USAGE}")))
            };
            match flag.as_str() {
                "--dry-run" => config.action = InitAction::DryRun,
                "--remove" => config.action = InitAction::Remove,
                "--proxy-uid" => config.proxy_uid = number(flag, &value(flag)?)?,
                "--outbound-port" => config.outbound_port = port(flag, &value(flag)?)?,
                "--inbound-port" => config.inbound_port = port(flag, &value(flag)?)?,
                "--exclude-inbound-ports" => {
                    config.exclude_inbound_ports = ports(flag, &value(flag)?)?
                }
                "--exclude-outbound-ports" => {
                    config.exclude_outbound_ports = ports(flag, &value(flag)?)?
                }
                "--exclude-outbound-cidrs" => {
                    config.exclude_outbound_cidrs = cidrs(flag, &value(flag)?)?
                }
                "--iptables" => config.iptables = value(flag)?,
                "--ip6tables" => config.ip6tables = value(flag)?,
                "-h" | "--help" => return Err(InitError::Usage(USAGE.to_owned())),
                other => {
                    return Err(InitError::Usage(format!(
                        "unknown argument {other:?}\n{USAGE}"
                    )))
                }
            }
        }
        if config.outbound_port == config.inbound_port {
            return Err(InitError::Usage(
                "--outbound-port and --inbound-port must differ".into(),
            ));
        }
        Ok(config)
    }
}

fn number(flag: &str, v: &str) -> Result<u32, InitError> {
    v.parse()
        .map_err(|_| InitError::Usage(format!("{flag} {v:?}: not a number")))
}

fn port(flag: &str, v: &str) -> Result<u16, InitError> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| InitError::Usage(format!("{flag} {v:?}: not a TCP port (1-65535)")))
}

fn ports(flag: &str, v: &str) -> Result<Vec<u16>, InitError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|p| port(flag, p))
        .collect()
}

fn cidrs(flag: &str, v: &str) -> Result<Vec<Cidr>, InitError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|c| {
            c.parse::<Cidr>()
                .map_err(|e| InitError::Usage(format!("{flag} {e}")))
        })
        .collect()
}

/// Runs the action in this network namespace; returns what to print.
pub fn run(config: &InitConfig) -> Result<String, InitError> {
    run_with(config, &detect_ipv6())
}

/// Runs the action, given whether the namespace has IPv6.
pub fn run_with(config: &InitConfig, ipv6: &Ipv6State) -> Result<String, InitError> {
    match config.action {
        InitAction::DryRun => Ok(dry_run(config, ipv6)),
        InitAction::Apply => {
            apply(config, Family::V4)?;
            let mut text = applied_line(config, Family::V4);
            match ipv6 {
                Ipv6State::Absent(why) => text.push_str(&format!(
                    "pqmesh: no IPv6 in this network namespace ({why}): IPv4 rules only\n"
                )),
                Ipv6State::Present(evidence) => {
                    apply(config, Family::V6).map_err(|reason| InitError::Ipv6Open {
                        evidence: evidence.clone(),
                        reason: Box::new(reason),
                    })?;
                    text.push_str(&applied_line(config, Family::V6));
                }
            }
            Ok(text)
        }
        InitAction::Remove => {
            for family in Family::BOTH {
                remove(config, family)?;
            }
            Ok("pqmesh: interception rules removed (IPv4 and IPv6)\n".to_owned())
        }
    }
}

fn dry_run(config: &InitConfig, ipv6: &Ipv6State) -> String {
    let mut text = match ipv6 {
        Ipv6State::Present(why) => format!(
            "# IPv6 in this network namespace: yes ({why}); both rule sets are installed, and init fails if the IPv6 one cannot be\n"
        ),
        Ipv6State::Absent(why) => format!(
            "# IPv6 in this network namespace: no ({why}); only the IPv4 rule set is installed\n"
        ),
    };
    for family in Family::BOTH {
        let tool = config.tool(family);
        text.push_str(&format!(
            "# {}: {tool}-restore --noflush <<EOF\n{}# EOF\n",
            family.name(),
            config.restore_input(family)
        ));
        for [t, table, chain, p, proto, target] in config.jumps() {
            text.push_str(&format!(
                "# unless already present: {tool} {t} {table} -A {chain} {p} {proto} -j {target}\n"
            ));
        }
    }
    text
}

fn applied_line(config: &InitConfig, family: Family) -> String {
    format!(
        "pqmesh: {}: redirecting inbound TCP to :{} and outbound TCP to :{} (proxy uid {} excluded)\n",
        family.name(),
        config.inbound_port,
        config.outbound_port,
        config.proxy_uid
    )
}

/// Installs one family's chains (replacing pqmesh's previous ones) and the jumps into them.
fn apply(config: &InitConfig, family: Family) -> Result<(), InitError> {
    let tool = config.tool(family);
    let restore = format!("{tool}-restore");
    let mut child = Command::new(&restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Missing {
            tool: restore.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A restore that exits early (no nat table) closes its stdin: its stderr says why.
        let _ = stdin.write_all(config.restore_input(family).as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| InitError::Failed {
        command: restore.clone(),
        stderr: e.to_string(),
    })?;
    check(&restore, out)?;
    for [t, table, chain, p, proto, target] in config.jumps() {
        let exists = run_tool(tool, &[t, table, "-C", chain, p, proto, "-j", target]);
        if exists.is_err() {
            run_tool(tool, &[t, table, "-A", chain, p, proto, "-j", target])?;
        }
    }
    Ok(())
}

/// Deletes one family's jumps and chains. A missing tool or table means there is nothing of
/// pqmesh's to remove.
fn remove(config: &InitConfig, family: Family) -> Result<(), InitError> {
    let tool = config.tool(family);
    for [t, table, chain, p, proto, target] in config.jumps() {
        while run_tool(tool, &[t, table, "-C", chain, p, proto, "-j", target]).is_ok() {
            run_tool(tool, &[t, table, "-D", chain, p, proto, "-j", target])?;
        }
    }
    for chain in [CHAIN_INBOUND, CHAIN_OUTPUT] {
        if run_tool(tool, &["-t", "nat", "-F", chain]).is_ok() {
            run_tool(tool, &["-t", "nat", "-X", chain])?;
        }
    }
    Ok(())
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), InitError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|source| InitError::Missing {
            tool: tool.to_owned(),
            source,
        })?;
    check(&format!("{tool} {}", args.join(" ")), out)
}

fn check(command: &str, out: std::process::Output) -> Result<(), InitError> {
    if out.status.success() {
        return Ok(());
    }
    // One line: the error is the init container's last words in `kubectl describe`.
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        return Err(InitError::Permission {
            tool: command
                .split_whitespace()
                .next()
                .unwrap_or(command)
                .to_owned(),
            stderr,
        });
    }
    Err(InitError::Failed {
        command: command.to_owned(),
        stderr,
    })
}
