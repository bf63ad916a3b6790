//! `kubectl-pqmesh`: the kubectl plugin for pqmesh (`kubectl pqmesh check|identity|policy|inject|rotate-root|analyze`).
#![forbid(unsafe_code)]

mod admin;
mod analyze;
mod check;
mod cli;
mod identity;
mod inject;
mod kubectl;
mod policy;
mod prom;
mod render;
mod replica;
mod rotate;
mod target;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// What a command prints on standard output, and its exit code.
pub struct Outcome {
    pub text: String,
    pub exit: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match &cli.command {
        Command::Check(_) => "check",
        Command::Identity(_) => "identity",
        Command::Policy(_) => "policy",
        Command::Inject(_) => "inject",
        Command::RotateRoot(_) => "rotate-root",
        Command::Analyze(_) => "analyze",
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: kubectl pqmesh {name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Check(args) => check::run(&cli.cluster, args).await,
            Command::Identity(args) => identity::run(&cli.cluster, args).await,
            Command::Policy(args) => policy::run(&cli.cluster, args).await,
            Command::Inject(args) => inject::run(&cli.cluster, args).await,
            Command::RotateRoot(args) => rotate::run(&cli.cluster, args).await,
            Command::Analyze(args) => analyze::run(&cli.cluster, args).await,
        }
    });
    match result {
        Ok(outcome) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = stdout.write_all(outcome.text.as_bytes());
            let _ = stdout.flush();
            ExitCode::from(outcome.exit)
        }
        Err(e) => {
            eprintln!("error: kubectl pqmesh {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
