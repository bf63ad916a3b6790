//! Logging set-up shared by both binaries: `PQMESH_LOG` (an EnvFilter directive, default `info`),
//! JSON lines when `PQMESH_LOG_FORMAT=json`, colour only on a terminal, and the filter
//! replaceable at runtime (the admin servers' `/logging` endpoint).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use crate::env::{DefaultValue, Env, EnvError, Setting};

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

/// The logging settings both daemons share.
pub const SETTINGS: &[Setting] = &[
    Setting::value(
        "PQMESH_LOG",
        "log",
        DefaultValue::Value("info"),
        "log filter: a level (error, warn, info, debug, trace) or tracing EnvFilter directives such as `info,pqmesh_sidecar=debug`; changeable at runtime through the admin `/logging` endpoint",
    ),
    Setting::value(
        "PQMESH_LOG_FORMAT",
        "log-format",
        DefaultValue::Value("text"),
        "`text` (human-readable lines; colour only when stderr is a terminal and NO_COLOR is unset) or `json` (one JSON object per line, for `kubectl logs` and log collectors; the chart's default)",
    ),
];

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The filter directive and format from `PQMESH_LOG` / `PQMESH_LOG_FORMAT`; a bad value is an
/// error naming the variable (the daemon refuses to start rather than log in a surprising way).
pub fn settings(env: &dyn Env) -> Result<(EnvFilter, String, Format), EnvError> {
    let directive = env.var("PQMESH_LOG").unwrap_or_else(|| "info".to_owned());
    // EnvFilter reads a bare word as a target to trace; here it is nearly always a misspelt level.
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if let Some(word) = directive.split(',').map(str::trim).find(|d| {
        !d.is_empty() && !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
    }) {
        return Err(EnvError::new(
            "PQMESH_LOG",
            &directive,
            format!("not a log filter: {word:?} is not a level (off, error, warn, info, debug, trace); a target's level is written target=level"),
        ));
    }
    let filter = EnvFilter::try_new(&directive)
        .map_err(|e| EnvError::new("PQMESH_LOG", &directive, format!("not a log filter: {e}")))?;
    let format = match env.var("PQMESH_LOG_FORMAT") {
        None => Format::Text,
        Some(v) if v.eq_ignore_ascii_case("text") => Format::Text,
        Some(v) if v.eq_ignore_ascii_case("json") => Format::Json,
        Some(v) => {
            return Err(EnvError::new(
                "PQMESH_LOG_FORMAT",
                &v,
                "expected text or json",
            ))
        }
    };
    Ok((filter, directive, format))
}

/// Colour codes only for a person reading a terminal: `kubectl logs` and files get plain text.
fn ansi(stream_is_terminal: bool, no_color: Option<String>) -> bool {
    stream_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber from the process environment (once; later calls do
/// nothing). A bad `PQMESH_LOG` falls back to `info` with a warning on stderr.
pub fn init() {
    let env = crate::env::ProcessEnv;
    if let Err(e) = init_with(&env) {
        eprintln!("warning: {e}; logging at info level in text format");
        let _ = init_with(&std::collections::HashMap::new());
    }
}

/// The logging settings, checked; [`Logging::install`] applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    pub directive: String,
    pub format: Format,
}

impl Logging {
    pub fn from_env(env: &dyn Env) -> Result<Self, EnvError> {
        let (_, directive, format) = settings(env)?;
        Ok(Self { directive, format })
    }

    /// Installs the global subscriber (once; later calls do nothing).
    pub fn install(&self) {
        let env = std::collections::HashMap::from([
            ("PQMESH_LOG".to_owned(), self.directive.clone()),
            (
                "PQMESH_LOG_FORMAT".to_owned(),
                match self.format {
                    Format::Text => "text",
                    Format::Json => "json",
                }
                .to_owned(),
            ),
        ]);
        if let Err(e) = init_with(&env) {
            eprintln!("warning: {e}");
        }
    }
}

/// Installs the global subscriber from these settings (once; later calls do nothing).
pub fn init_with(env: &dyn Env) -> Result<(), EnvError> {
    let (filter, directive, format) = settings(env)?;
    let json = format == Format::Json;
    let colour = ansi(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok(),
    );
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
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(colour)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if installed.is_ok() {
        let _ = RUNTIME.set(Runtime {
            handle,
            current: Mutex::new(directive),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(ansi(true, None));
        assert!(ansi(true, Some(String::new())));
        assert!(!ansi(false, None));
        assert!(!ansi(true, Some("1".into())));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let env = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        let e = settings(&env("PQMESH_LOG_FORMAT", "yaml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PQMESH_LOG_FORMAT=\"yaml\": expected text or json"
        );
        let e = settings(&env("PQMESH_LOG", "info,=x=")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("PQMESH_LOG=\"info,=x=\": not a log filter"),
            "{e}"
        );
        let e = settings(&env("PQMESH_LOG", "info,degub")).unwrap_err();
        assert!(e.to_string().contains("\"degub\" is not a level"), "{e}");
        assert!(settings(&env("PQMESH_LOG", "warn,pqmesh_sidecar=debug")).is_ok());
        let (_, d, f) = settings(&env("PQMESH_LOG_FORMAT", "JSON")).unwrap();
        assert_eq!((d.as_str(), f), ("info", Format::Json));
    }
}
