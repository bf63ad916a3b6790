//! Command-line surface of `kubectl pqmesh`: global cluster flags and the four commands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-pqmesh",
    bin_name = "kubectl pqmesh",
    version,
    about = "Operate a pqmesh service mesh: mesh health, workload identity, applied policy, offline injection",
    after_help = "kubectl finds this plugin as `kubectl-pqmesh` on PATH. Cluster access goes through the \
kubectl binary itself (KUBECONFIG, --kubeconfig, --context, -n are passed to it); sidecar and control-plane \
admin ports are reached with `kubectl port-forward`. --admin-url bypasses kubectl and talks to an admin \
endpoint directly (local mode, tests, or a port-forward you run yourself)."
)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// kubeconfig file passed to kubectl (default: kubectl's own, i.e. $KUBECONFIG or ~/.kube/config)
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context passed to kubectl
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the pod (identity, policy); default: the context's namespace. analyze:
    /// report only this namespace's objects, and put namespace-less file objects in it
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// Namespace the control plane runs in
    #[arg(
        long,
        global = true,
        value_name = "NS",
        env = "PQMESH_NAMESPACE",
        default_value = "pqmesh-system"
    )]
    pub control_plane_namespace: String,
    /// Label selector of the control-plane pods (every replica is queried)
    #[arg(
        long,
        global = true,
        value_name = "SELECTOR",
        default_value = "app.kubernetes.io/name=pqmesh,app.kubernetes.io/component=control-plane"
    )]
    pub control_plane_selector: String,
    /// kubectl binary to run
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "PQMESH_KUBECTL",
        default_value = "kubectl"
    )]
    pub kubectl: PathBuf,
    /// Time limit for each kubectl call, port-forward set-up and HTTP request, in seconds
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

impl ClusterArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable tables
    Table,
    /// One JSON document, for machines
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mesh health: control plane live/ready, CA and serving-cert expiry, sidecars on the current
    /// policy version, CRDs and the injection webhook. Exit 0 healthy, 1 problems found.
    Check(CheckArgs),
    /// A pod's mesh identity: SPIFFE ID, certificate serial and expiry, signature scheme, trust
    /// bundle, negotiated TLS key-exchange groups.
    Identity(IdentityArgs),
    /// The policy a pod's sidecar applied: version, AccessPolicies, TokenIssuers (secrets never
    /// shown), decisions by reason, and whether the control plane saw the version ACKed.
    Policy(PolicyArgs),
    /// Offline sidecar injection of every pod template in a (multi-document) YAML file, for GitOps.
    Inject(InjectArgs),
    /// One step of a zero-downtime CA root rotation, as an edit of the CA Secret: prepare (a new
    /// root is trusted), activate (it signs; the old one stays trusted), finish (the old one is
    /// dropped). Wait for `kubectl pqmesh check` to show every sidecar on the current CA between
    /// steps.
    RotateRoot(RotateRootArgs),
    /// Find configuration mistakes, each with its fix (pqmesh's `istioctl analyze`).
    ///
    /// Policies selecting no pod, references to missing TokenIssuers, Secrets, service accounts or namespaces, objects the control plane
    /// refused, unmeshed pods in injected namespaces, certificates near expiry, sidecars on a
    /// stale policy or CA. Reads the cluster, manifest files (-f, offline, for CI) or both.
    /// Exit 0 when nothing at or above --fail-on was found, 1 otherwise.
    Analyze(AnalyzeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RotateStep {
    Prepare,
    Activate,
    Finish,
}

#[derive(Debug, Args)]
pub struct RotateRootArgs {
    /// The step to take
    #[arg(value_enum)]
    pub step: RotateStep,
    /// Key algorithm of the new root (prepare only): ecdsa-p256, ml-dsa-44 or ml-dsa-65
    #[arg(long, value_name = "ALG", default_value = "ecdsa-p256")]
    pub alg: String,
    /// Name of the CA Secret in the control plane's namespace
    #[arg(long, value_name = "NAME", default_value = "pqmesh-ca")]
    pub ca_secret: String,
    /// Trust domain of the new root (prepare only)
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Control-plane local admin URL (e.g. http://127.0.0.1:15015); skips kubectl and the cluster-only checks
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Name of the MutatingWebhookConfiguration
    #[arg(long, value_name = "NAME", default_value = "pqmesh")]
    pub webhook: String,
    /// Warn when the CA root expires within this many days
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub root_warn_days: u64,
    /// Treat warnings as problems (exit 1)
    #[arg(long)]
    pub strict: bool,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// How serious a finding is; also the `--fail-on` threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Manifest file or directory (*.yaml, *.yml, *.json; `-` reads standard input); repeat
    /// for more. Without --cluster the analysis is offline: only these files are judged
    #[arg(short = 'f', long = "filename", value_name = "PATH", num_args = 1.., action = clap::ArgAction::Append)]
    pub files: Vec<PathBuf>,
    /// Read directories given with -f recursively
    #[arg(short = 'R', long, requires = "files")]
    pub recursive: bool,
    /// With -f: read the cluster too; the files take the place of cluster objects of the same
    /// kind, namespace and name, as if they were applied
    #[arg(long, requires = "files")]
    pub cluster: bool,
    /// Control-plane local admin URL (e.g. http://127.0.0.1:15015) for the certificate and
    /// sidecar findings instead of a port-forward to every replica (with -f alone: local mode)
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Name of the MutatingWebhookConfiguration whose selectors decide which pods get a sidecar
    #[arg(long, value_name = "NAME", default_value = "pqmesh")]
    pub webhook: String,
    /// Warn when the CA root expires within this many days
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub root_warn_days: u64,
    /// Trust domain of the mesh: resolves `<ns>/<sa>` peers; SPIFFE IDs of other trust domains
    /// cannot be checked
    #[arg(
        long,
        value_name = "DOMAIN",
        env = "PQMESH_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    /// Exit 1 when a finding of this severity or worse is found
    #[arg(long, value_enum, value_name = "SEVERITY", default_value = "error")]
    pub fail_on: Severity,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Pod name (`NAME` or `pod/NAME`); required unless --admin-url is given
    #[arg(required_unless_present = "admin_url")]
    pub pod: Option<String>,
    /// Sidecar admin URL (e.g. http://127.0.0.1:15000); skips kubectl
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Pod name (`NAME` or `pod/NAME`); required unless --admin-url is given
    #[arg(required_unless_present = "admin_url")]
    pub pod: Option<String>,
    /// Sidecar admin URL (e.g. http://127.0.0.1:15000); skips kubectl
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Control-plane admin URL to read ACK status from /policy_status (with kubectl, every
    /// control-plane replica is asked when this is not given)
    #[arg(long, value_name = "URL")]
    pub control_plane_url: Option<String>,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML file with Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
    /// (or a List of them); `-` reads standard input
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Write the injected YAML here instead of standard output (written only if every
    /// document succeeded)
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Take the injector settings (PQMESH_SIDECAR_*, trust domain, control-plane identity) from
    /// the installed control-plane Deployment, so the output matches what the webhook would do
    #[arg(long)]
    pub from_cluster: bool,
    /// Sidecar image (overrides PQMESH_SIDECAR_IMAGE and --from-cluster)
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Trust domain of the mesh (overrides PQMESH_TRUST_DOMAIN and --from-cluster)
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
}

/// `NAME` or `pod/NAME` or `pods/NAME` → `NAME`.
pub fn pod_name(arg: &str) -> Result<String, String> {
    let name = match arg.split_once('/') {
        Some(("pod" | "pods" | "po", name)) => name,
        Some((kind, _)) => {
            return Err(format!(
                "{arg:?}: only pods have a sidecar admin (got kind {kind:?}); pass the pod name"
            ))
        }
        None => arg,
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!("{arg:?} is not a valid pod name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        assert_eq!(pod_name("api-7d9f").unwrap(), "api-7d9f");
        assert_eq!(pod_name("pod/api-0").unwrap(), "api-0");
        assert!(pod_name("deploy/api").unwrap_err().contains("only pods"));
        assert!(pod_name("Api; rm").is_err());
        assert!(pod_name("").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
