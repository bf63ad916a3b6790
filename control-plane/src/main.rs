//! `pqmesh-control-plane --local DIR`: wires configuration, logging and the server.

use anyhow::Context;
use pqmesh_control_plane::config::Config;
use pqmesh_mtls::env::ProcessEnv;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pqmesh_mtls::logging::init();
    pqmesh_mtls::provider::install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("crds") {
        // The CustomResourceDefinitions, generated from the same types the control plane parses.
        print!("{}", pqmesh_policy::crd::crds_yaml());
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("rotate-root") {
        println!("{}", rotate_root(&args[1..])?);
        return Ok(());
    }
    let config = Config::from_args_and_env(&args, &ProcessEnv)?;
    let running = pqmesh_control_plane::start(config)
        .await
        .context("control plane failed to start")?;
    running
        .run_until(pqmesh_mtls::logging::terminate_signal())
        .await
        .context("gRPC server stopped")?;
    Ok(())
}

/// `rotate-root DIR prepare [--alg ALG] | activate | finish` (see docs/operations.md).
fn rotate_root(args: &[String]) -> anyhow::Result<String> {
    use pqmesh_control_plane::rotation;
    const USAGE: &str =
        "usage: pqmesh-control-plane rotate-root DIR (prepare [--alg ecdsa-p256|ml-dsa-44|ml-dsa-65] | activate | finish)";
    let trust_domain =
        std::env::var("PQMESH_TRUST_DOMAIN").unwrap_or_else(|_| "cluster.local".to_owned());
    let (dir, step) = match args {
        [dir, step, ..] => (std::path::Path::new(dir), step.as_str()),
        _ => anyhow::bail!(USAGE),
    };
    let message = match (step, &args[2..]) {
        ("prepare", []) => rotation::prepare(dir, &trust_domain, Default::default())?,
        ("prepare", [flag, alg]) if flag == "--alg" => {
            let alg = alg
                .parse()
                .map_err(|e| anyhow::anyhow!("--alg {alg:?}: {e}"))?;
            rotation::prepare(dir, &trust_domain, alg)?
        }
        ("activate", []) => rotation::activate(dir, &trust_domain)?,
        ("finish", []) => rotation::finish(dir)?,
        _ => anyhow::bail!(USAGE),
    };
    Ok(message)
}
