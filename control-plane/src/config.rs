//! Control-plane configuration: `--local DIR` or `--kubernetes`, plus `PQMESH_*` variables,
//! parsed once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pqmesh_mtls::env::{self, Env, EnvError};
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("usage: pqmesh-control-plane --local DIR | --kubernetes ({0})")]
    Usage(String),
}

impl Config {
    pub fn from_args_and_env(args: &[String], env: &dyn Env) -> Result<Self, ConfigError> {
        let mut local_dir = None;
        let mut kubernetes = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--kubernetes" => kubernetes = true,
                "--local" => {
                    let dir = it
                        .next()
                        .ok_or_else(|| ConfigError::Usage("--local needs a directory".into()))?;
                    local_dir = Some(PathBuf::from(dir));
                }
                other => return Err(ConfigError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        match (
            local_dir.or_else(|| env.var("PQMESH_LOCAL_DIR").map(PathBuf::from)),
            kubernetes,
        ) {
            (Some(_), true) => Err(ConfigError::Usage(
                "--local and --kubernetes exclude each other".into(),
            )),
            (Some(dir), false) => Self::from_env(dir, env),
            (None, true) => {
                Self::with_mode(Mode::Kubernetes(KubernetesSettings::from_env(env)?), env)
            }
            (None, false) => Err(ConfigError::Usage(
                "pass --local DIR (or set PQMESH_LOCAL_DIR), or --kubernetes".into(),
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
        })
    }
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
        let c = Config::from_args_and_env(&["--local".into(), "/tmp/x".into()], &env(&[])).unwrap();
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
        let args = ["--local".to_owned(), "/tmp/x".to_owned()];
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
            let err =
                Config::from_args_and_env(&["--local".into(), "/d".into()], &env(&[(name, value)]))
                    .unwrap_err()
                    .to_string();
            assert!(
                err.contains(name) && err.contains(want),
                "{name}={value}: {err}"
            );
        }
        assert!(Config::from_args_and_env(&[], &env(&[])).is_err());
        let both = ["--local".into(), "/d".into(), "--kubernetes".into()];
        assert!(Config::from_args_and_env(&both, &env(&[])).is_err());
        let err = Config::from_args_and_env(&["--kubernetes".into()], &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("POD_NAMESPACE"), "{err}");
        assert!(Config::from_args_and_env(&["--bogus".into()], &env(&[])).is_err());
    }
}
