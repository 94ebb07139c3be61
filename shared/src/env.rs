//! Small helpers for reading typed configuration from environment variables.
//! Each binary owns its config struct; these only remove the parsing noise.

use std::str::FromStr;
use std::time::Duration;

/// An environment variable that is set but cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct EnvError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// The variable's value, or `None` when unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parse<T: FromStr>(name: &str, default: T) -> Result<T, EnvError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(value) => {
            value.trim().parse().map_err(|e: T::Err| EnvError { name: name.to_owned(), reason: e.to_string(), value })
        }
    }
}

/// A duration given in whole seconds.
pub fn secs(name: &str, default_secs: u64) -> Result<Duration, EnvError> {
    parse(name, default_secs).map(Duration::from_secs)
}

/// A duration given in milliseconds.
pub fn millis(name: &str, default_ms: u64) -> Result<Duration, EnvError> {
    parse(name, default_ms).map(Duration::from_millis)
}
