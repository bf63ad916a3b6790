//! `pqmesh-gateway`: the edge gateway (settings in config.rs, wiring in lib.rs).

use std::process::ExitCode;

use pqmesh_gateway::config::{self, CliError};
use pqmesh_mtls::env::ProcessEnv;

fn main() -> ExitCode {
    let config = match config::parse(std::env::args_os().skip(1), &ProcessEnv) {
        Ok(c) => c,
        Err(CliError::Cli(e)) => e.exit(),
        Err(e) => return fail(2, &e.to_string()),
    };
    config.logging.install();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("tokio runtime: {e}")),
    };
    runtime.block_on(async {
        pqmesh_mtls::provider::install_default();
        let running = match pqmesh_gateway::start(config).await {
            Ok(r) => r,
            Err(e) => return fail(1, &e.to_string()),
        };
        let _ = tokio::signal::ctrl_c().await;
        drop(running);
        ExitCode::SUCCESS
    })
}

/// One line on stderr, like the other daemons.
fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("pqmesh-gateway: error: {message}");
    ExitCode::from(code)
}
