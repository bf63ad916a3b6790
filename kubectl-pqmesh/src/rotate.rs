//! `kubectl pqmesh rotate-root prepare|activate|finish`: the control plane's three rotation steps
//! (`pqmesh-control-plane rotate-root DIR ...`), applied to the CA Secret. The Secret's keys are
//! laid out as the local directory's CA files in a private temporary directory, the same step
//! function runs there (so the same order checks apply), and the result is written back with
//! `kubectl replace` at the resourceVersion it was read at. Every control-plane replica watches
//! the Secret and pushes the new CA.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use pqmesh_control_plane::ca::CaPaths;
use pqmesh_control_plane::kubernetes::ca_secret::{
    NEXT_CERT_KEY, PREVIOUS_CERT_KEY, ROOT_CERT_KEY, ROOT_KEY_KEY, TLS_KEY_KEY,
};
use pqmesh_control_plane::rotation;
use pqmesh_mtls::KeyAlgorithm;
use serde_json::{json, Value};

use crate::cli::{ClusterArgs, RotateRootArgs, RotateStep};
use crate::kubectl::Kubectl;
use crate::Outcome;

pub const NEXT_KEY_KEY: &str = "next-root-key.pem";

/// Secret key ↔ local CA file.
fn layout(paths: &CaPaths) -> [(&'static str, PathBuf, u32); 5] {
    [
        (ROOT_CERT_KEY, paths.root_cert.clone(), 0o644),
        (ROOT_KEY_KEY, paths.root_key.clone(), 0o600),
        (NEXT_CERT_KEY, paths.next_cert.clone(), 0o644),
        (NEXT_KEY_KEY, paths.next_key.clone(), 0o600),
        (PREVIOUS_CERT_KEY, paths.previous_cert.clone(), 0o644),
    ]
}

pub async fn run(cluster: &ClusterArgs, args: &RotateRootArgs) -> anyhow::Result<Outcome> {
    let kubectl = Kubectl::new(cluster);
    let ns = cluster.control_plane_namespace.as_str();
    let secret = kubectl
        .get_json(Some(ns), &["get", "secret", &args.ca_secret])
        .await
        .with_context(|| format!("reading Secret {ns}/{}", args.ca_secret))?;
    let (updated, message) = apply_step(&secret, args)?;
    kubectl.replace(Some(ns), &updated).await.with_context(|| {
        format!(
            "writing Secret {ns}/{} (if it changed meanwhile, run the step again)",
            args.ca_secret
        )
    })?;
    Ok(Outcome {
        text: format!(
            "{message}\nSecret {ns}/{} updated; the control plane pushes the new CA. Before the next step, wait until `kubectl pqmesh check` shows every sidecar on the current CA.\n",
            args.ca_secret
        ),
        exit: 0,
    })
}

/// The Secret after `args.step`, and what the step did. Nothing is written on error.
pub fn apply_step(secret: &Value, args: &RotateRootArgs) -> anyhow::Result<(Value, String)> {
    let data = secret["data"]
        .as_object()
        .ok_or_else(|| anyhow!("the Secret has no data"))?;
    if data.contains_key(TLS_KEY_KEY) && !data.contains_key(ROOT_KEY_KEY) {
        bail!("this is a user-provided CA Secret (tls.crt/tls.key): rotate it with its issuer (e.g. cert-manager), not with pqmesh");
    }
    let dir = private_dir()?;
    let paths = CaPaths::in_dir(dir.path());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.path().join("ca"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    for (key, path, mode) in layout(&paths) {
        if let Some(text) = data.get(key).and_then(Value::as_str) {
            let bytes = b64
                .decode(text)
                .with_context(|| format!("Secret key {key} is not base64"))?;
            pqmesh_control_plane::ca::write_atomic(&path, &bytes, mode)?;
        }
    }
    let message = match args.step {
        RotateStep::Prepare => {
            let alg: KeyAlgorithm = args
                .alg
                .parse()
                .map_err(|e| anyhow!("--alg {}: {e}", args.alg))?;
            rotation::prepare(dir.path(), &args.trust_domain, alg)?
        }
        RotateStep::Activate => rotation::activate(dir.path(), &args.trust_domain)?,
        RotateStep::Finish => rotation::finish(dir.path())?,
    };
    let mut new_data: BTreeMap<String, Value> = data
        .iter()
        .filter(|(k, _)| !layout(&paths).iter().any(|(key, _, _)| key == k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, path, _) in layout(&paths) {
        if path.exists() {
            new_data.insert(key.to_owned(), json!(b64.encode(std::fs::read(&path)?)));
        }
    }
    let mut updated = secret.clone();
    updated["data"] = json!(new_data);
    if let Some(meta) = updated["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    Ok((
        updated,
        message.replace(&dir.path().display().to_string(), "the Secret"),
    ))
}

/// A directory only this user can read, removed on drop (it briefly holds the root keys).
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn private_dir() -> anyhow::Result<PrivateDir> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let path = base.join(format!("kubectl-pqmesh-rotate-{:016x}", rand_u64()));
        if std::fs::DirBuilder::new().mode(0o700).create(&path).is_ok() {
            return Ok(PrivateDir(path));
        }
    }
    bail!(
        "cannot create a private temporary directory in {}",
        base.display()
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
