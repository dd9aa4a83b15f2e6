//! Process assembly: reads the configuration, starts the Scheduler and the roles this
//! process hosts, and runs the shutdown story (first SIGTERM/SIGINT drains: readiness off,
//! stop accepting, finish in-flight work; a second signal stops at once).

use std::sync::Arc;

use anyhow::Context as _;

use crate::actors::scheduler::SchedulerHandle;
use crate::api::{ApiConfig, ApiServer};
use crate::config::{Config, ConfigError, Env};
use crate::models::Catalog;
use crate::queue::Queue;

/// The roles a process can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API (Intake).
    Api,
}

impl Role {
    /// Parses `UVR_ROLES` (a comma list; default: all roles).
    pub fn parse_list(env: &Env) -> Result<Vec<Role>, ConfigError> {
        let raw = env.string("UVR_ROLES", "api");
        let mut roles = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let role = match part {
                "api" => Role::Api,
                _ => {
                    return Err(ConfigError::Invalid {
                        var: "UVR_ROLES",
                        value: raw.clone(),
                        reason: format!("unknown role {part:?} (expected api)"),
                    });
                }
            };
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        if roles.is_empty() {
            return Err(ConfigError::Invalid {
                var: "UVR_ROLES",
                value: raw,
                reason: "no role given".into(),
            });
        }
        Ok(roles)
    }
}

/// Runs the given roles until a signal stops them.
pub async fn run(env: Env, roles: Vec<Role>) -> anyhow::Result<()> {
    let cfg = Config::from(&env)?;
    tracing::info!(redis = ?cfg.redis, task_queue = %cfg.queue.task_queue,
        result_queue = %cfg.queue.result_queue, ?roles, "starting uvr");
    let models_dir = env.string("MODELS_DIR", "models");
    let catalog = Arc::new(Catalog::scan(
        std::path::Path::new(&models_dir),
        env.get("DEFAULT_MODEL"),
    )?);
    let queue = Queue::connect(&cfg).context("redis configuration")?;
    let scheduler = SchedulerHandle::start(queue);

    let mut api = None;
    if roles.contains(&Role::Api) {
        let api_cfg = ApiConfig::from_env(&env, cfg.queue.default_priority, catalog.clone())?;
        let server = ApiServer::bind(&api_cfg, scheduler.clone())
            .with_context(|| format!("cannot listen on {}:{}", api_cfg.host, api_cfg.port))?;
        tracing::info!(addr = %server.addr, user = %api_cfg.credentials_user(), "API listening");
        api = Some(server);
    }

    let shutdown = api.as_ref().map(ApiServer::shutdown_handle);
    let server = api.map(|a| a.server);
    let signals = async {
        wait_for_signal().await;
        tracing::info!("shutting down: draining (send the signal again to stop at once)");
        let drain = async {
            if let Some(s) = &shutdown {
                s.graceful().await;
            }
        };
        tokio::select! {
            _ = drain => {}
            _ = wait_for_signal() => {
                tracing::warn!("second signal: stopping now");
                if let Some(s) = &shutdown {
                    s.immediate().await;
                }
            }
        }
    };
    match server {
        Some(server) => {
            tokio::select! {
                r = server => r.context("HTTP server")?,
                _ = signals => {}
            }
        }
        None => signals.await,
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
