//! Talking to the cluster through the `kubectl` binary: `get -o json` and `port-forward`.
//! The plugin never reads kubeconfig itself, so contexts, exec credential plugins and proxies
//! behave exactly as they do for the user's own kubectl.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::ClusterArgs;

#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("kubectl not found (looked for {bin:?}): install kubectl, set PQMESH_KUBECTL or --kubectl, or pass --admin-url to bypass the cluster")]
    NotFound { bin: PathBuf },
    #[error("could not run {bin:?}: {reason}")]
    Spawn {
        bin: PathBuf,
        reason: std::io::Error,
    },
    #[error("`kubectl {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("cannot reach the Kubernetes API server (`kubectl {args}`): {stderr} (check KUBECONFIG, --kubeconfig and --context)")]
    Unreachable { args: String, stderr: String },
    #[error("`kubectl {args}` did not finish within {secs} s")]
    Timeout { args: String, secs: u64 },
    #[error("`kubectl {args}` printed invalid JSON: {reason}")]
    BadJson {
        args: String,
        reason: serde_json::Error,
    },
    #[error("port-forward to {target} failed: {detail}")]
    PortForward { target: String, detail: String },
}

impl KubectlError {
    /// Errors that make every further cluster call pointless (no kubectl, no API server).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            KubectlError::NotFound { .. } | KubectlError::Unreachable { .. }
        )
    }

    /// The API server answered NotFound for the object asked for.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubectlError::Failed { stderr, .. } if stderr.contains("NotFound") || stderr.contains("not found"))
    }
}

#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    global: Vec<String>,
    timeout: Duration,
}

impl Kubectl {
    pub fn new(args: &ClusterArgs) -> Self {
        let mut global = Vec::new();
        if let Some(k) = &args.kubeconfig {
            global.push(format!("--kubeconfig={}", k.display()));
        }
        if let Some(c) = &args.context {
            global.push(format!("--context={c}"));
        }
        Self {
            bin: args.kubectl.clone(),
            global,
            timeout: args.timeout(),
        }
    }

    fn command(&self, namespace: Option<&str>, args: &[&str]) -> (Command, String) {
        let mut all: Vec<String> = self.global.clone();
        if let Some(ns) = namespace {
            all.push(format!("--namespace={ns}"));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let mut cmd = Command::new(&self.bin);
        cmd.args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        (cmd, all.join(" "))
    }

    fn spawn_error(&self, source: std::io::Error) -> KubectlError {
        if source.kind() == std::io::ErrorKind::NotFound {
            KubectlError::NotFound {
                bin: self.bin.clone(),
            }
        } else {
            KubectlError::Spawn {
                bin: self.bin.clone(),
                reason: source,
            }
        }
    }

    /// `kubectl [-n ns] <args> -o json`, parsed.
    pub async fn get_json(
        &self,
        namespace: Option<&str>,
        args: &[&str],
    ) -> Result<Value, KubectlError> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        let (mut cmd, shown) = self.command(namespace, &full);
        let child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| KubectlError::Timeout {
                args: shown.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let unreachable = [
                "The connection to the server",
                "Unable to connect to the server",
                "no configuration has been provided",
                "context was not found",
            ]
            .iter()
            .any(|m| stderr.contains(m));
            let stderr = one_line(&stderr);
            return Err(if unreachable {
                KubectlError::Unreachable {
                    args: shown,
                    stderr,
                }
            } else {
                KubectlError::Failed {
                    args: shown,
                    stderr,
                }
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|reason| KubectlError::BadJson {
            args: shown,
            reason,
        })
    }

    /// `kubectl [-n ns] replace -f -` with `object` on standard input. The object carries the
    /// resourceVersion it was read at, so a concurrent change makes this fail (409) instead of
    /// being overwritten.
    pub async fn replace(
        &self,
        namespace: Option<&str>,
        object: &Value,
    ) -> Result<(), KubectlError> {
        use tokio::io::AsyncWriteExt;
        let (mut cmd, shown) = self.command(namespace, &["replace", "-f", "-"]);
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let body = serde_json::to_vec(object).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // A kubectl that exits early closes the pipe: its exit status and stderr say why.
            if let Err(e) = stdin.write_all(&body).await {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(self.spawn_error(e));
                }
            }
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| KubectlError::Timeout {
                args: shown.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|e| self.spawn_error(e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(KubectlError::Failed {
                args: shown,
                stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
            })
        }
    }

    /// `kubectl -n ns port-forward --address 127.0.0.1 <target> :<remote_port>`: waits until
    /// kubectl reports the local port it chose.
    pub async fn port_forward(
        &self,
        namespace: &str,
        target: &str,
        remote_port: u16,
    ) -> Result<PortForward, KubectlError> {
        let remote = format!(":{remote_port}");
        let (mut cmd, _) = self.command(
            Some(namespace),
            &["port-forward", "--address", "127.0.0.1", target, &remote],
        );
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let what = format!("{namespace}/{target} port {remote_port}");
        let fail = |detail: String| KubectlError::PortForward {
            target: what.clone(),
            detail,
        };
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(fail("kubectl's output pipes were not available".into()));
        };
        let errors = Arc::new(Mutex::new(String::new()));
        let errors_w = errors.clone();
        let stderr_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            errors_w
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&String::from_utf8_lossy(&buf));
        });
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(self.timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(port) = forwarded_port(&line) {
                    return Some(port);
                }
            }
            None
        })
        .await;
        let local_port = match found {
            Ok(Some(port)) => port,
            Ok(None) => {
                // kubectl exited (or closed stdout) without forwarding: its stderr says why.
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), stderr_task).await;
                let msg = one_line(&errors.lock().unwrap_or_else(|p| p.into_inner()));
                let _ = child.start_kill();
                return Err(fail(if msg.is_empty() {
                    "kubectl exited without reporting a local port".into()
                } else {
                    msg
                }));
            }
            Err(_) => {
                let _ = child.start_kill();
                let msg = one_line(&errors.lock().unwrap_or_else(|p| p.into_inner()));
                return Err(fail(format!(
                    "no local port reported within {} s{}{}",
                    self.timeout.as_secs(),
                    if msg.is_empty() { "" } else { ": " },
                    msg
                )));
            }
        };
        // kubectl logs "Handling connection for ..." per connection: keep draining its stdout.
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PortForward {
            child,
            local_port,
            tasks: vec![drain, stderr_task],
        })
    }
}

/// A running `kubectl port-forward`; stopped on `stop()` or drop.
pub struct PortForward {
    child: Child,
    pub local_port: u16,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PortForward {
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `Forwarding from 127.0.0.1:43121 -> 15000` → 43121.
pub fn forwarded_port(line: &str) -> Option<u16> {
    let rest = line.trim().strip_prefix("Forwarding from ")?;
    let (local, _) = rest.split_once(" -> ")?;
    let (_, port) = local.rsplit_once(':')?;
    port.parse().ok().filter(|p| *p != 0)
}

/// kubectl's stderr on one line, without its klog lines (`E1122 06:11:25.039601 18835 x.go:265]
/// ...`) when it also printed a plain message: those repeat the message in more words.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let plain: Vec<&str> = lines.iter().copied().filter(|l| !is_klog(l)).collect();
    if plain.is_empty() { lines } else { plain }.join("; ")
}

fn is_klog(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 6
        && matches!(b[0], b'I' | b'W' | b'E' | b'F')
        && b[1..5].iter().all(u8::is_ascii_digit)
        && b[5] == b' '
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_forward_lines() {
        assert_eq!(
            forwarded_port("Forwarding from 127.0.0.1:43121 -> 15000"),
            Some(43121)
        );
        assert_eq!(
            forwarded_port("Forwarding from [::1]:43121 -> 15000\n"),
            Some(43121)
        );
        for bad in [
            "Handling connection for 43121",
            "Forwarding from 127.0.0.1:0 -> 15000",
            "Forwarding from 127.0.0.1:x -> 15000",
            "Forwarding from 127.0.0.1:99999 -> 15000",
            "",
        ] {
            assert_eq!(forwarded_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn klog_noise_is_dropped_when_there_is_a_message() {
        let stderr = "E1122 06:11:25.039601   18835 memcache.go:265] \"Unhandled Error\" err=\"couldn't get current server API group list\"\n\
                      E1122 06:11:25.041566   18835 memcache.go:265] \"Unhandled Error\"\n\
                      The connection to the server localhost:8080 was refused - did you specify the right host or port?\n";
        assert_eq!(
            one_line(stderr),
            "The connection to the server localhost:8080 was refused - did you specify the right host or port?"
        );
        assert_eq!(
            one_line("E1122 06:11:25.0 1 x.go:1] only klog\n"),
            "E1122 06:11:25.0 1 x.go:1] only klog"
        );
        assert_eq!(
            one_line("error: one\nerror: two\n"),
            "error: one; error: two"
        );
    }

    #[test]
    fn not_found_is_recognised() {
        let e = KubectlError::Failed {
            args: "get x".into(),
            stderr: "Error from server (NotFound): mutatingwebhookconfigurations.admissionregistration.k8s.io \"pqmesh\" not found".into(),
        };
        assert!(e.is_not_found());
        let e = KubectlError::Failed {
            args: "get x".into(),
            stderr: "Unable to connect to the server".into(),
        };
        assert!(!e.is_not_found());
    }
}
