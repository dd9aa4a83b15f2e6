//! The environment as a source of settings: typed readers that name the variable in their
//! errors, a count of what was read, and the rule for secrets.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is set but its value does not parse or is out of range.
    #[error("invalid value for {var}: {value:?} ({reason})")]
    Invalid {
        /// The environment variable's name.
        var: &'static str,
        /// The offending value (never a secret: secrets are not echoed).
        value: String,
        /// What was expected.
        reason: String,
    },
}

/// A source of configuration variables: the process environment, or a map in tests. It
/// counts how often each variable is asked for (clones share the count), so a test can hold
/// the settings to reading every variable in one place.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    reads: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
            reads: Default::default(),
        }
    }

    /// Builds a source from explicit pairs (tests, embedding).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            reads: Default::default(),
        }
    }

    /// Every variable asked for so far, with how many times.
    pub fn reads(&self) -> BTreeMap<String, usize> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The raw value of `var`; an empty string counts as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        *self
            .reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(var.to_string())
            .or_default() += 1;
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The value of `var` as a string, or `default`.
    pub fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).trim().to_string()
    }

    /// Parses `var` with `FromStr`, or returns `default` when unset.
    pub fn parse<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        Ok(self.optional(var)?.unwrap_or(default))
    }

    /// Parses `var` with `FromStr` when it is set.
    pub fn optional<T>(&self, var: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(var) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError::Invalid {
                    var,
                    value: raw.to_string(),
                    reason: e.to_string(),
                }),
        }
    }

    /// Parses `var` when it is set; it must then lie within `range`.
    pub fn optional_ranged<T>(
        &self,
        var: &'static str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        match self.optional(var)? {
            Some(v) if !range.contains(&v) => Err(ConfigError::Invalid {
                var,
                value: v.to_string(),
                reason: format!("expected {}..={}", range.start(), range.end()),
            }),
            v => Ok(v),
        }
    }

    /// Parses a number of seconds (integer or fraction) into a duration.
    pub fn seconds(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => {
                let secs: f64 = raw.trim().parse().map_err(|_| ConfigError::Invalid {
                    var,
                    value: raw.to_string(),
                    reason: "expected a number of seconds".into(),
                })?;
                if !secs.is_finite() || secs < 0.0 {
                    return Err(ConfigError::Invalid {
                        var,
                        value: raw.to_string(),
                        reason: "expected a non-negative number of seconds".into(),
                    });
                }
                Ok(Duration::from_secs_f64(secs))
            }
        }
    }

    /// Parses a boolean (`true/false/1/0/yes/no/on/off`).
    pub fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    var,
                    value: v,
                    reason: "expected true or false".into(),
                }),
            },
        }
    }

    /// Parses a non-negative integer that must lie within `range`.
    pub fn ranged<T>(
        &self,
        var: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        Ok(self.optional_ranged(var, range)?.unwrap_or(default))
    }
}

/// Whether guessable secrets are refused (`ALLOW_WEAK_SECRETS`, read once).
#[derive(Debug, Clone, Copy, Default)]
pub struct SecretPolicy {
    /// `ALLOW_WEAK_SECRETS=true`: weak secrets pass (local development).
    pub allow_weak: bool,
}

impl SecretPolicy {
    /// Reads `ALLOW_WEAK_SECRETS`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            allow_weak: env.boolean("ALLOW_WEAK_SECRETS", false)?,
        })
    }

    /// Refuses a guessable secret: shorter than `min_bytes`, or made of fewer than 8
    /// distinct bytes (`aaaa...`, `abababab...`), unless weak secrets are allowed. The message
    /// names the variable, never the value.
    pub fn require_strong(
        self,
        var: &'static str,
        secret: &[u8],
        min_bytes: usize,
    ) -> Result<(), ConfigError> {
        let distinct = {
            let mut seen = [false; 256];
            secret.iter().for_each(|b| seen[*b as usize] = true);
            seen.iter().filter(|s| **s).count()
        };
        let weakness = if secret.len() < min_bytes {
            format!("is weak: shorter than {min_bytes} bytes")
        } else if distinct < 8 {
            "is weak: fewer than 8 distinct characters".to_string()
        } else {
            return Ok(());
        };
        if self.allow_weak {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            var,
            value: "<hidden>".into(),
            reason: format!(
                "{weakness}; use a long random value (or ALLOW_WEAK_SECRETS=true for local development)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn weak_secrets_are_refused_unless_allowed() {
        let strict = SecretPolicy::default();
        let lax = SecretPolicy::from_env(&env(&[("ALLOW_WEAK_SECRETS", "true")])).unwrap();
        for (secret, min) in [
            (&b"sh0rt!"[..], 12),
            (b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 32),
            (b"abababababababababababababababab", 32),
            (b"0123456789abcdef0123456789abcde", 32),
        ] {
            let err = strict
                .require_strong("LINK_SIGNING_KEY", secret, min)
                .unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("LINK_SIGNING_KEY") && text.contains("weak"),
                "{text}"
            );
            assert!(
                !text.contains(std::str::from_utf8(secret).unwrap()),
                "{text}"
            );
            assert!(lax.require_strong("LINK_SIGNING_KEY", secret, min).is_ok());
        }
        assert!(
            strict
                .require_strong("API_PASSWORD", b"correct-horse-battery", 12)
                .is_ok()
        );
        assert!(
            strict
                .require_strong("X", b"0123456789abcdef0123456789abcdef", 32)
                .is_ok()
        );
    }
}
