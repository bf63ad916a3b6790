//! `pqmesh-sidecar`: the proxy (configured through `PQMESH_*` variables), or
//! `pqmesh-sidecar init [...]`, the init container's iptables set-up.

use anyhow::Context;
use pqmesh_mtls::env::ProcessEnv;
use pqmesh_sidecar::config::Config;
use pqmesh_sidecar::init;

/// Worker threads of the proxy's runtime, from `PQMESH_WORKER_THREADS` (default 1).
///
/// One thread (tokio's current-thread scheduler) is the default, as Linkerd's proxy defaults to
/// one core: a sidecar mostly waits, and with one thread every event is handled on the thread it
/// woke — no work stealing, no wake-ups of an idle second worker, no migrations between them
/// (docs/benchmarks.md has the before/after). A workload whose sidecar needs more than one core
/// sets N > 1: a multi-thread scheduler with N workers. Admin endpoints run on a thread of their
/// own either way, so a scrape never waits for the data plane.
fn worker_threads(value: Option<&str>) -> anyhow::Result<usize> {
    match value {
        None => Ok(1),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=256).contains(&n) => Ok(n),
            _ => {
                anyhow::bail!("PQMESH_WORKER_THREADS={v:?}: expected a whole number from 1 to 256")
            }
        },
    }
}

fn main() -> anyhow::Result<()> {
    let threads = worker_threads(std::env::var("PQMESH_WORKER_THREADS").ok().as_deref())?;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    pqmesh_mtls::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => {
            match init::InitConfig::from_args(&args[1..]).and_then(|c| init::run(&c)) {
                Ok(text) => print!("{text}"),
                // One line (no error chain): it is what `kubectl describe pod` shows of a
                // failed init container.
                Err(e) => {
                    eprintln!("Error: {e}");
                    std::process::exit(1);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn worker_threads_default_to_one_and_refuse_nonsense() {
        assert_eq!(worker_threads(None).unwrap(), 1);
        assert_eq!(worker_threads(Some("4")).unwrap(), 4);
        assert_eq!(worker_threads(Some(" 2 ")).unwrap(), 2);
        for bad in ["0", "-1", "two", "", "257", "1.5"] {
            let e = worker_threads(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("PQMESH_WORKER_THREADS"), "{bad:?}: {e}");
        }
    }
}
