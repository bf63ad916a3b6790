//! Control-plane configuration: the command line (clap), `--local DIR` or `--kubernetes`, plus
//! the settings (flags or `PQMESH_*` variables) of one table, parsed once into a typed `Config`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use pqmesh_mtls::env::{self, DefaultValue, Env, EnvError, Setting, Settings};
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy, SpiffeId};

use crate::ca::{MAX_LEAF_LIFETIME, MIN_LEAF_LIFETIME};

/// Where the control plane's state comes from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// CA material, bootstrap tokens, endpoints and policies live in this directory.
    Local(PathBuf),
    /// In a cluster: CA in a Secret, TokenReview authentication, policies from CRDs, discovery
    /// from Pods/Services/EndpointSlices.
    Kubernetes(KubernetesSettings),
}

#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// The control plane's own namespace (`POD_NAMESPACE`): the CA Secret lives here.
    pub namespace: String,
    /// This replica's pod name (`POD_NAME`): names its entry in policy status.
    pub pod_name: String,
    /// Secret holding the root (`PQMESH_CA_SECRET`, default `pqmesh-ca`).
    pub ca_secret: String,
    /// The Secret is provided by the operator (cert-manager style `tls.crt`/`tls.key`) and is
    /// never created or changed (`PQMESH_CA_USER_PROVIDED`).
    pub ca_user_provided: bool,
    /// Secret holding the ECDSA CA that signs the webhook's serving certificate (the API server
    /// cannot verify ML-DSA), `PQMESH_WEBHOOK_CA_SECRET`, default `<ca secret>-webhook`.
    pub webhook_ca_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the control plane keeps current
    /// (`PQMESH_WEBHOOK_CONFIGURATION`; unset = none).
    pub webhook_configuration: Option<String>,
    /// Audience sidecar tokens must carry (`PQMESH_TOKEN_AUDIENCE`, default `pqmesh-ca`).
    pub token_audience: String,
    /// ConfigMap (in `namespace`) whose `revocations.yaml` lists revoked identities and serials
    /// (`PQMESH_REVOCATIONS_CONFIGMAP`, default `pqmesh-revocations`; absent = none revoked).
    pub revocations_configmap: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub grpc_addr: SocketAddr,
    /// `PQMESH_ADMIN_ADDR` (default `0.0.0.0:15014`): `/live`, `/ready`, `/metrics`. When it is
    /// a loopback address it serves every admin endpoint and no second listener is opened.
    pub admin_addr: SocketAddr,
    /// `PQMESH_ADMIN_LOCAL_ADDR` (default `127.0.0.1:15015`, loopback only): every admin
    /// endpoint (`/policy_status`, `/config_dump`, `/logging`, `POST /shutdown`, and the probes).
    /// `/policy_status` lists every sidecar's identity, pod and policies: not for the network.
    pub admin_local_addr: SocketAddr,
    pub trust_domain: String,
    /// Algorithm of a root created on first start (an existing root is kept as it is).
    pub ca_key_alg: KeyAlgorithm,
    pub leaf_lifetime: Duration,
    pub kx: KeyExchangePolicy,
    /// The control plane's own identity (its serving certificate's SPIFFE ID).
    pub identity: SpiffeId,
    /// Extra DNS names / IPs in the serving certificate.
    pub serving_names: Vec<String>,
    /// The sidecar injection webhook (HTTPS, `POST /inject`) listens here when set
    /// (`PQMESH_WEBHOOK_ADDR`; unset by default, as local mode has no API server).
    pub webhook_addr: Option<SocketAddr>,
    /// What the webhook injects (`PQMESH_SIDECAR_*`, `PQMESH_TRUST_BUNDLE_CONFIGMAP`).
    pub inject: crate::inject::InjectConfig,
    /// `PQMESH_LOG`, `PQMESH_LOG_FORMAT`: installed by the binary.
    pub logging: pqmesh_mtls::logging::Logging,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("{0}")]
    Usage(String),
    /// `--help`, `--version` or a malformed command line: clap prints it (and exits 0 or 2).
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

/// `pqmesh-control-plane`: its subcommands; the settings are added from [`SETTINGS`] and the
/// other tables by [`command`].
#[derive(clap::Parser, Debug)]
#[command(
    name = "pqmesh-control-plane",
    version,
    about = "pqmesh control plane: mesh CA (Certify), policy and discovery server, injection webhook",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = "Run it with --local DIR (files; the demo and tests) or --kubernetes (in a cluster; \
the chart sets the settings). Every setting is a flag or a PQMESH_* variable; a flag wins. \
Reference: docs/configuration.md"
)]
pub struct Cli {
    /// Kubernetes mode: CA in a Secret, TokenReview authentication, policies from CRDs,
    /// discovery from the API server.
    #[arg(long)]
    pub kubernetes: bool,
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Subcommand {
    /// Print the CustomResourceDefinitions (AccessPolicy, TokenIssuer) as YAML.
    Crds,
    /// Rotate the root CA of a local-mode directory: prepare, then activate, then finish
    /// (see docs/operations.md).
    RotateRoot {
        /// The local-mode directory (what --local names).
        dir: PathBuf,
        #[command(subcommand)]
        step: RotateStep,
    },
    /// Check policy files offline with the code the control plane reloads them with: prints
    /// `file:line: reason` per problem; exit 0 when every file is valid, 1 otherwise.
    Validate {
        /// AccessPolicy/TokenIssuer YAML files (as in DIR/policies/), or a local directory's
        /// bootstrap-tokens.yaml, endpoints.yaml or secrets.yaml (recognised by name).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum RotateStep {
    /// Create the next root and publish both roots in the trust bundle.
    Prepare {
        /// Algorithm of the next root: ecdsa-p256, ml-dsa-44 or ml-dsa-65.
        #[arg(long, value_name = "ALG", default_value = "ecdsa-p256")]
        alg: String,
    },
    /// Issue new certificates from the next root (both roots still trusted).
    Activate,
    /// Drop the old root from the trust bundle.
    Finish,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Serve(Box<Config>),
    Crds,
    RotateRoot {
        dir: PathBuf,
        step: RotateStep,
        trust_domain: String,
    },
    Validate {
        files: Vec<PathBuf>,
        trust_domain: String,
    },
}

/// The control plane's own settings (the injector's and logging's are in their own tables).
pub const SETTINGS: &[Setting] = &[
    Setting::value("PQMESH_LOCAL_DIR", "local", DefaultValue::Value(""), "local mode: the directory holding the CA, bootstrap-tokens.yaml, endpoints.yaml, policies/ and secrets.yaml (see docs/configuration.md); it must exist unless --init is given"),
    Setting::switch("PQMESH_LOCAL_INIT", "init", "local mode: create the directory (and a new root CA) when it does not exist; without it a missing directory (a typo) stops start-up"),
    Setting::value("PQMESH_GRPC_ADDR", "grpc-addr", DefaultValue::Value("0.0.0.0:15012"), "gRPC (Certify, policy Watch, discovery) over hybrid post-quantum TLS"),
    Setting::value("PQMESH_ADMIN_ADDR", "admin-addr", DefaultValue::Value("0.0.0.0:15014"), "`/live`, `/ready` and `/metrics` (kubelet probes, Prometheus); a loopback address serves every admin endpoint and no second listener opens"),
    Setting::value("PQMESH_ADMIN_LOCAL_ADDR", "admin-local-addr", DefaultValue::Value("127.0.0.1:15015"), "loopback only: every admin endpoint (`/policy_status`, `/config_dump`, `/logging`, `POST /shutdown` and the probes)"),
    Setting::value("PQMESH_TRUST_DOMAIN", "trust-domain", DefaultValue::Value("cluster.local"), "trust domain of issued SPIFFE IDs"),
    Setting::value("PQMESH_NAMESPACE", "namespace", DefaultValue::Value("pqmesh-system"), "namespace part of the control plane's own SPIFFE ID"),
    Setting::value("PQMESH_SERVICE_ACCOUNT", "service-account", DefaultValue::Value("pqmesh-control-plane"), "service-account part of the control plane's own SPIFFE ID"),
    Setting::value("PQMESH_CA_KEY_ALG", "ca-key-alg", DefaultValue::Value("ecdsa-p256"), "algorithm of a root created on first start: ecdsa-p256, ml-dsa-44 or ml-dsa-65 (an existing root is kept)"),
    Setting::value("PQMESH_LEAF_LIFETIME", "leaf-lifetime", DefaultValue::Value("1h"), "workload certificate lifetime, 5m to 24h (sidecars renew at about half)"),
    Setting::value("PQMESH_ALLOW_CLASSICAL_KX", "allow-classical-kx", DefaultValue::Value("false"), "also accept X25519 and P-256 key exchange besides X25519MLKEM768 (migration only)"),
    Setting::value("PQMESH_SERVING_NAMES", "serving-names", DefaultValue::Value("localhost,127.0.0.1,pqmesh-control-plane"), "comma list of DNS names and IPs in the serving certificate"),
    Setting::value("PQMESH_WEBHOOK_ADDR", "webhook-addr", DefaultValue::Text("unset: no webhook"), "the sidecar injection webhook (HTTPS, `POST /inject`) listens here"),
];

/// Read in `--kubernetes` mode only.
pub const KUBERNETES_SETTINGS: &[Setting] = &[
    Setting::value("POD_NAMESPACE", "pod-namespace", DefaultValue::Text("required with --kubernetes"), "the control plane's namespace (downward API): the CA Secret and revocations ConfigMap live there"),
    Setting::value("POD_NAME", "pod-name", DefaultValue::Text("required with --kubernetes"), "this replica's pod name (downward API): names its entry in policy status"),
    Setting::value("PQMESH_CA_SECRET", "ca-secret", DefaultValue::Value("pqmesh-ca"), "Secret holding the root CA"),
    Setting::value("PQMESH_CA_USER_PROVIDED", "ca-user-provided", DefaultValue::Value("false"), "the CA Secret is provided by the operator (`tls.crt`/`tls.key`) and never created or changed"),
    Setting::value("PQMESH_WEBHOOK_CA_SECRET", "webhook-ca-secret", DefaultValue::Text("`<PQMESH_CA_SECRET>-webhook`"), "Secret holding the ECDSA CA that signs the webhook's serving certificate"),
    Setting::value("PQMESH_WEBHOOK_CONFIGURATION", "webhook-configuration", DefaultValue::Text("unset: none"), "MutatingWebhookConfiguration whose caBundle the control plane keeps current"),
    Setting::value("PQMESH_TOKEN_AUDIENCE", "token-audience", DefaultValue::Value("pqmesh-ca"), "audience the sidecars' projected service-account tokens must carry"),
    Setting::value("PQMESH_REVOCATIONS_CONFIGMAP", "revocations-configmap", DefaultValue::Value("pqmesh-revocations"), "ConfigMap whose `revocations.yaml` lists revoked identities and serials (absent = none revoked)"),
];

/// Every table the control plane reads, in the order `--help` and the docs list them.
pub const TABLES: &[&[Setting]] = &[
    SETTINGS,
    KUBERNETES_SETTINGS,
    crate::inject::SETTINGS,
    pqmesh_mtls::logging::SETTINGS,
];

fn trust_domain_setting() -> &'static Setting {
    &SETTINGS[5]
}

/// The full command line: subcommands plus every setting.
pub fn command() -> clap::Command {
    let trust_domain = trust_domain_setting().arg();
    Cli::command()
        .args(TABLES.iter().flat_map(|t| t.iter()).map(Setting::arg))
        .mut_subcommand("rotate-root", |c| c.arg(trust_domain.clone()))
        .mut_subcommand("validate", |c| c.arg(trust_domain))
}

/// Parses the command line (`args` without the program name) and the settings.
pub fn parse<I, T>(args: I, env: &dyn Env) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv = std::iter::once(OsString::from("pqmesh-control-plane"))
        .chain(args.into_iter().map(Into::into));
    let matches = command().try_get_matches_from(argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let trust_domain = |m: &clap::ArgMatches| {
        Settings::new(TABLES, env)
            .with_flags(m)
            .var("PQMESH_TRUST_DOMAIN")
            .unwrap_or_else(|| "cluster.local".to_owned())
    };
    match cli.command {
        Some(Subcommand::Crds) => Ok(Invocation::Crds),
        Some(Subcommand::RotateRoot { dir, step }) => Ok(Invocation::RotateRoot {
            dir,
            step,
            trust_domain: trust_domain(subcommand_matches(&matches)),
        }),
        Some(Subcommand::Validate { files }) => Ok(Invocation::Validate {
            files,
            trust_domain: trust_domain(subcommand_matches(&matches)),
        }),
        None => {
            let settings = Settings::new(TABLES, env).with_flags(&matches);
            Config::from_settings(cli.kubernetes, &settings).map(|c| Invocation::Serve(Box::new(c)))
        }
    }
}

fn subcommand_matches(matches: &clap::ArgMatches) -> &clap::ArgMatches {
    matches.subcommand().map(|(_, m)| m).unwrap_or(matches)
}

impl Config {
    /// Serve mode from a command line such as `["--local", DIR]` (tests; the binary uses
    /// [`parse`]).
    pub fn from_args_and_env(args: &[String], env: &dyn Env) -> Result<Self, ConfigError> {
        match parse(args, env)? {
            Invocation::Serve(config) => Ok(*config),
            other => Err(ConfigError::Usage(format!(
                "not a serve command line: {other:?}"
            ))),
        }
    }

    fn from_settings(kubernetes: bool, env: &dyn Env) -> Result<Self, ConfigError> {
        match (env.var("PQMESH_LOCAL_DIR").map(PathBuf::from), kubernetes) {
            (Some(_), true) => Err(ConfigError::Usage(
                "--local (PQMESH_LOCAL_DIR) and --kubernetes exclude each other".into(),
            )),
            (Some(dir), false) => {
                let init = env::parse_bool(env, "PQMESH_LOCAL_INIT", false)?;
                if !init && !dir.is_dir() {
                    return Err(EnvError::new(
                        "PQMESH_LOCAL_DIR",
                        &dir.display().to_string(),
                        "no such directory; to start a new mesh there (a new root CA), add --init \
                         (or PQMESH_LOCAL_INIT=true)",
                    )
                    .into());
                }
                Self::from_env(dir, env)
            }
            (None, true) => {
                Self::with_mode(Mode::Kubernetes(KubernetesSettings::from_env(env)?), env)
            }
            (None, false) => Err(ConfigError::Usage(
                "pass --local DIR (or set PQMESH_LOCAL_DIR), or --kubernetes; see --help".into(),
            )),
        }
    }

    /// Local mode with its directory (what tests and the demo use).
    pub fn from_env(local_dir: PathBuf, env: &dyn Env) -> Result<Self, ConfigError> {
        Self::with_mode(Mode::Local(local_dir), env)
    }

    pub fn with_mode(mode: Mode, env: &dyn Env) -> Result<Self, ConfigError> {
        let trust_domain = env
            .var("PQMESH_TRUST_DOMAIN")
            .unwrap_or_else(|| "cluster.local".to_owned());
        let namespace = env
            .var("PQMESH_NAMESPACE")
            .unwrap_or_else(|| "pqmesh-system".to_owned());
        let service_account = env
            .var("PQMESH_SERVICE_ACCOUNT")
            .unwrap_or_else(|| "pqmesh-control-plane".to_owned());
        let identity = SpiffeId::new(&trust_domain, &namespace, &service_account)
            .map_err(|e| EnvError::new("PQMESH_TRUST_DOMAIN", &trust_domain, e))?;
        let leaf_lifetime =
            env::duration_or(env, "PQMESH_LEAF_LIFETIME", Duration::from_secs(3600))?;
        if !(MIN_LEAF_LIFETIME..=MAX_LEAF_LIFETIME).contains(&leaf_lifetime) {
            return Err(EnvError::new(
                "PQMESH_LEAF_LIFETIME",
                &env.var("PQMESH_LEAF_LIFETIME").unwrap_or_default(),
                "must be between 5m and 24h",
            )
            .into());
        }
        let serving_names = env
            .var("PQMESH_SERVING_NAMES")
            .unwrap_or_else(|| "localhost,127.0.0.1,pqmesh-control-plane".to_owned())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let inject = crate::inject::InjectConfig::from_env(env, &identity)?;
        let admin_local_addr: SocketAddr = env::parse_or(
            env,
            "PQMESH_ADMIN_LOCAL_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 15015)),
        )?;
        if !admin_local_addr.ip().is_loopback() {
            return Err(EnvError::new(
                "PQMESH_ADMIN_LOCAL_ADDR",
                &admin_local_addr.to_string(),
                "must be a loopback address (127.0.0.0/8 or ::1): it serves /policy_status, \
                 /config_dump and POST /shutdown",
            )
            .into());
        }
        Ok(Self {
            admin_local_addr,
            mode,
            grpc_addr: env::parse_or(
                env,
                "PQMESH_GRPC_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 15012)),
            )?,
            admin_addr: env::parse_or(
                env,
                "PQMESH_ADMIN_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 15014)),
            )?,
            trust_domain,
            ca_key_alg: env::parse_or(env, "PQMESH_CA_KEY_ALG", KeyAlgorithm::EcdsaP256)?,
            leaf_lifetime,
            kx: KeyExchangePolicy::from_allow_classical(env::parse_bool(
                env,
                "PQMESH_ALLOW_CLASSICAL_KX",
                false,
            )?),
            identity,
            serving_names,
            webhook_addr: env::parse_opt(env, "PQMESH_WEBHOOK_ADDR")?,
            inject,
            logging: pqmesh_mtls::logging::Logging::from_env(env)?,
        })
    }
}

impl Config {
    /// The setting that chose `addr`, for a listen error that names what to change.
    pub fn setting_of_addr(&self, addr: SocketAddr) -> Option<&'static str> {
        [
            ("PQMESH_GRPC_ADDR", Some(self.grpc_addr)),
            ("PQMESH_ADMIN_ADDR", Some(self.admin_addr)),
            ("PQMESH_ADMIN_LOCAL_ADDR", Some(self.admin_local_addr)),
            ("PQMESH_WEBHOOK_ADDR", self.webhook_addr),
        ]
        .into_iter()
        .find(|(_, a)| *a == Some(addr))
        .map(|(name, _)| name)
    }
}

/// A listen error as one line naming the setting (see [`env::listen_error`]).
pub fn listen_error(setting: &str, addr: SocketAddr, error: &std::io::Error) -> String {
    env::listen_error(TABLES, setting, addr, error)
}

impl KubernetesSettings {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let required = |name: &str| {
            env.var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                EnvError::new(
                    name,
                    "",
                    "must be set in Kubernetes mode (the chart sets it from the downward API)",
                )
            })
        };
        let ca_secret = env
            .var("PQMESH_CA_SECRET")
            .unwrap_or_else(|| "pqmesh-ca".to_owned());
        Ok(Self {
            namespace: required("POD_NAMESPACE")?,
            pod_name: required("POD_NAME")?,
            webhook_ca_secret: env
                .var("PQMESH_WEBHOOK_CA_SECRET")
                .unwrap_or_else(|| format!("{ca_secret}-webhook")),
            ca_secret,
            ca_user_provided: env::parse_bool(env, "PQMESH_CA_USER_PROVIDED", false)?,
            webhook_configuration: env
                .var("PQMESH_WEBHOOK_CONFIGURATION")
                .filter(|v| !v.is_empty()),
            token_audience: env
                .var("PQMESH_TOKEN_AUDIENCE")
                .unwrap_or_else(|| "pqmesh-ca".to_owned()),
            revocations_configmap: env
                .var("PQMESH_REVOCATIONS_CONFIGMAP")
                .unwrap_or_else(|| "pqmesh-revocations".to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::from_args_and_env(&["--local".into(), "/tmp".into()], &env(&[])).unwrap();
        assert_eq!(c.grpc_addr.port(), 15012);
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:15014");
        assert_eq!(c.admin_local_addr.to_string(), "127.0.0.1:15015");
        assert_eq!(c.leaf_lifetime, Duration::from_secs(3600));
        assert_eq!(c.kx, KeyExchangePolicy::HybridOnly);
        assert_eq!(
            c.identity.to_string(),
            "spiffe://cluster.local/ns/pqmesh-system/sa/pqmesh-control-plane"
        );
    }

    #[test]
    fn the_local_admin_address_must_be_loopback() {
        let args = ["--local".to_owned(), "/tmp".to_owned()];
        for good in ["127.0.0.1:0", "[::1]:15015", "127.0.0.2:9"] {
            let c = Config::from_args_and_env(&args, &env(&[("PQMESH_ADMIN_LOCAL_ADDR", good)]))
                .unwrap();
            assert_eq!(c.admin_local_addr, good.parse().unwrap());
        }
        for bad in ["0.0.0.0:15015", "10.0.0.1:15015", "[::]:15015"] {
            let e = Config::from_args_and_env(&args, &env(&[("PQMESH_ADMIN_LOCAL_ADDR", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("PQMESH_ADMIN_LOCAL_ADDR") && e.contains("loopback"),
                "{bad}: {e}"
            );
        }
        let e = Config::from_args_and_env(&args, &env(&[("PQMESH_ADMIN_LOCAL_ADDR", "local")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PQMESH_ADMIN_LOCAL_ADDR"), "{e}");
    }

    #[test]
    fn kubernetes_mode() {
        let c = Config::from_args_and_env(
            &["--kubernetes".into()],
            &env(&[
                ("POD_NAMESPACE", "pqmesh-system"),
                ("POD_NAME", "cp-0"),
                ("PQMESH_WEBHOOK_CONFIGURATION", "pqmesh"),
                ("PQMESH_CA_USER_PROVIDED", "true"),
            ]),
        )
        .unwrap();
        let Mode::Kubernetes(k) = c.mode else {
            panic!("not kubernetes mode")
        };
        assert_eq!(k.ca_secret, "pqmesh-ca");
        assert_eq!(k.webhook_ca_secret, "pqmesh-ca-webhook");
        assert!(k.ca_user_provided);
        assert_eq!(k.webhook_configuration.as_deref(), Some("pqmesh"));
        assert_eq!(k.token_audience, "pqmesh-ca");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("PQMESH_LEAF_LIFETIME", "1m", "between 5m and 24h"),
            ("PQMESH_LEAF_LIFETIME", "2d", "unknown unit"),
            ("PQMESH_CA_KEY_ALG", "rsa", "unknown key algorithm"),
            ("PQMESH_GRPC_ADDR", "localhost", "invalid socket address"),
            ("PQMESH_TRUST_DOMAIN", "Bad Domain", "trust domain"),
            ("PQMESH_ALLOW_CLASSICAL_KX", "perhaps", "true or false"),
        ];
        for (name, value, want) in cases {
            let err = Config::from_args_and_env(
                &["--local".into(), "/tmp".into()],
                &env(&[(name, value)]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(name) && err.contains(want),
                "{name}={value}: {err}"
            );
        }
        assert!(Config::from_args_and_env(&[], &env(&[])).is_err());
        let both = ["--local".into(), "/tmp".into(), "--kubernetes".into()];
        assert!(Config::from_args_and_env(&both, &env(&[])).is_err());
        let err = Config::from_args_and_env(&["--kubernetes".into()], &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("POD_NAMESPACE"), "{err}");
        assert!(Config::from_args_and_env(&["--bogus".into()], &env(&[])).is_err());
    }

    #[test]
    fn a_missing_local_directory_is_refused_unless_init_is_asked() {
        let dir = std::env::temp_dir().join(format!("pqmesh-missing-{}", std::process::id()));
        let args = ["--local".to_owned(), dir.display().to_string()];
        let e = Config::from_args_and_env(&args, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("PQMESH_LOCAL_DIR=")
                && e.contains("no such directory")
                && e.contains("--init"),
            "{e}"
        );
        let shown = dir.display().to_string();
        assert!(Config::from_args_and_env(&[], &env(&[("PQMESH_LOCAL_DIR", &shown)])).is_err());
        let with_init = [args[0].clone(), args[1].clone(), "--init".to_owned()];
        assert!(Config::from_args_and_env(&with_init, &env(&[])).is_ok());
        let by_env = env(&[("PQMESH_LOCAL_DIR", &shown), ("PQMESH_LOCAL_INIT", "1")]);
        assert!(Config::from_args_and_env(&[], &by_env).is_ok());
        assert!(!dir.exists(), "parsing creates nothing");
    }

    #[test]
    fn flags_set_the_same_settings_as_variables_and_win() {
        let args: Vec<String> = [
            "--local",
            "/tmp",
            "--admin-addr",
            "127.0.0.1:9",
            "--log-format",
            "json",
        ]
        .map(String::from)
        .to_vec();
        let c = Config::from_args_and_env(&args, &env(&[("PQMESH_ADMIN_ADDR", "127.0.0.1:8")]))
            .unwrap();
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9");
        assert_eq!(c.logging.format, pqmesh_mtls::logging::Format::Json);
        let e = Config::from_args_and_env(
            &[
                "--local".into(),
                "/tmp".into(),
                "--leaf-lifetime".into(),
                "2d".into(),
            ],
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("PQMESH_LEAF_LIFETIME=\"2d\""), "{e}");
    }

    /// The table's defaults (what --help and the docs show, and what the binary reads unset
    /// settings as) are the defaults of the parsing code.
    #[test]
    fn the_table_defaults_are_the_code_defaults() {
        let mut defaults: Vec<(&str, &str)> = TABLES
            .iter()
            .flat_map(|t| t.iter())
            .filter_map(|s| match s.default {
                DefaultValue::Value(v) if !v.is_empty() && !s.switch => Some((s.env, v)),
                _ => None,
            })
            .collect();
        let dir = std::path::PathBuf::from("/tmp");
        let from_code = Config::from_env(dir.clone(), &env(&[])).unwrap();
        let from_table = Config::from_env(dir, &env(&defaults)).unwrap();
        assert_eq!(format!("{from_code:?}"), format!("{from_table:?}"));
        let pod = [("POD_NAMESPACE", "ns"), ("POD_NAME", "cp-0")];
        defaults.extend(pod);
        let from_code = Config::from_args_and_env(&["--kubernetes".into()], &env(&pod)).unwrap();
        let from_table =
            Config::from_args_and_env(&["--kubernetes".into()], &env(&defaults)).unwrap();
        assert_eq!(format!("{from_code:?}"), format!("{from_table:?}"));
    }

    #[test]
    fn every_setting_has_one_flag_and_one_variable() {
        let all: Vec<&Setting> = TABLES.iter().flat_map(|t| t.iter()).collect();
        for (i, s) in all.iter().enumerate() {
            assert!(
                all[i + 1..]
                    .iter()
                    .all(|o| o.env != s.env && o.flag != s.flag),
                "{} or --{} twice",
                s.env,
                s.flag
            );
        }
        // clap itself refuses duplicate flags or ids when the command is built.
        command().debug_assert();
    }

    #[test]
    fn subcommands_take_their_settings() {
        let Invocation::RotateRoot {
            trust_domain, step, ..
        } = parse(
            [
                "rotate-root",
                "/d",
                "--trust-domain",
                "example.org",
                "prepare",
                "--alg",
                "ml-dsa-65",
            ],
            &env(&[]),
        )
        .unwrap()
        else {
            panic!("not rotate-root")
        };
        assert_eq!(trust_domain, "example.org");
        assert_eq!(
            step,
            RotateStep::Prepare {
                alg: "ml-dsa-65".into()
            }
        );
        let Invocation::Validate {
            files,
            trust_domain,
        } = parse(
            ["validate", "a.yaml", "b.yaml"],
            &env(&[("PQMESH_TRUST_DOMAIN", "td.example")]),
        )
        .unwrap()
        else {
            panic!("not validate")
        };
        assert_eq!(files.len(), 2);
        assert_eq!(trust_domain, "td.example");
        assert!(matches!(
            parse(["crds"], &env(&[])).unwrap(),
            Invocation::Crds
        ));
        for bad in [
            &["validate"][..],
            &["crds", "--grpc-addr", "x"],
            &["rotate-root", "/d"],
        ] {
            assert!(
                matches!(
                    parse(bad.iter().copied(), &env(&[])),
                    Err(ConfigError::Cli(_))
                ),
                "{bad:?}"
            );
        }
    }
}
