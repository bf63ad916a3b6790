//! `pqmesh-control-plane`: parses the command line and settings (config.rs), then serves
//! (`--local DIR` / `--kubernetes`) or runs a subcommand (`crds`, `rotate-root`, `validate`).

use std::process::ExitCode;

use anyhow::Context;
use pqmesh_control_plane::config::{self, ConfigError, Invocation, RotateStep};
use pqmesh_control_plane::StartError;
use pqmesh_mtls::env::ProcessEnv;

/// Exit codes: 1 for a failure while running, 2 for a bad command line or setting.
const FAILED: u8 = 1;
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let invocation = match config::parse(std::env::args_os().skip(1), &ProcessEnv) {
        Ok(i) => i,
        // --help and --version also arrive here: clap prints them and exits 0.
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => return fail(USAGE, &anyhow::Error::new(e)),
    };
    let result = match invocation {
        Invocation::Crds => {
            // The CustomResourceDefinitions, generated from the types the control plane parses.
            print!("{}", pqmesh_policy::crd::crds_yaml());
            Ok(())
        }
        Invocation::RotateRoot {
            dir,
            step,
            trust_domain,
        } => rotate_root(&dir, step, &trust_domain).map(|m| println!("{m}")),
        Invocation::Validate {
            files,
            trust_domain,
        } => {
            let report = pqmesh_control_plane::validate::files(&files, &trust_domain);
            print!("{}", report.text);
            return if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FAILED)
            };
        }
        Invocation::Serve(config) => return serve(*config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(FAILED, &e),
    }
}

/// One line, the error chain joined by `: ` (`{:#}`); never anyhow's `{:?}`, which appends a
/// backtrace when RUST_BACKTRACE is set.
fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("pqmesh-control-plane: error: {error:#}");
    ExitCode::from(code)
}

fn serve(config: config::Config) -> ExitCode {
    config.logging.install();
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    for warning in
        pqmesh_mtls::env::unknown_variables(names.iter().map(String::as_str), config::TABLES)
    {
        tracing::warn!("{warning}");
    }
    pqmesh_mtls::provider::install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(FAILED, &anyhow::Error::new(e).context("tokio runtime")),
    };
    let result = runtime.block_on(async {
        let running = match pqmesh_control_plane::start(config.clone()).await {
            Ok(r) => r,
            Err(e) => return Err(start_error(&config, e)),
        };
        running
            .run_until(pqmesh_mtls::logging::terminate_signal())
            .await
            .context("gRPC server stopped")
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(FAILED, &e),
    }
}

/// A listen error names the setting that chose the address; the rest keep their message.
fn start_error(config: &config::Config, e: StartError) -> anyhow::Error {
    let (addr, source) = match &e {
        StartError::Bind { addr, source } => (*addr, source),
        StartError::Webhook(pqmesh_control_plane::inject::SpawnError::Bind { addr, source }) => {
            (*addr, source)
        }
        _ => return anyhow::Error::new(e).context("control plane failed to start"),
    };
    match config.setting_of_addr(addr) {
        Some(setting) => anyhow::anyhow!(config::listen_error(setting, addr, source)),
        None => anyhow::Error::new(e).context("control plane failed to start"),
    }
}

/// `rotate-root DIR prepare [--alg ALG] | activate | finish` (see docs/operations.md).
fn rotate_root(
    dir: &std::path::Path,
    step: RotateStep,
    trust_domain: &str,
) -> anyhow::Result<String> {
    use pqmesh_control_plane::rotation;
    Ok(match step {
        RotateStep::Prepare { alg } => {
            let alg = alg
                .parse()
                .map_err(|e| anyhow::anyhow!("--alg {alg:?}: {e}"))?;
            rotation::prepare(dir, trust_domain, alg)?
        }
        RotateStep::Activate => rotation::activate(dir, trust_domain)?,
        RotateStep::Finish => rotation::finish(dir)?,
    })
}
