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
        Some(v) => bool_value(&v).map_err(|e| EnvError::new(name, &v, e)),
    }
}

/// `true`/`false` (also 1/0, yes/no, on/off), as every boolean setting reads them.
pub fn bool_value(v: &str) -> Result<bool, &'static str> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false"),
    }
}

/// The sidecar's `PQMESH_WORKER_THREADS`: 1 to 256 (the injector checks annotations with it).
pub fn worker_threads(v: &str) -> Result<usize, &'static str> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err("expected a whole number from 1 to 256"),
    }
}

/// A comma list of TCP ports (`PQMESH_OPAQUE_PORTS`, `PQMESH_HTTP_RELAY_PORTS`; the injector
/// checks annotations with it). Empty items are skipped; 0 is not a port.
pub fn ports(v: &str) -> Result<Vec<u16>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| format!("{p:?} is not a TCP port"))
        })
        .collect()
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

/// The default of a [`Setting`], as help and docs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// This literal value: what the daemon uses when the setting is unset.
    Value(&'static str),
    /// Computed or special (`required`, `unset: ...`, `from PQMESH_TRUST_DOMAIN`): described only.
    Text(&'static str),
}

/// One setting of a daemon: its environment variable, the equivalent command-line flag, its
/// default and what it means. Each daemon has one table of these; `--help`, the unknown-variable
/// warning and docs/configuration.md are generated from it, and the parsers read values through
/// [`Settings`], which supplies the table's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub env: &'static str,
    /// Long flag without the dashes (`admin-addr`).
    pub flag: &'static str,
    pub default: DefaultValue,
    /// One sentence; shown in `--help` and the docs.
    pub help: &'static str,
    /// A flag that takes no value (`--init`); its variable accepts true/false.
    pub switch: bool,
}

impl Setting {
    pub const fn value(
        env: &'static str,
        flag: &'static str,
        default: DefaultValue,
        help: &'static str,
    ) -> Self {
        Self {
            env,
            flag,
            default,
            help,
            switch: false,
        }
    }

    pub const fn switch(env: &'static str, flag: &'static str, help: &'static str) -> Self {
        Self {
            env,
            flag,
            default: DefaultValue::Value("false"),
            help,
            switch: true,
        }
    }

    /// The clap argument: `--flag VALUE`, `[env: NAME]` and the default in `--help`. Values of
    /// the variable are never shown (a bootstrap token is one).
    pub fn arg(&self) -> clap::Arg {
        let arg = clap::Arg::new(self.env)
            .long(self.flag)
            .env(self.env)
            .hide_env_values(true)
            .help(self.help)
            .help_heading("Settings (flag or environment variable)");
        if self.switch {
            return arg.action(clap::ArgAction::SetTrue);
        }
        let arg = arg.value_name("VALUE").action(clap::ArgAction::Set);
        match self.default {
            DefaultValue::Value("") => arg,
            DefaultValue::Value(v) => arg.default_value(v),
            DefaultValue::Text(t) => arg.long_help(format!("{} [default: {t}]", self.help)),
        }
    }
}

/// Settings as a daemon reads them: a flag given on the command line wins over the variable,
/// and an unset setting takes the table's default. Wraps any [`Env`], so tests still pass a map.
pub struct Settings<'a> {
    table: &'a [&'a [Setting]],
    flags: HashMap<String, String>,
    env: &'a dyn Env,
}

impl<'a> Settings<'a> {
    pub fn new(table: &'a [&'a [Setting]], env: &'a dyn Env) -> Self {
        Self {
            table,
            flags: HashMap::new(),
            env,
        }
    }

    /// Takes the values given as flags (only those: clap's own reading of the environment and
    /// defaults is for `--help`; the environment is read through `env`).
    pub fn with_flags(mut self, matches: &clap::ArgMatches) -> Self {
        for setting in self.table.iter().flat_map(|t| t.iter()) {
            // A subcommand's matches hold only its own settings (value_source panics on others).
            if !matches.ids().any(|id| id.as_str() == setting.env) {
                continue;
            }
            if matches.value_source(setting.env) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let value = if setting.switch {
                matches.get_flag(setting.env).to_string()
            } else {
                match matches.get_one::<String>(setting.env) {
                    Some(v) => v.clone(),
                    None => continue,
                }
            };
            self.flags.insert(setting.env.to_owned(), value);
        }
        self
    }

    fn setting(&self, name: &str) -> Option<&Setting> {
        self.table
            .iter()
            .flat_map(|t| t.iter())
            .find(|s| s.env == name)
    }
}

impl Env for Settings<'_> {
    fn var(&self, name: &str) -> Option<String> {
        if let Some(v) = self.flags.get(name).filter(|v| !v.is_empty()) {
            return Some(v.clone());
        }
        self.env
            .var(name)
            .or_else(|| match self.setting(name)?.default {
                DefaultValue::Value(v) if !v.is_empty() => Some(v.to_owned()),
                _ => None,
            })
    }
}

/// A listen error as one line naming the setting: `PQMESH_ADMIN_ADDR=0.0.0.0:15014: address
/// in use (...)`.
pub fn listen_error(
    table: &[&[Setting]],
    setting: &str,
    addr: std::net::SocketAddr,
    error: &std::io::Error,
) -> String {
    let flag = table
        .iter()
        .flat_map(|t| t.iter())
        .find(|s| s.env == setting)
        .map(|s| format!(" or --{}", s.flag))
        .unwrap_or_default();
    match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{setting}={addr}: address in use (another process listens there; choose another address with {setting}{flag})"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{setting}={addr}: address not available on this host (set {setting}{flag} to one of its addresses)"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "{setting}={addr}: permission denied (ports below 1024 need privileges; set {setting}{flag})"
        ),
        _ => format!("{setting}={addr}: cannot listen: {error}"),
    }
}

/// One warning per `PQMESH_*` variable in `names` that no table knows, with the closest known
/// name when one is near (a typo is otherwise silently ignored).
pub fn unknown_variables<'n>(
    names: impl IntoIterator<Item = &'n str>,
    table: &[&[Setting]],
) -> Vec<String> {
    let known: Vec<&str> = table.iter().flat_map(|t| t.iter()).map(|s| s.env).collect();
    names
        .into_iter()
        .filter(|n| n.starts_with("PQMESH_") && !known.contains(n))
        .map(|n| match closest(n, &known) {
            Some(near) => format!(
                "{n} is not a setting of this program and is ignored (did you mean {near}?)"
            ),
            None => format!("{n} is not a setting of this program and is ignored"),
        })
        .collect()
}

/// The candidate nearest to `name` by edit distance, if it is near enough to be a typo.
pub fn closest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    // The shared prefix says nothing about similarity: compare what follows it.
    let strip = |n: &'c str| n.strip_prefix("PQMESH_").unwrap_or(n);
    let name = name.strip_prefix("PQMESH_").unwrap_or(name);
    let limit = (name.len() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(name, strip(c)), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (short strings: names, kinds).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The Markdown table of docs/configuration.md for one table of settings.
pub fn markdown_table(settings: &[Setting]) -> String {
    let mut out = String::from("| Variable | Flag | Default | Meaning |\n|---|---|---|---|\n");
    for s in settings {
        let default = match s.default {
            DefaultValue::Value("") => "unset".to_owned(),
            DefaultValue::Value(v) => format!("`{v}`"),
            DefaultValue::Text(t) => t.to_owned(),
        };
        let flag = if s.switch {
            format!("`--{}`", s.flag)
        } else {
            format!("`--{} VALUE`", s.flag)
        };
        out.push_str(&format!(
            "| `{}` | {flag} | {default} | {} |\n",
            s.env,
            s.help.replace('|', "\\|")
        ));
    }
    out
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

    const TABLE: &[Setting] = &[
        Setting::value(
            "PQMESH_ACCESS_LOG",
            "access-log",
            DefaultValue::Value("false"),
            "x",
        ),
        Setting::value(
            "PQMESH_ADMIN_ADDR",
            "admin-addr",
            DefaultValue::Value("a"),
            "x",
        ),
        Setting::value("PQMESH_TOKEN", "token", DefaultValue::Text("required"), "x"),
        Setting::switch("PQMESH_LOCAL_INIT", "init", "x"),
    ];

    #[test]
    fn unknown_variables_name_the_closest_setting() {
        let names = [
            "PQMESH_ACCES_LOG",
            "PQMESH_ADMIN_ADDR",
            "PQMESH_NODE24",
            "HOME",
            "PQMESH_ADMINADDR",
        ];
        let warnings = unknown_variables(names, &[TABLE]);
        assert_eq!(
            warnings,
            [
                "PQMESH_ACCES_LOG is not a setting of this program and is ignored (did you mean PQMESH_ACCESS_LOG?)",
                "PQMESH_NODE24 is not a setting of this program and is ignored",
                "PQMESH_ADMINADDR is not a setting of this program and is ignored (did you mean PQMESH_ADMIN_ADDR?)",
            ]
        );
    }

    #[test]
    fn flags_win_over_variables_and_defaults_fill_the_rest() {
        let cmd = clap::Command::new("t").args(TABLE.iter().map(Setting::arg));
        let matches = cmd
            .try_get_matches_from(["t", "--admin-addr", "flag", "--init"])
            .unwrap();
        let env: HashMap<String, String> = [
            ("PQMESH_ADMIN_ADDR".to_owned(), "env".to_owned()),
            ("PQMESH_ACCESS_LOG".to_owned(), "true".to_owned()),
        ]
        .into();
        let settings = Settings::new(&[TABLE], &env).with_flags(&matches);
        assert_eq!(settings.var("PQMESH_ADMIN_ADDR").as_deref(), Some("flag"));
        assert_eq!(settings.var("PQMESH_ACCESS_LOG").as_deref(), Some("true"));
        assert_eq!(settings.var("PQMESH_LOCAL_INIT").as_deref(), Some("true"));
        assert_eq!(
            settings.var("PQMESH_TOKEN"),
            None,
            "a described default is not a value"
        );
        let empty: HashMap<String, String> = HashMap::new();
        let matches = clap::Command::new("t")
            .args(TABLE.iter().map(Setting::arg))
            .try_get_matches_from(["t"])
            .unwrap();
        let settings = Settings::new(&[TABLE], &empty).with_flags(&matches);
        assert_eq!(settings.var("PQMESH_ADMIN_ADDR").as_deref(), Some("a"));
        assert_eq!(settings.var("PQMESH_LOCAL_INIT").as_deref(), Some("false"));
    }
}
