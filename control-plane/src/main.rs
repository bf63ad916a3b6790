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
    let config = Config::from_args_and_env(&args, &ProcessEnv)?;
    let running = pqmesh_control_plane::start(config)
        .await
        .context("control plane failed to start")?;
    tokio::select! {
        result = running.wait() => result.context("gRPC server stopped")?,
        _ = pqmesh_mtls::logging::terminate_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}
