//! The service's settings: read from the environment once, at start-up, before anything
//! starts, and split per role. A process reads only what its roles need (an API-only
//! process never needs the S3 credentials, an uploader no model catalogue), and each
//! variable is read in one place: a test holds every build of the settings to that, and
//! the README's configuration table to the set of variables read.

use std::sync::Arc;

use crate::api::{AccessConfig, ApiConfig, MetricsConfig};
use crate::config::{Config, ConfigError, Env, Listen, Shared};
use crate::models::{Library, LibraryError};
use crate::pipeline::storage::StorageConfig;
use crate::pipeline::{ProcessorConfig, UploaderConfig};

/// The roles a process can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API (Intake).
    Api,
    /// The Separator: claims from `uvr_tasks`, separates, stages stems.
    Processor,
    /// The Uploader: claims from `uvr_results`, stores stems, calls webhooks.
    Uploader,
}

impl Role {
    /// Parses `UVR_ROLES` (a comma list; default: all roles).
    pub fn parse_list(env: &Env) -> Result<Vec<Role>, ConfigError> {
        let raw = env.string("UVR_ROLES", "api,processor,uploader");
        let invalid = |reason: String| ConfigError::Invalid {
            var: "UVR_ROLES",
            value: raw.clone(),
            reason,
        };
        let mut roles = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let role = match part {
                "api" => Role::Api,
                "processor" => Role::Processor,
                "uploader" => Role::Uploader,
                _ => {
                    return Err(invalid(format!(
                        "unknown role {part:?} (expected api, processor, uploader)"
                    )));
                }
            };
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        if roles.is_empty() {
            return Err(invalid("no role given".into()));
        }
        Ok(roles)
    }
}

/// Settings that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A variable's value is invalid: the process exits with status 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The model catalogue cannot be opened.
    #[error(transparent)]
    Models(LibraryError),
}

impl From<LibraryError> for SettingsError {
    fn from(e: LibraryError) -> Self {
        match e {
            LibraryError::Config(e) => SettingsError::Config(e),
            e => SettingsError::Models(e),
        }
    }
}

/// Everything a process needs to start its roles.
#[derive(Debug)]
pub struct Settings {
    /// The roles this process hosts.
    pub roles: Vec<Role>,
    /// Redis and the queue: every role.
    pub base: Config,
    /// The API (Intake), when hosted.
    pub api: Option<ApiConfig>,
    /// The Separator, when hosted.
    pub processor: Option<ProcessorConfig>,
    /// The Uploader, when hosted.
    pub uploader: Option<UploaderConfig>,
    /// A metrics listener, for a process without the API that sets `METRICS_PORT`.
    pub metrics: Option<MetricsConfig>,
}

impl Settings {
    /// Reads the settings of `roles` (`None`: from `UVR_ROLES`).
    pub fn from_env(env: &Env, roles: Option<&[Role]>) -> Result<Self, SettingsError> {
        let roles = match roles {
            Some(r) => r.to_vec(),
            None => Role::parse_list(env)?,
        };
        let has = |r: Role| roles.contains(&r);
        let base = Config::from(env)?;
        let shared = Shared::from_env(env)?;
        let catalog = (has(Role::Api) || has(Role::Processor))
            .then(|| Library::from_env(env).map(Arc::new))
            .transpose()?;
        // Local storage's links point at the API, so the uploader needs its address too.
        let listen = (has(Role::Api) || has(Role::Uploader))
            .then(|| Listen::from_env(env))
            .transpose()?;
        let storage = match &listen {
            Some(listen) => {
                StorageConfig::from_env(env, listen, shared.secret_policy, has(Role::Uploader))?
            }
            None => None,
        };
        let api = match (&listen, &catalog) {
            (Some(listen), Some(catalog)) if has(Role::Api) => Some(ApiConfig::from_env(
                env,
                &shared,
                listen.clone(),
                base.queue.default_priority,
                catalog.clone(),
                storage.clone(),
            )?),
            _ => None,
        };
        let fetch = (has(Role::Processor) || has(Role::Uploader))
            .then(|| crate::pipeline::fetch_config(env, &shared))
            .transpose()?;
        let processor = match (&catalog, &fetch) {
            (Some(catalog), Some(fetch)) if has(Role::Processor) => {
                Some(ProcessorConfig::from_env(
                    env,
                    &shared,
                    catalog.clone(),
                    base.queue.lease,
                    fetch.clone(),
                )?)
            }
            _ => None,
        };
        let uploader =
            match (storage, fetch) {
                (Some(storage), Some(fetch)) if has(Role::Uploader) => Some(
                    UploaderConfig::from_env(env, &shared, &base.queue, storage, fetch)?,
                ),
                _ => None,
            };
        // Without the API, metrics have a listener of their own when METRICS_PORT is set.
        let metrics = match api {
            Some(_) => None,
            None => env
                .optional_ranged::<u16>("METRICS_PORT", 0..=65535)?
                .map(|port| -> Result<_, ConfigError> {
                    Ok(MetricsConfig {
                        listen: Listen {
                            host: env.string("METRICS_HOST", "127.0.0.1"),
                            port,
                        },
                        access: AccessConfig::from_env(env, shared.secret_policy)?,
                    })
                })
                .transpose()?,
        };
        Ok(Self {
            roles,
            base,
            api,
            processor,
            uploader,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Variables read outside the settings, before they are built: the log format and
    /// filter (logging starts first, to report a bad setting) and the allocator's own.
    const READ_ELSEWHERE: [&str; 3] = ["RUST_LOG", "LOG_FORMAT", "MIMALLOC_PURGE_DELAY"];

    const STRONG: &str = "a-strong-test-secret-0123456789-abcdefgh";

    /// The variables each build of `pairs` reads, for every role alone and all together;
    /// fails on a variable read twice in one build.
    fn reads(pairs: &[(&str, &str)]) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        let roles: [&[Role]; 4] = [
            &[Role::Api],
            &[Role::Processor],
            &[Role::Uploader],
            &[Role::Api, Role::Processor, Role::Uploader],
        ];
        for roles in roles.into_iter().map(Some).chain([None]) {
            let env = Env::from_pairs(pairs.iter().copied());
            if let Err(e) = Settings::from_env(&env, roles) {
                panic!("{roles:?} with {pairs:?}: {e}");
            }
            let counts: BTreeMap<String, usize> = env.reads();
            let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "{roles:?} read {twice:?} more than once");
            all.extend(counts.into_keys());
        }
        all
    }

    fn base(storage: &str) -> Vec<(&str, &str)> {
        vec![
            ("MODELS_DIR", "/nonexistent"),
            ("API_PASSWORD", STRONG),
            ("LINK_SIGNING_KEY", STRONG),
            ("WEBHOOK_SECRET", STRONG),
            ("STORAGE_URL", storage),
        ]
    }

    /// Every variable the settings read is in the README's configuration table, and every
    /// variable of the table is read by them (or named in [`READ_ELSEWHERE`]).
    #[test]
    fn the_readme_table_lists_exactly_the_variables_read_each_in_one_place() {
        let file = base("file:///tmp/uvr-settings-test");
        let mut s3 = base("s3://bucket/prefix");
        s3.extend([
            ("AWS_ACCESS_KEY_ID", "key"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ("REDIS_SENTINELS", "s1:26379"),
            ("METRICS_PORT", "9100"),
            ("UVR_ROLES", "processor"),
        ]);
        let mut read = reads(&file);
        read.extend(reads(&s3));

        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let section = readme
            .split("\n## Configuration")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("a Configuration section");
        let documented: BTreeSet<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split(" |").next())
            .flat_map(|cell| cell.split(", ").map(|v| v.trim_matches('`').to_string()))
            .filter(|v| {
                v.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        assert!(documented.len() > 50, "{documented:?}");
        let undocumented: Vec<_> = read.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "read but not in the README: {undocumented:?}"
        );
        let unread: Vec<_> = documented
            .iter()
            .filter(|v| !read.contains(*v) && !READ_ELSEWHERE.contains(&v.as_str()))
            .collect();
        assert!(
            unread.is_empty(),
            "in the README but never read: {unread:?}"
        );
    }

    /// Each role reads only what it needs: an API without S3 credentials starts (it signs
    /// no S3 links), an uploader without them does not, and a processor reads no storage,
    /// webhook or API setting at all.
    #[test]
    fn each_role_reads_what_it_needs() {
        let s3 = base("s3://bucket");
        let api = Settings::from_env(&Env::from_pairs(s3.iter().copied()), Some(&[Role::Api]));
        assert!(api.unwrap().api.unwrap().storage.is_none());
        let err = Settings::from_env(
            &Env::from_pairs(s3.iter().copied()),
            Some(&[Role::Uploader]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");

        let env = Env::from_pairs([("MODELS_DIR", "/nonexistent"), ("API_PORT", "x")]);
        let processor = Settings::from_env(&env, Some(&[Role::Processor])).unwrap();
        assert!(processor.processor.is_some() && processor.api.is_none());
        let read = env.reads();
        for var in [
            "API_PORT",
            "API_PASSWORD",
            "STORAGE_URL",
            "WEBHOOK_SECRET",
            "LINK_SIGNING_KEY",
        ] {
            assert!(!read.contains_key(var), "the processor read {var}");
        }
        let uploader = Settings::from_env(
            &Env::from_pairs(base("file:///tmp/uvr-settings-test")),
            Some(&[Role::Uploader]),
        )
        .unwrap();
        assert!(uploader.uploader.is_some() && uploader.processor.is_none());
    }
}
