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

/// The variable's value, or `None` when unset or empty. When `NAME` is
/// unset and `NAME_FILE` names a file (Docker and Kubernetes secrets), the
/// file's contents, without the trailing newline.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).or_else(|| {
        let path = std::env::var_os(format!("{name}_FILE"))?;
        match std::fs::read_to_string(&path) {
            Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_owned()).filter(|v| !v.trim().is_empty()),
            Err(e) => {
                // The path is not secret; the contents never appear here.
                tracing::error!(variable = %format!("{name}_FILE"), path = ?path, error = %e, "cannot read the file");
                None
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s3cr3t\n").unwrap();
        // SAFETY: this test alone uses these variable names.
        unsafe {
            std::env::set_var("TAYORI_TEST_SECRET_FILE", &f);
            std::env::set_var("TAYORI_TEST_DIRECT", "direct");
            std::env::set_var("TAYORI_TEST_DIRECT_FILE", &f);
        }
        assert_eq!(var("TAYORI_TEST_SECRET").as_deref(), Some("s3cr3t"));
        assert_eq!(var("TAYORI_TEST_DIRECT").as_deref(), Some("direct"), "the variable itself wins");
        assert_eq!(var("TAYORI_TEST_UNSET"), None);
    }
}
