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

/// `pqmesh-sidecar init`: its flags, with their defaults (what the injector passes is in
/// control-plane/src/inject/pod.rs).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
#[command(
    about = "Install the pod's interception rules (iptables and ip6tables nat chains PQMESH_INBOUND and PQMESH_OUTPUT), then exit: what the injected pqmesh-init container runs",
    after_help = "Needs NET_ADMIN and NET_RAW in the pod's network namespace. Re-running replaces pqmesh's chains; --remove deletes only pqmesh's own rules."
)]
pub struct InitArgs {
    /// Print the rules (and whether IPv6 is present) without changing anything.
    #[arg(long, conflicts_with = "remove")]
    pub dry_run: bool,
    /// Remove pqmesh's chains and jumps (IPv4 and IPv6).
    #[arg(long)]
    pub remove: bool,
    /// UID of the sidecar, whose own traffic is never redirected.
    #[arg(long, value_name = "UID", default_value = "1337", value_parser = |v: &str| number("--proxy-uid", v))]
    pub proxy_uid: u32,
    /// Port of the sidecar's outbound listener (the app's outbound TCP is redirected there).
    #[arg(long, value_name = "PORT", default_value = "15001", value_parser = |v: &str| port("--outbound-port", v))]
    pub outbound_port: u16,
    /// Port of the sidecar's inbound listener (the pod's inbound TCP is redirected there).
    #[arg(long, value_name = "PORT", default_value = "15006", value_parser = |v: &str| port("--inbound-port", v))]
    pub inbound_port: u16,
    /// Comma list of inbound destination ports left alone (the admin port 15000 always is).
    #[arg(long, value_name = "PORT,..", value_parser = |v: &str| ports("--exclude-inbound-ports", v))]
    pub exclude_inbound_ports: Vec<Vec<u16>>,
    /// Comma list of destination ports the app reaches directly.
    #[arg(long, value_name = "PORT,..", value_parser = |v: &str| ports("--exclude-outbound-ports", v))]
    pub exclude_outbound_ports: Vec<Vec<u16>>,
    /// Comma list of IPv4/IPv6 addresses or CIDRs the app reaches directly.
    #[arg(long, value_name = "CIDR,..", value_parser = |v: &str| cidrs("--exclude-outbound-cidrs", v))]
    pub exclude_outbound_cidrs: Vec<Vec<Cidr>>,
    /// The iptables program (its `-restore` companion is used too).
    #[arg(long, value_name = "PATH", default_value = "iptables")]
    pub iptables: String,
    /// The ip6tables program.
    #[arg(long, value_name = "PATH", default_value = "ip6tables")]
    pub ip6tables: String,
}

impl InitConfig {
    /// From `init`'s arguments (without `init` itself).
    pub fn from_args(args: &[String]) -> Result<Self, InitError> {
        use clap::{Args, FromArgMatches};
        let cmd = InitArgs::augment_args(clap::Command::new("pqmesh-sidecar init"));
        let matches = cmd
            .try_get_matches_from(std::iter::once("init").chain(args.iter().map(String::as_str)))
            .map_err(|e| InitError::Usage(e.render().to_string().trim_end().to_owned()))?;
        let parsed =
            InitArgs::from_arg_matches(&matches).map_err(|e| InitError::Usage(e.to_string()))?;
        Self::from_parsed(parsed)
    }

    pub fn from_parsed(a: InitArgs) -> Result<Self, InitError> {
        if a.outbound_port == a.inbound_port {
            return Err(InitError::Usage(
                "--outbound-port and --inbound-port must differ".into(),
            ));
        }
        Ok(InitConfig {
            proxy_uid: a.proxy_uid,
            outbound_port: a.outbound_port,
            inbound_port: a.inbound_port,
            exclude_inbound_ports: a.exclude_inbound_ports.into_iter().flatten().collect(),
            exclude_outbound_ports: a.exclude_outbound_ports.into_iter().flatten().collect(),
            exclude_outbound_cidrs: a.exclude_outbound_cidrs.into_iter().flatten().collect(),
            action: if a.dry_run {
                InitAction::DryRun
            } else if a.remove {
                InitAction::Remove
            } else {
                InitAction::Apply
            },
            iptables: a.iptables,
            ip6tables: a.ip6tables,
        })
    }
}

fn number(flag: &str, v: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("{flag} {v:?}: not a number"))
}

fn port(flag: &str, v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{flag} {v:?}: not a TCP port (1-65535)"))
}

/// A comma list (each occurrence of the flag is one list; they add up).
fn ports(flag: &str, v: &str) -> Result<Vec<u16>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|p| port(flag, p))
        .collect()
}

fn cidrs(flag: &str, v: &str) -> Result<Vec<Cidr>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|c| c.parse::<Cidr>().map_err(|e| format!("{flag} {e}")))
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
