//! `pqmesh-sidecar`: the proxy (configured through `PQMESH_*` variables), or
//! `pqmesh-sidecar init [...]`, the init container's iptables set-up.

use anyhow::Context;
use pqmesh_mtls::env::ProcessEnv;
use pqmesh_sidecar::config::Config;
use pqmesh_sidecar::init;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pqmesh_mtls::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => {
            let config = init::InitConfig::from_args(&args[1..])?;
            print!("{}", init::run(&config)?);
            return Ok(());
        }
        Some(other) => anyhow::bail!(
            "unknown argument {other:?}: run `pqmesh-sidecar` (configured through PQMESH_* variables, see README.md) or `pqmesh-sidecar init --help`"
        ),
        None => {}
    }
    pqmesh_mtls::provider::install_default();
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
