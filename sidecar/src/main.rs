//! `pqmesh-sidecar`: the proxy (configured through flags or `PQMESH_*` variables), or
//! `pqmesh-sidecar init [...]`, the init container's iptables set-up. Parsing is in config.rs.

use std::process::ExitCode;

use pqmesh_mtls::env::ProcessEnv;
use pqmesh_sidecar::config::{self, CliError, Config, Invocation};
use pqmesh_sidecar::{init, StartError};

/// Exit codes: 1 for a failure while running, 2 for a bad command line or setting.
const FAILED: u8 = 1;
const USAGE: u8 = 2;

fn main() -> ExitCode {
    match config::parse(std::env::args_os().skip(1), &ProcessEnv) {
        // --help and --version also arrive here: clap prints them and exits 0.
        Err(CliError::Cli(e)) => e.exit(),
        Err(e) => fail(USAGE, &e.to_string()),
        Ok(Invocation::Init(c)) => match init::run(&c) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            // One line: it is what `kubectl describe pod` shows of a failed init container.
            Err(e) => fail(FAILED, &e.to_string()),
        },
        Ok(Invocation::Proxy(c)) => proxy(*c),
    }
}

/// One line on stderr (never anyhow's `{:?}`, which appends a backtrace under RUST_BACKTRACE).
fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("pqmesh-sidecar: error: {message}");
    ExitCode::from(code)
}

/// Worker threads of the proxy's runtime, `PQMESH_WORKER_THREADS` (default 1).
///
/// One thread (tokio's current-thread scheduler) is the default, as Linkerd's proxy defaults to
/// one core: a sidecar mostly waits, and with one thread every event is handled on the thread it
/// woke — no work stealing, no wake-ups of an idle second worker, no migrations between them
/// (docs/benchmarks.md has the before/after). A workload whose sidecar needs more than one core
/// sets N > 1: a multi-thread scheduler with N workers. Admin endpoints run on a thread of their
/// own either way, so a scrape never waits for the data plane.
fn proxy(config: Config) -> ExitCode {
    config.logging.install();
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    for warning in
        pqmesh_mtls::env::unknown_variables(names.iter().map(String::as_str), config::TABLES)
    {
        tracing::warn!("{warning}");
    }
    let runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return fail(FAILED, &format!("tokio runtime: {e}")),
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(FAILED, &message),
    }
}

async fn run(config: Config) -> Result<(), String> {
    pqmesh_mtls::provider::install_default();
    let running = match pqmesh_sidecar::start(config.clone()).await {
        Ok(r) => r,
        Err(StartError::Bind { addr, source }) if config.setting_of_addr(addr).is_some() => {
            let setting = config.setting_of_addr(addr).unwrap_or_default();
            return Err(pqmesh_mtls::env::listen_error(
                config::TABLES,
                setting,
                addr,
                &source,
            ));
        }
        Err(e) => return Err(format!("sidecar failed to start: {e}")),
    };
    tokio::select! {
        _ = pqmesh_mtls::logging::terminate_signal() => tracing::info!("signal received, shutting down"),
        _ = running.shutdown_requested() => tracing::info!("shutdown requested via admin API"),
    }
    running.shutdown().await;
    Ok(())
}
