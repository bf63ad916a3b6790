//! `pqmesh-gateway`'s settings (flags or `PQMESH_*` variables, one table), parsed once into a
//! typed `Config`. The mesh-side settings have the sidecar's names and meanings.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches};
use pqmesh_mtls::env::{self, DefaultValue, Env, EnvError, Setting, Settings};
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy, SpiffeId};
use pqmesh_sidecar::config::{CertifySettings, TokenSource};

pub const SETTINGS: &[Setting] = &[
    Setting::value("PQMESH_GATEWAY_DIR", "gateway-dir", DefaultValue::Text("required without --kubernetes"), "local mode: directory with config/*.yaml (Gateway API + EdgePolicy + TokenIssuer), secrets.yaml, certs/ and backends.yaml (docs/gateway.md)"),
    Setting::value("PQMESH_GATEWAY_LISTEN_HOST", "gateway-listen-host", DefaultValue::Value("0.0.0.0"), "address the Gateway's listener ports are bound on"),
    Setting::value("PQMESH_GATEWAY_ADMIN_ADDR", "gateway-admin-addr", DefaultValue::Value("127.0.0.1:15021"), "admin: `/live`, `/ready` (a mesh certificate is held), `/metrics`, `/verdicts` (each object's Accepted/ResolvedRefs), `/logging`"),
    Setting::value("PQMESH_CONTROL_PLANE_ADDR", "control-plane-addr", DefaultValue::Text("required"), "host:port of the control plane's gRPC port"),
    Setting::value("PQMESH_CONTROL_PLANE_ID", "control-plane-id", DefaultValue::Text("`spiffe://<trust domain>/ns/pqmesh-system/sa/pqmesh-control-plane`"), "SPIFFE ID the control plane must present"),
    Setting::value("PQMESH_TRUST_DOMAIN", "trust-domain", DefaultValue::Value("cluster.local"), "trust domain"),
    Setting::value("PQMESH_TRUST_BUNDLE", "trust-bundle", DefaultValue::Text("required"), "PEM file of the roots that authenticate the control plane before the first certificate"),
    Setting::value("PQMESH_BOOTSTRAP_TOKEN_FILE", "bootstrap-token-file", DefaultValue::Text("this or PQMESH_BOOTSTRAP_TOKEN is required"), "file holding the gateway's credential, re-read at every renewal (in Kubernetes: a projected service-account token with audience pqmesh-ca)"),
    Setting::value("PQMESH_BOOTSTRAP_TOKEN", "bootstrap-token", DefaultValue::Text("this or PQMESH_BOOTSTRAP_TOKEN_FILE is required"), "the gateway's credential inline (local mode; never shown)"),
    Setting::value("PQMESH_KEY_ALG", "key-alg", DefaultValue::Value("ecdsa-p256"), "mesh key algorithm: ecdsa-p256, ml-dsa-44 or ml-dsa-65"),
    Setting::value("PQMESH_GATEWAY_MAX_CONNECTIONS", "gateway-max-connections", DefaultValue::Value("10000"), "open outside connections per listener port; past it new connections are closed at once"),
    Setting::value("PQMESH_GATEWAY_MAX_CONNECTIONS_PER_IP", "gateway-max-connections-per-ip", DefaultValue::Value("256"), "open outside connections per client IP address (all ports together); past it new connections from that address are closed at once"),
    Setting::value("PQMESH_POD_NAME", "pod-name", DefaultValue::Text("`$HOSTNAME`"), "shown in the control plane's `/policy_status` for the gateway's policy stream (which brings the client deny list and CA changes)"),
    Setting::value("PQMESH_ALLOW_CLASSICAL_KX", "allow-classical-kx", DefaultValue::Value("false"), "mesh side (to backends and the control plane) also offers classical groups; outside TLS is set per listener"),
];

pub const TABLES: &[&[Setting]] = &[SETTINGS, pqmesh_mtls::logging::SETTINGS];

#[derive(clap::Parser, Debug)]
#[command(
    name = "pqmesh-gateway",
    version,
    about = "pqmesh edge gateway: Gateway API routes, outside TLS (PQ preferred), phantom tokens and rate limits, into the mesh over PQ mTLS",
    after_help = "Every setting is a flag or a PQMESH_* variable; a flag wins. Reference: docs/gateway.md"
)]
pub struct Cli {
    /// Kubernetes mode: Gateway API objects, EdgePolicies, TokenIssuers and Secrets from the API
    /// server, backends from the control plane's discovery, status written back.
    #[arg(long)]
    pub kubernetes: bool,
}

/// Where the gateway's objects come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `PQMESH_GATEWAY_DIR`: files (docs/gateway.md, "The directory").
    Local(PathBuf),
    /// `--kubernetes`: the API server (in-cluster service account, or `KUBECONFIG`).
    Kubernetes,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub listen_host: std::net::IpAddr,
    pub admin_addr: std::net::SocketAddr,
    pub control_plane_addr: String,
    pub control_plane_id: SpiffeId,
    pub trust_bundle_path: PathBuf,
    pub token: TokenSource,
    pub key_alg: KeyAlgorithm,
    pub kx: KeyExchangePolicy,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Shown in the control plane's `/policy_status`.
    pub pod_name: String,
    pub logging: pqmesh_mtls::logging::Logging,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

pub fn command() -> clap::Command {
    Cli::command().args(TABLES.iter().flat_map(|t| t.iter()).map(Setting::arg))
}

pub fn parse<I, T>(args: I, env: &dyn Env) -> Result<Config, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv =
        std::iter::once(OsString::from("pqmesh-gateway")).chain(args.into_iter().map(Into::into));
    let matches = command().try_get_matches_from(argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let settings = Settings::new(TABLES, env).with_flags(&matches);
    Ok(Config::from_settings(cli.kubernetes, &settings)?)
}

impl Config {
    /// Local mode (`PQMESH_GATEWAY_DIR` is required).
    pub fn from_env(env: &dyn Env) -> Result<Self, EnvError> {
        Self::from_settings(false, env)
    }

    /// `kubernetes`: the `--kubernetes` switch, which excludes `PQMESH_GATEWAY_DIR`.
    pub fn from_settings(kubernetes: bool, env: &dyn Env) -> Result<Self, EnvError> {
        let CertifySettings {
            control_plane_id,
            token,
            ..
        } = CertifySettings::from_env(env)?;
        let source = match (kubernetes, env.var("PQMESH_GATEWAY_DIR")) {
            (true, None) => Source::Kubernetes,
            (true, Some(dir)) => {
                return Err(EnvError::new(
                    "PQMESH_GATEWAY_DIR",
                    &dir,
                    "local mode's directory and --kubernetes exclude each other",
                ))
            }
            (false, Some(dir)) => Source::Local(PathBuf::from(dir)),
            (false, None) => {
                return Err(EnvError::new(
                    "PQMESH_GATEWAY_DIR",
                    "",
                    "is required (local mode), or pass --kubernetes",
                ))
            }
        };
        Ok(Config {
            source,
            listen_host: env::parse_or(
                env,
                "PQMESH_GATEWAY_LISTEN_HOST",
                std::net::IpAddr::from([0, 0, 0, 0]),
            )?,
            admin_addr: env::parse_or(
                env,
                "PQMESH_GATEWAY_ADMIN_ADDR",
                std::net::SocketAddr::from(([127, 0, 0, 1], 15021)),
            )?,
            control_plane_addr: env::required(env, "PQMESH_CONTROL_PLANE_ADDR")?,
            control_plane_id,
            trust_bundle_path: PathBuf::from(env::required(env, "PQMESH_TRUST_BUNDLE")?),
            token,
            key_alg: env::parse_or(env, "PQMESH_KEY_ALG", KeyAlgorithm::EcdsaP256)?,
            kx: KeyExchangePolicy::from_allow_classical(env::parse_bool(
                env,
                "PQMESH_ALLOW_CLASSICAL_KX",
                false,
            )?),
            max_connections: env::parse_or(env, "PQMESH_GATEWAY_MAX_CONNECTIONS", 10_000usize)?,
            max_connections_per_ip: env::parse_or(
                env,
                "PQMESH_GATEWAY_MAX_CONNECTIONS_PER_IP",
                256usize,
            )?,
            pod_name: env
                .var("PQMESH_POD_NAME")
                .or_else(|| env.var("HOSTNAME"))
                .unwrap_or_else(|| "pqmesh-gateway".to_owned()),
            logging: pqmesh_mtls::logging::Logging::from_env(env)?,
        })
    }
}
