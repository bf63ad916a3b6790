//! Configuration input for both binaries: a small trait over the environment so tests pass a
//! map instead of setting process variables, plus the value parsers with precise errors.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.is_empty())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: {reason}")]
pub struct EnvError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl EnvError {
    pub fn new(name: &str, value: &str, reason: impl Display) -> Self {
        Self {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Parses `name` with `FromStr`, or returns `default` when unset.
pub fn parse_or<T>(env: &dyn Env, name: &str, default: T) -> Result<T, EnvError>
where
    T: FromStr,
    T::Err: Display,
{
    match env.var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| EnvError::new(name, &v, e)),
    }
}

pub fn parse_opt<T>(env: &dyn Env, name: &str) -> Result<Option<T>, EnvError>
where
    T: FromStr,
    T::Err: Display,
{
    env.var(name)
        .map(|v| v.trim().parse().map_err(|e| EnvError::new(name, &v, e)))
        .transpose()
}

pub fn required(env: &dyn Env, name: &str) -> Result<String, EnvError> {
    env.var(name)
        .ok_or_else(|| EnvError::new(name, "", "is required"))
}

pub fn parse_bool(env: &dyn Env, name: &str, default: bool) -> Result<bool, EnvError> {
    match env.var(name) {
        None => Ok(default),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(EnvError::new(name, &v, "expected true or false")),
        },
    }
}

/// Durations like `90s`, `5m`, `1h`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "missing unit (ms, s, m or h)".to_owned())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a number followed by ms, s, m or h".to_owned())?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60).ok_or("too large")?,
        "h" => n.checked_mul(3600).ok_or("too large")?,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

pub fn duration_or(env: &dyn Env, name: &str, default: Duration) -> Result<Duration, EnvError> {
    match env.var(name) {
        None => Ok(default),
        Some(v) => parse_duration(&v).map_err(|e| EnvError::new(name, &v, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "m", "5d", "-5s", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_variable_and_value() {
        let env: HashMap<String, String> = [("PQMESH_X".to_owned(), "maybe".to_owned())].into();
        let err = parse_bool(&env, "PQMESH_X", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PQMESH_X=\"maybe\": expected true or false"
        );
    }
}
