//! Control-plane configuration: `--local DIR` plus `PQMESH_*` variables, parsed once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pqmesh_mtls::env::{self, Env, EnvError};
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy, SpiffeId};

use crate::ca::{MAX_LEAF_LIFETIME, MIN_LEAF_LIFETIME};

#[derive(Debug, Clone)]
pub struct Config {
    /// Local mode: CA material, bootstrap tokens and policies live here.
    pub local_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
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
    #[error("usage: pqmesh-control-plane --local DIR ({0})")]
    Usage(String),
}

impl Config {
    pub fn from_args_and_env(args: &[String], env: &dyn Env) -> Result<Self, ConfigError> {
        let mut local_dir = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--local" => {
                    let dir = it
                        .next()
                        .ok_or_else(|| ConfigError::Usage("--local needs a directory".into()))?;
                    local_dir = Some(PathBuf::from(dir));
                }
                other => return Err(ConfigError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        let local_dir = match local_dir.or_else(|| env.var("PQMESH_LOCAL_DIR").map(PathBuf::from)) {
            Some(d) => d,
            None => {
                return Err(ConfigError::Usage(
                    "local mode is the only mode in this build; pass --local DIR or set PQMESH_LOCAL_DIR".into(),
                ))
            }
        };
        Self::from_env(local_dir, env)
    }

    pub fn from_env(local_dir: PathBuf, env: &dyn Env) -> Result<Self, ConfigError> {
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
        Ok(Self {
            local_dir,
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
        assert_eq!(c.admin_addr.port(), 15014);
        assert_eq!(c.leaf_lifetime, Duration::from_secs(3600));
        assert_eq!(c.kx, KeyExchangePolicy::HybridOnly);
        assert_eq!(
            c.identity.to_string(),
            "spiffe://cluster.local/ns/pqmesh-system/sa/pqmesh-control-plane"
        );
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
        assert!(Config::from_args_and_env(&["--bogus".into()], &env(&[])).is_err());
    }
}
