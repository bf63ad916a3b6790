//! `pqmesh-sidecar init`: what the pod's init container runs. Installs nat rules in the pod's
//! network namespace that send the app's outbound TCP to the sidecar's 15001 and inbound TCP to
//! its 15006, in chains of pqmesh's own so re-running replaces them and `--remove` never touches
//! anyone else's rules. The sidecar's own traffic (UID 1337) is never redirected.

use std::io::Write;
use std::process::{Command, Stdio};

pub const CHAIN_INBOUND: &str = "PQMESH_INBOUND";
pub const CHAIN_OUTPUT: &str = "PQMESH_OUTPUT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub proxy_uid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Inbound destination ports left alone (the sidecar's admin port is always among them).
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
    pub action: InitAction,
    pub iptables: String,
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
    #[error("{tool} was not found: install iptables in the init container image ({source})")]
    Missing {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} needs the NET_ADMIN and NET_RAW capabilities in the pod's network namespace: {stderr}")]
    Permission { tool: String, stderr: String },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

pub const USAGE: &str = "usage: pqmesh-sidecar init [--dry-run | --remove] [--proxy-uid 1337] \
[--outbound-port 15001] [--inbound-port 15006] [--exclude-inbound-ports P,..] \
[--exclude-outbound-ports P,..] [--exclude-outbound-cidrs CIDR,..] [--iptables PATH]";

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

    /// Ports whose inbound traffic is never redirected: the sidecar's own listeners (so nothing
    /// loops) and its admin/health port, plus the configured exclusions.
    fn inbound_exclusions(&self) -> Vec<u16> {
        let mut ports = vec![15000, self.inbound_port, self.outbound_port];
        ports.extend(&self.exclude_inbound_ports);
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The `iptables-restore --noflush` input: declaring the chains creates or flushes them, so
    /// applying twice leaves exactly one set of pqmesh rules.
    pub fn restore_input(&self) -> String {
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
        // Except inbound delivery to the pod IP (from 127.0.0.6, see `delivery`): that reaches
        // the app itself.
        out.push_str(&format!(
            "-A {CHAIN_OUTPUT} -s 127.0.0.6/32 -o lo -p tcp -m owner --uid-owner {} -j RETURN\n",
            self.proxy_uid
        ));
        // The sidecar dialing its own pod IP (the app calling itself through the mesh) must enter
        // its own inbound listener, as a remote peer would.
        out.push_str(&format!(
            "-A {CHAIN_OUTPUT} -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner {} -j REDIRECT --to-ports {}\n",
            self.proxy_uid, self.inbound_port
        ));
        out.push_str(&format!(
            "-A {CHAIN_OUTPUT} -m owner --uid-owner {} -j RETURN\n",
            self.proxy_uid
        ));
        out.push_str(&format!("-A {CHAIN_OUTPUT} -d 127.0.0.0/8 -j RETURN\n"));
        for cidr in &self.exclude_outbound_cidrs {
            out.push_str(&format!("-A {CHAIN_OUTPUT} -d {cidr} -j RETURN\n"));
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

    /// The jumps from the built-in chains into pqmesh's chains (added only if absent).
    pub fn jumps(&self) -> [[&'static str; 6]; 2] {
        [
            ["-t", "nat", "PREROUTING", "-p", "tcp", CHAIN_INBOUND],
            ["-t", "nat", "OUTPUT", "-p", "tcp", CHAIN_OUTPUT],
        ]
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

fn cidrs(flag: &str, v: &str) -> Result<Vec<String>, InitError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|c| {
            let (ip, len) = c.split_once('/').unwrap_or((c, "32"));
            let ok = ip.parse::<std::net::Ipv4Addr>().is_ok()
                && len.parse::<u8>().is_ok_and(|l| l <= 32);
            if ok {
                Ok(c.to_owned())
            } else {
                Err(InitError::Usage(format!("{flag} {c:?}: not an IPv4 CIDR")))
            }
        })
        .collect()
}

/// Runs the action; returns what to print.
pub fn run(config: &InitConfig) -> Result<String, InitError> {
    match config.action {
        InitAction::DryRun => {
            let mut text = format!(
                "# iptables-restore --noflush <<EOF\n{}# EOF\n",
                config.restore_input()
            );
            for jump in config.jumps() {
                let [t, table, chain, p, proto, target] = jump;
                text.push_str(&format!(
                    "# unless already present: {} {t} {table} -A {chain} {p} {proto} -j {target}\n",
                    config.iptables
                ));
            }
            Ok(text)
        }
        InitAction::Apply => {
            let restore = format!("{}-restore", config.iptables);
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
                stdin
                    .write_all(config.restore_input().as_bytes())
                    .map_err(|e| InitError::Failed {
                        command: restore.clone(),
                        stderr: e.to_string(),
                    })?;
            }
            let out = child.wait_with_output().map_err(|e| InitError::Failed {
                command: restore.clone(),
                stderr: e.to_string(),
            })?;
            check(&restore, out)?;
            for jump in config.jumps() {
                let [t, table, chain, p, proto, target] = jump;
                let exists = iptables(config, &[t, table, "-C", chain, p, proto, "-j", target]);
                if exists.is_err() {
                    iptables(config, &[t, table, "-A", chain, p, proto, "-j", target])?;
                }
            }
            Ok(format!(
                "pqmesh: redirecting inbound TCP to :{} and outbound TCP to :{} (proxy uid {} excluded)\n",
                config.inbound_port, config.outbound_port, config.proxy_uid
            ))
        }
        InitAction::Remove => {
            for jump in config.jumps() {
                let [t, table, chain, p, proto, target] = jump;
                while iptables(config, &[t, table, "-C", chain, p, proto, "-j", target]).is_ok() {
                    iptables(config, &[t, table, "-D", chain, p, proto, "-j", target])?;
                }
            }
            for chain in [CHAIN_INBOUND, CHAIN_OUTPUT] {
                if iptables(config, &["-t", "nat", "-F", chain]).is_ok() {
                    iptables(config, &["-t", "nat", "-X", chain])?;
                }
            }
            Ok("pqmesh: interception rules removed\n".to_owned())
        }
    }
}

fn iptables(config: &InitConfig, args: &[&str]) -> Result<(), InitError> {
    let out = Command::new(&config.iptables)
        .args(args)
        .output()
        .map_err(|source| InitError::Missing {
            tool: config.iptables.clone(),
            source,
        })?;
    check(&format!("{} {}", config.iptables, args.join(" ")), out)
}

fn check(command: &str, out: std::process::Output) -> Result<(), InitError> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn default_rules_read_as_intended() {
        let c = InitConfig::from_args(&args(
            "--exclude-inbound-ports 9090 --exclude-outbound-cidrs 169.254.169.254/32",
        ))
        .unwrap();
        assert_eq!(
            c.restore_input(),
            "*nat
:PQMESH_INBOUND - [0:0]
:PQMESH_OUTPUT - [0:0]
-A PQMESH_INBOUND -p tcp --dport 9090 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15000 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15001 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15006 -j RETURN
-A PQMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A PQMESH_OUTPUT -s 127.0.0.6/32 -o lo -p tcp -m owner --uid-owner 1337 -j RETURN
-A PQMESH_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 1337 -j REDIRECT --to-ports 15006
-A PQMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A PQMESH_OUTPUT -d 127.0.0.0/8 -j RETURN
-A PQMESH_OUTPUT -d 169.254.169.254/32 -j RETURN
-A PQMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"
        );
    }

    #[test]
    fn bad_arguments_are_refused_precisely() {
        let cases = [
            ("--proxy-uid root", "not a number"),
            ("--outbound-port 0", "not a TCP port"),
            ("--inbound-port 70000", "not a TCP port"),
            ("--exclude-inbound-ports 80,x", "not a TCP port"),
            ("--exclude-outbound-cidrs 10.0.0.0/33", "not an IPv4 CIDR"),
            ("--exclude-outbound-cidrs 10.0.0/8", "not an IPv4 CIDR"),
            ("--outbound-port 15006", "must differ"),
            ("--frobnicate", "unknown argument"),
            ("--iptables", "needs a value"),
        ];
        for (a, want) in cases {
            let err = InitConfig::from_args(&args(a)).unwrap_err().to_string();
            assert!(err.contains(want), "{a}: {err}");
        }
    }

    #[test]
    fn a_missing_iptables_is_a_clear_error() {
        let mut c = InitConfig::from_args(&[]).unwrap();
        c.iptables = "/nonexistent/iptables".into();
        let err = run(&c).unwrap_err().to_string();
        assert!(err.contains("install iptables"), "{err}");
    }
}
