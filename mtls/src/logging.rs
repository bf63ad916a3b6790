//! Logging set-up shared by both binaries: `PQMESH_LOG` (an EnvFilter directive, default `info`),
//! JSON lines when `PQMESH_LOG_FORMAT=json`, and the filter replaceable at runtime (the admin
//! servers' `/logging` endpoint).

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

struct Runtime {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    #[error("log filter {directive:?} is invalid: {reason}")]
    Invalid { directive: String, reason: String },
    #[error("logging was not initialised by this process")]
    NotInitialised,
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let directive = std::env::var("PQMESH_LOG").unwrap_or_else(|_| "info".to_owned());
    let (filter, directive) = match EnvFilter::try_new(&directive) {
        Ok(f) => (f, directive),
        Err(e) => {
            eprintln!("PQMESH_LOG={directive:?} is invalid ({e}); using \"info\"");
            (EnvFilter::new("info"), "info".to_owned())
        }
    };
    let json = std::env::var("PQMESH_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    if installed.is_ok() {
        let _ = RUNTIME.set(Runtime {
            handle,
            current: Mutex::new(directive),
        });
    }
}

/// The filter in force, if `init` installed the subscriber.
pub fn current_filter() -> Option<String> {
    RUNTIME
        .get()
        .map(|r| r.current.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Replaces the filter (e.g. `debug`, `info,pqmesh_sidecar=trace`). A bad directive changes nothing.
pub fn set_filter(directive: &str) -> Result<(), LogLevelError> {
    let filter = EnvFilter::try_new(directive).map_err(|e| LogLevelError::Invalid {
        directive: directive.to_owned(),
        reason: e.to_string(),
    })?;
    let runtime = RUNTIME.get().ok_or(LogLevelError::NotInitialised)?;
    runtime
        .handle
        .reload(filter)
        .map_err(|e| LogLevelError::Invalid {
            directive: directive.to_owned(),
            reason: e.to_string(),
        })?;
    *runtime.current.lock().unwrap_or_else(|p| p.into_inner()) = directive.to_owned();
    tracing::warn!(filter = directive, "log filter changed at runtime");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
