//! Sidecar configuration: the command line (clap: the proxy, or `init`) and the settings
//! (flags or `PQMESH_*` variables) of one table, parsed once into a typed `Config`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches};
use pqmesh_mtls::env::{self, DefaultValue, Env, EnvError, Setting, Settings};
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy, PeerPattern, SpiffeId};

/// The proxy's settings; `--help` and docs/configuration.md are generated from this table.
pub const SETTINGS: &[Setting] = &[
    Setting::value("PQMESH_CONTROL_PLANE_ADDR", "control-plane-addr", DefaultValue::Text("required"), "host:port of the control plane's gRPC port"),
    Setting::value("PQMESH_CONTROL_PLANE_ID", "control-plane-id", DefaultValue::Text("`spiffe://<trust domain>/ns/pqmesh-system/sa/pqmesh-control-plane`"), "SPIFFE ID the control plane must present"),
    Setting::value("PQMESH_TRUST_DOMAIN", "trust-domain", DefaultValue::Value("cluster.local"), "trust domain (for `ns/*` allow-list patterns and the control plane's default ID)"),
    Setting::value("PQMESH_TRUST_BUNDLE", "trust-bundle", DefaultValue::Text("required"), "PEM file of the roots that authenticate the control plane before the first certificate"),
    Setting::value("PQMESH_BOOTSTRAP_TOKEN_FILE", "bootstrap-token-file", DefaultValue::Text("this or PQMESH_BOOTSTRAP_TOKEN is required"), "file holding the workload's credential (re-read at every renewal; a projected service-account token in Kubernetes)"),
    Setting::value("PQMESH_BOOTSTRAP_TOKEN", "bootstrap-token", DefaultValue::Text("this or PQMESH_BOOTSTRAP_TOKEN_FILE is required"), "the workload's credential inline (local mode; never shown in help or logs)"),
    Setting::value("PQMESH_KEY_ALG", "key-alg", DefaultValue::Value("ecdsa-p256"), "workload key algorithm: ecdsa-p256, ml-dsa-44 or ml-dsa-65"),
    Setting::value("PQMESH_ALLOW_CLASSICAL_KX", "allow-classical-kx", DefaultValue::Value("false"), "also offer and accept X25519 and P-256 key exchange (migration only)"),
    Setting::value("PQMESH_INBOUND_ADDR", "inbound-addr", DefaultValue::Value("0.0.0.0:15006"), "inbound listener (iptables target); 0.0.0.0:P also listens on [::]:P unless the namespace has no IPv6"),
    Setting::value("PQMESH_INBOUND_ALLOW", "inbound-allow", DefaultValue::Text("empty: refuse all"), "peers admitted without an AccessPolicy: comma list of SPIFFE IDs, `<ns>/<sa>` or `<ns>/*`; ignored once an AccessPolicy selects the workload"),
    Setting::value("PQMESH_INBOUND_MODE", "inbound-mode", DefaultValue::Value("STRICT"), "STRICT refuses anything but mesh mTLS; PERMISSIVE also forwards plaintext (migrations)"),
    Setting::value("PQMESH_INBOUND_PORTS", "inbound-ports", DefaultValue::Text("unset: every port"), "comma list: only these original destination ports are served (the injector sets the pod's container ports)"),
    Setting::value("PQMESH_INBOUND_APP_ADDR", "inbound-app-addr", DefaultValue::Text("unset: refused"), "explicit mode: where connections that were not redirected go"),
    Setting::value("PQMESH_OPAQUE_PORTS", "opaque-ports", DefaultValue::Value("25,587,3306,4444,5432,6379,9300,11211"), "app ports proxied as opaque TCP without protocol detection (server-first protocols)"),
    Setting::value("PQMESH_HTTP_RELAY_PORTS", "http-relay-ports", DefaultValue::Text("empty"), "HTTP/1.1 app ports whose app reads no identity header: relayed as bytes, not proxied per request, while the port's policy is identity-only (faster; see local-mode.md)"),
    Setting::value("PQMESH_OUTBOUND_ADDR", "outbound-addr", DefaultValue::Value("127.0.0.1:15001"), "outbound listener (iptables target); 127.0.0.1:P also listens on [::1]:P unless the namespace has no IPv6"),
    Setting::value("PQMESH_OUTBOUND_UNMESHED", "outbound-unmeshed", DefaultValue::Value("passthrough"), "destinations that are not meshed: passthrough (plaintext) or refuse"),
    Setting::value("PQMESH_OUTBOUND_PEER_ADDR", "outbound-peer-addr", DefaultValue::Text("unset: transparent mode"), "explicit mode: send every outbound connection to this peer sidecar"),
    Setting::value("PQMESH_OUTBOUND_PEER_ID", "outbound-peer-id", DefaultValue::Text("required with PQMESH_OUTBOUND_PEER_ADDR"), "explicit mode: the SPIFFE ID that peer must present"),
    Setting::value("PQMESH_WORKLOAD_LABELS", "workload-labels", DefaultValue::Text("empty"), "the workload's labels, `k=v,k2=v2` (AccessPolicy selectors match them)"),
    Setting::value("PQMESH_POD_NAME", "pod-name", DefaultValue::Text("`$HOSTNAME`"), "shown in the control plane's `/policy_status`"),
    Setting::value("PQMESH_ADMIN_ADDR", "admin-addr", DefaultValue::Value("127.0.0.1:15000"), "admin: `/live`, `/ready`, `/metrics`, `/logging`; from loopback only: `/config_dump`, `POST /logging`, `POST /shutdown`"),
    Setting::value("PQMESH_DRAIN_TIMEOUT", "drain-timeout", DefaultValue::Value("20s"), "on SIGTERM or `POST /shutdown`: how long accepted connections may finish after the listeners closed"),
    Setting::value("PQMESH_ACCESS_LOG", "access-log", DefaultValue::Value("false"), "one log line per HTTP request (target `pqmesh::access`: peer, method, path without query, status, decision, latency)"),
    Setting::value("PQMESH_WORKER_THREADS", "worker-threads", DefaultValue::Value("1"), "threads of the proxy, 1 to 256: 1 runs everything on one thread; N > 1 a multi-thread scheduler with N workers"),
    Setting::value("PQMESH_APP_PROBES", "app-probes", DefaultValue::Text("unset: none"), "set by the injector: the app's HTTP probes moved to the admin port (JSON)"),
];

/// Every table the sidecar reads.
pub const TABLES: &[&[Setting]] = &[SETTINGS, pqmesh_mtls::logging::SETTINGS];

/// `pqmesh-sidecar`: the proxy (settings below) or `init`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "pqmesh-sidecar",
    version,
    about = "pqmesh sidecar: hybrid post-quantum mTLS proxy for one workload, with token and access policies",
    args_conflicts_with_subcommands = true,
    after_help = "Without a subcommand it runs the proxy. Every setting is a flag or a PQMESH_* variable; a flag wins. Reference: docs/configuration.md"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Subcommand {
    Init(crate::init::InitArgs),
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Proxy(Box<Config>),
    Init(crate::init::InitConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Init(#[from] crate::init::InitError),
    /// `--help`, `--version` or a malformed command line: clap prints it (and exits 0 or 2).
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

pub fn command() -> clap::Command {
    Cli::command().args(TABLES.iter().flat_map(|t| t.iter()).map(Setting::arg))
}

/// Parses the command line (`args` without the program name) and the settings.
pub fn parse<I, T>(args: I, env: &dyn Env) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv =
        std::iter::once(OsString::from("pqmesh-sidecar")).chain(args.into_iter().map(Into::into));
    let matches = command().try_get_matches_from(argv)?;
    match Cli::from_arg_matches(&matches)?.command {
        Some(Subcommand::Init(a)) => Ok(Invocation::Init(crate::init::InitConfig::from_parsed(a)?)),
        None => {
            let settings = Settings::new(TABLES, env).with_flags(&matches);
            Ok(Invocation::Proxy(Box::new(Config::from_env(&settings)?)))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub control_plane_addr: String,
    pub control_plane_id: SpiffeId,
    pub trust_domain: String,
    /// PEM roots used to authenticate the control plane before this workload has a certificate.
    pub trust_bundle_path: PathBuf,
    pub token: TokenSource,
    pub key_alg: KeyAlgorithm,
    pub kx: KeyExchangePolicy,
    pub inbound_addr: SocketAddr,
    /// Where connections that were not redirected by iptables go (explicit mode). Unset: such
    /// connections are refused — in a pod, inbound traffic always arrives redirected.
    pub app_addr: Option<SocketAddr>,
    /// When set, only these original destination ports are served inbound (the pod's declared
    /// container ports); anything else is refused. Unset: every port.
    pub inbound_ports: Option<Vec<u16>>,
    /// Peers allowed to connect inbound. Empty = nobody (fail closed).
    pub inbound_allow: Vec<PeerPattern>,
    /// STRICT refuses plaintext inbound; PERMISSIVE forwards it (migrations).
    pub inbound_mode: InboundMode,
    /// App ports whose protocol is never sniffed (server-first protocols such as databases would
    /// otherwise wait for the detection timeout): proxied as opaque TCP at once.
    pub opaque_ports: Vec<u16>,
    /// HTTP/1.1 ports relayed as bytes while their policy is identity-only (`PQMESH_HTTP_RELAY_PORTS`).
    pub http_relay_ports: Vec<u16>,
    pub outbound: Outbound,
    pub admin_addr: SocketAddr,
    /// The workload's labels (AccessPolicy selectors match them). Local mode: from
    /// `PQMESH_WORKLOAD_LABELS`; the namespace always comes from the certificate.
    pub labels: BTreeMap<String, String>,
    pub pod_name: String,
    /// On SIGTERM or `POST /shutdown`: how long in-flight connections may finish after the
    /// listeners closed, before the rest are cut.
    pub drain_timeout: std::time::Duration,
    /// One log line per proxied HTTP request (peer identity, method, status, decision, latency).
    pub access_log: bool,
    /// `PQMESH_APP_PROBES`: the app's probes the injector moved to the admin port.
    pub app_probes: crate::app_probe::ProbeTable,
    /// `PQMESH_WORKER_THREADS` (see main.rs for why 1 is the default).
    pub worker_threads: usize,
    /// `PQMESH_LOG`, `PQMESH_LOG_FORMAT`: installed by the binary.
    pub logging: pqmesh_mtls::logging::Logging,
}

/// Default drain deadline: Kubernetes' default grace period is 30 s, so this leaves room.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Server-first protocols (SMTP, MySQL, Galera, PostgreSQL, Redis, Elasticsearch, memcached),
/// the same defaults as Linkerd's opaque ports.
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundMode {
    Strict,
    Permissive,
}

/// As the setting spells it (logs and status show this, not the Rust name).
impl std::fmt::Display for InboundMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InboundMode::Strict => "STRICT",
            InboundMode::Permissive => "PERMISSIVE",
        })
    }
}

impl std::str::FromStr for InboundMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "STRICT" => Ok(InboundMode::Strict),
            "PERMISSIVE" => Ok(InboundMode::Permissive),
            _ => Err("expected STRICT or PERMISSIVE".into()),
        }
    }
}

/// What happens to the app's outbound connections.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Transparent interception (iptables → 15001): the original destination decides, and the
    /// control plane says which identity serves it.
    Transparent {
        listen: SocketAddr,
        unmeshed: Unmeshed,
    },
    /// Everything to one configured peer sidecar (no iptables; loopback demos and tests).
    Explicit(OutboundTarget),
}

/// Outbound to a destination that is not part of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmeshed {
    Passthrough,
    Refuse,
}

impl std::str::FromStr for Unmeshed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "passthrough" => Ok(Unmeshed::Passthrough),
            "refuse" => Ok(Unmeshed::Refuse),
            _ => Err("expected passthrough or refuse".into()),
        }
    }
}

/// Explicit mode: the outbound listener forwards everything to one peer sidecar.
#[derive(Debug, Clone)]
pub struct OutboundTarget {
    pub listen: SocketAddr,
    pub peer_addr: String,
    pub peer_id: SpiffeId,
}

#[derive(Clone)]
pub enum TokenSource {
    /// Re-read on every Certify (projected tokens rotate on disk).
    File(PathBuf),
    Inline(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => write!(f, "File({})", p.display()),
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

impl TokenSource {
    pub fn read(&self) -> Result<String, String> {
        match self {
            TokenSource::Inline(t) => Ok(t.clone()),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("token file {}: {e}", p.display())),
        }
    }
}

/// What every mesh participant certifies with (the sidecar and the gateway read the same
/// settings): its trust domain, the SPIFFE ID the control plane must present, its credential.
#[derive(Debug, Clone)]
pub struct CertifySettings {
    pub trust_domain: String,
    pub control_plane_id: SpiffeId,
    pub token: TokenSource,
}

impl CertifySettings {
    /// `PQMESH_TRUST_DOMAIN`, `PQMESH_CONTROL_PLANE_ID` (default: the chart's control plane in
    /// that trust domain) and exactly one of `PQMESH_BOOTSTRAP_TOKEN_FILE` and
    /// `PQMESH_BOOTSTRAP_TOKEN` (never repeated in an error).
    pub fn from_env(env: &dyn Env) -> Result<Self, EnvError> {
        let trust_domain = env
            .var("PQMESH_TRUST_DOMAIN")
            .unwrap_or_else(|| "cluster.local".to_owned());
        let control_plane_id = match env.var("PQMESH_CONTROL_PLANE_ID") {
            Some(v) => v
                .parse()
                .map_err(|e| EnvError::new("PQMESH_CONTROL_PLANE_ID", &v, e))?,
            None => SpiffeId::new(&trust_domain, "pqmesh-system", "pqmesh-control-plane")
                .map_err(|e| EnvError::new("PQMESH_TRUST_DOMAIN", &trust_domain, e))?,
        };
        let token =
            match (
                env.var("PQMESH_BOOTSTRAP_TOKEN_FILE"),
                env.var("PQMESH_BOOTSTRAP_TOKEN"),
            ) {
                (Some(path), None) => TokenSource::File(PathBuf::from(path)),
                (None, Some(token)) => TokenSource::Inline(token),
                (Some(_), Some(_)) => return Err(EnvError::new(
                    "PQMESH_BOOTSTRAP_TOKEN",
                    "<redacted>",
                    "set either PQMESH_BOOTSTRAP_TOKEN or PQMESH_BOOTSTRAP_TOKEN_FILE, not both",
                )),
                (None, None) => {
                    return Err(EnvError::new(
                        "PQMESH_BOOTSTRAP_TOKEN_FILE",
                        "",
                        "is required (or PQMESH_BOOTSTRAP_TOKEN)",
                    ))
                }
            };
        Ok(CertifySettings {
            trust_domain,
            control_plane_id,
            token,
        })
    }
}

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, EnvError> {
        let CertifySettings {
            trust_domain,
            control_plane_id,
            token,
        } = CertifySettings::from_env(env)?;
        let inbound_allow = match env.var("PQMESH_INBOUND_ALLOW") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|p| {
                    PeerPattern::parse(p, &trust_domain)
                        .map_err(|e| EnvError::new("PQMESH_INBOUND_ALLOW", &v, e))
                })
                .collect::<Result<_, _>>()?,
        };
        let outbound_listen = env::parse_or(
            env,
            "PQMESH_OUTBOUND_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 15001)),
        )?;
        let outbound = match env.var("PQMESH_OUTBOUND_PEER_ADDR") {
            None => Outbound::Transparent {
                listen: outbound_listen,
                unmeshed: env::parse_or(env, "PQMESH_OUTBOUND_UNMESHED", Unmeshed::Passthrough)?,
            },
            Some(peer_addr) => {
                let id_text = env::required(env, "PQMESH_OUTBOUND_PEER_ID").map_err(|_| {
                    EnvError::new(
                        "PQMESH_OUTBOUND_PEER_ID",
                        "",
                        "is required when PQMESH_OUTBOUND_PEER_ADDR is set",
                    )
                })?;
                let peer_id = id_text
                    .parse()
                    .map_err(|e| EnvError::new("PQMESH_OUTBOUND_PEER_ID", &id_text, e))?;
                Outbound::Explicit(OutboundTarget {
                    listen: outbound_listen,
                    peer_addr,
                    peer_id,
                })
            }
        };
        Ok(Self {
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
            inbound_addr: env::parse_or(
                env,
                "PQMESH_INBOUND_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 15006)),
            )?,
            app_addr: env::parse_opt(env, "PQMESH_INBOUND_APP_ADDR")?,
            inbound_ports: env
                .var("PQMESH_INBOUND_PORTS")
                .map(|v| parse_ports("PQMESH_INBOUND_PORTS", &v))
                .transpose()?,
            inbound_allow,
            inbound_mode: env::parse_or(env, "PQMESH_INBOUND_MODE", InboundMode::Strict)?,
            opaque_ports: match env.var("PQMESH_OPAQUE_PORTS") {
                None => DEFAULT_OPAQUE_PORTS.to_vec(),
                Some(v) => parse_ports("PQMESH_OPAQUE_PORTS", &v)?,
            },
            http_relay_ports: env
                .var("PQMESH_HTTP_RELAY_PORTS")
                .map(|v| parse_ports("PQMESH_HTTP_RELAY_PORTS", &v))
                .transpose()?
                .unwrap_or_default(),
            outbound,
            admin_addr: env::parse_or(
                env,
                "PQMESH_ADMIN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 15000)),
            )?,
            labels: parse_labels(env)?,
            pod_name: env
                .var("PQMESH_POD_NAME")
                .or_else(|| env.var("HOSTNAME"))
                .unwrap_or_default(),
            app_probes: match env.var("PQMESH_APP_PROBES") {
                None => Default::default(),
                Some(v) => crate::app_probe::parse_table(&v)
                    .map_err(|e| EnvError::new("PQMESH_APP_PROBES", &v, e))?,
            },
            trust_domain,
            drain_timeout: env::duration_or(env, "PQMESH_DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT)?,
            access_log: env::parse_bool(env, "PQMESH_ACCESS_LOG", false)?,
            worker_threads: match env.var("PQMESH_WORKER_THREADS") {
                None => 1,
                Some(v) => env::worker_threads(&v)
                    .map_err(|e| EnvError::new("PQMESH_WORKER_THREADS", &v, e))?,
            },
            logging: pqmesh_mtls::logging::Logging::from_env(env)?,
        })
    }
}

impl Config {
    /// The setting that chose `addr` (or whose IPv6 twin it is), for a listen error that names
    /// what to change.
    pub fn setting_of_addr(&self, addr: SocketAddr) -> Option<&'static str> {
        let outbound = match &self.outbound {
            Outbound::Transparent { listen, .. } => *listen,
            Outbound::Explicit(t) => t.listen,
        };
        [
            ("PQMESH_INBOUND_ADDR", self.inbound_addr),
            ("PQMESH_OUTBOUND_ADDR", outbound),
            ("PQMESH_ADMIN_ADDR", self.admin_addr),
        ]
        .into_iter()
        .find(|(_, a)| *a == addr || crate::listen::ipv6_twin(*a) == Some(addr))
        .map(|(name, _)| name)
    }
}

fn parse_labels(env: &dyn Env) -> Result<BTreeMap<String, String>, EnvError> {
    let Some(v) = env.var("PQMESH_WORKLOAD_LABELS") else {
        return Ok(BTreeMap::new());
    };
    let mut labels = BTreeMap::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, val) = pair.split_once('=').ok_or_else(|| {
            EnvError::new(
                "PQMESH_WORKLOAD_LABELS",
                &v,
                format!("{pair:?} is not key=value"),
            )
        })?;
        let valid = |s: &str, max: usize| {
            s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        };
        if k.is_empty() || !valid(k, 317) || !valid(val, 63) {
            return Err(EnvError::new(
                "PQMESH_WORKLOAD_LABELS",
                &v,
                format!("{pair:?} is not a valid Kubernetes label"),
            ));
        }
        labels.insert(k.to_owned(), val.to_owned());
    }
    Ok(labels)
}

fn parse_ports(name: &str, v: &str) -> Result<Vec<u16>, EnvError> {
    pqmesh_mtls::env::ports(v).map_err(|e| EnvError::new(name, v, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("PQMESH_CONTROL_PLANE_ADDR", "127.0.0.1:15012"),
            ("PQMESH_TRUST_BUNDLE", "/b.pem"),
            ("PQMESH_BOOTSTRAP_TOKEN", "tok"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    #[test]
    fn defaults_follow_the_port_table() {
        let c = Config::from_env(&env(&[])).unwrap();
        assert_eq!(c.inbound_addr.port(), 15006);
        assert_eq!(c.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert!(matches!(
            c.outbound,
            Outbound::Transparent {
                unmeshed: Unmeshed::Passthrough,
                ..
            }
        ));
        assert_eq!(c.inbound_mode, InboundMode::Strict);
        assert!(
            c.inbound_allow.is_empty(),
            "no allow-list means nobody is allowed"
        );
        assert_eq!(c.kx, KeyExchangePolicy::HybridOnly);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("PQMESH_INBOUND_ALLOW", "spiffe://cluster.local/ns/a")],
                "PQMESH_INBOUND_ALLOW",
            ),
            (
                &[("PQMESH_OUTBOUND_PEER_ADDR", "127.0.0.1:1")],
                "PQMESH_OUTBOUND_PEER_ID",
            ),
            (
                &[
                    ("PQMESH_OUTBOUND_PEER_ADDR", "127.0.0.1:1"),
                    ("PQMESH_OUTBOUND_PEER_ID", "web"),
                ],
                "PQMESH_OUTBOUND_PEER_ID",
            ),
            (&[("PQMESH_KEY_ALG", "rsa-2048")], "PQMESH_KEY_ALG"),
            (&[("PQMESH_INBOUND_ADDR", "nope")], "PQMESH_INBOUND_ADDR"),
            (&[("PQMESH_BOOTSTRAP_TOKEN_FILE", "/t")], "not both"),
            (
                &[("PQMESH_INBOUND_MODE", "lenient")],
                "STRICT or PERMISSIVE",
            ),
            (
                &[("PQMESH_OUTBOUND_UNMESHED", "allow")],
                "passthrough or refuse",
            ),
            (&[("PQMESH_OPAQUE_PORTS", "5432,db")], "PQMESH_OPAQUE_PORTS"),
            (
                &[("PQMESH_INBOUND_PORTS", "8080,0")],
                "PQMESH_INBOUND_PORTS",
            ),
            (
                &[("PQMESH_INBOUND_APP_ADDR", "8080")],
                "PQMESH_INBOUND_APP_ADDR",
            ),
        ];
        for (pairs, want) in cases {
            let err = Config::from_env(&env(pairs)).unwrap_err().to_string();
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn token_is_never_printed() {
        let c =
            Config::from_env(&env(&[("PQMESH_BOOTSTRAP_TOKEN", "s3cr3t-token-value")])).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
