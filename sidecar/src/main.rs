//! `pqmesh-sidecar`: wires configuration, logging and the proxy; exits on SIGTERM/SIGINT or
//! an admin `POST /shutdown`.

use anyhow::Context;
use pqmesh_mtls::env::ProcessEnv;
use pqmesh_sidecar::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pqmesh_mtls::logging::init();
    pqmesh_mtls::provider::install_default();
    if let Some(arg) = std::env::args().nth(1) {
        anyhow::bail!("unknown argument {arg:?}: pqmesh-sidecar is configured through PQMESH_* variables (see README.md)");
    }
    let config = Config::from_env(&ProcessEnv)?;
    let running = pqmesh_sidecar::start(config)
        .await
        .context("sidecar failed to start")?;
    tokio::select! {
        _ = pqmesh_mtls::logging::terminate_signal() => tracing::info!("signal received, shutting down"),
        _ = running.shutdown_requested() => tracing::info!("shutdown requested via admin API"),
    }
    running.shutdown().await;
    Ok(())
}
