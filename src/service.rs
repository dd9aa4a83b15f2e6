//! Process assembly: reads the configuration, starts the Scheduler and the roles this
//! process hosts, and runs the shutdown story (first SIGTERM/SIGINT drains: readiness off,
//! stop accepting, finish in-flight work; a second signal stops at once).

use std::sync::Arc;

use anyhow::Context as _;

use crate::actors::scheduler::SchedulerHandle;
use crate::actors::separator::{Drain, SeparatorActor};
use crate::actors::uploader::UploaderActor;
use crate::api::{ApiConfig, ApiServer};
use crate::config::{Config, ConfigError, Env};
use crate::models::Library;
use crate::pipeline::storage::Storage;
use crate::pipeline::{ProcessorConfig, UploaderConfig};
use crate::queue::Queue;

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
        let mut roles = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let role = match part {
                "api" => Role::Api,
                "processor" => Role::Processor,
                "uploader" => Role::Uploader,
                _ => {
                    return Err(ConfigError::Invalid {
                        var: "UVR_ROLES",
                        value: raw.clone(),
                        reason: format!(
                            "unknown role {part:?} (expected api, processor, uploader)"
                        ),
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
    let catalog = Arc::new(Library::from_env(&env)?);
    // Every role's settings are read before anything starts, so a bad one stops the process
    // with nothing to tear down.
    let api_cfg = roles
        .contains(&Role::Api)
        .then(|| ApiConfig::from_env(&env, cfg.queue.default_priority, catalog.clone()))
        .transpose()?;
    let pcfg = roles
        .contains(&Role::Processor)
        .then(|| ProcessorConfig::from_env(&env, catalog.clone(), cfg.queue.lease))
        .transpose()?;
    let ucfg = roles
        .contains(&Role::Uploader)
        .then(|| UploaderConfig::from_env(&env, &cfg.queue))
        .transpose()?;
    // Processes without the API still expose their metrics when METRICS_PORT is set.
    let metrics_listen = (api_cfg.is_none() && env.get("METRICS_PORT").is_some())
        .then(|| -> Result<_, crate::config::ConfigError> {
            Ok((
                env.string("METRICS_HOST", "127.0.0.1"),
                env.ranged::<u16>("METRICS_PORT", 0, 0..=65535)?,
                crate::api::metrics_token(&env)?,
            ))
        })
        .transpose()?;
    let metrics = crate::metrics::install();
    let queue = Queue::connect(&cfg).context("redis configuration")?;
    let scheduler = SchedulerHandle::start(queue);

    let mut api = None;
    if let Some(api_cfg) = api_cfg {
        let server = ApiServer::bind(&api_cfg, scheduler.clone())
            .with_context(|| format!("cannot listen on {}:{}", api_cfg.host, api_cfg.port))?;
        tracing::info!(addr = %server.addr, user = %api_cfg.credentials_user(), "API listening");
        api = Some(server);
    }

    let worker_id = worker_id();
    let mut separator = None;
    if let Some(pcfg) = pcfg {
        // Load and warm up the default model before the first job (a no-op for dsp-centre).
        let engine = pcfg.engine.clone();
        let default_model = pcfg.default_model.clone();
        tokio::task::spawn_blocking(move || engine.prepare(&default_model))
            .await
            .context("loading the default model")?
            .map_err(|e| anyhow::anyhow!("default model {}: {e}", pcfg.default_model))?;
        std::fs::create_dir_all(&pcfg.staging_dir)
            .with_context(|| format!("STAGING_DIR {}", pcfg.staging_dir.display()))?;
        tracing::info!(staging = %pcfg.staging_dir.display(), concurrency = pcfg.concurrency,
            model = %pcfg.default_model, "processor started");
        separator = Some(
            SeparatorActor::new(scheduler.clone(), pcfg, format!("{worker_id}-processor"))
                .start_supervised(),
        );
    }
    let mut uploader = None;
    if let Some(ucfg) = ucfg {
        let storage = Storage::open(&ucfg.storage)?;
        tracing::info!(storage = ?ucfg.storage, "uploader started");
        crate::pipeline::retention::spawn(
            storage.clone(),
            scheduler.clone(),
            ucfg.retention.clone(),
        );
        uploader = Some(
            UploaderActor::new(
                scheduler.clone(),
                ucfg,
                storage,
                format!("{worker_id}-uploader"),
            )
            .start_supervised(),
        );
    }

    let mut metrics_server = None;
    if let Some((host, port, token)) = metrics_listen {
        let handle = metrics.clone();
        let server = actix_web::HttpServer::new(move || {
            let (handle, token) = (handle.clone(), token.clone());
            actix_web::App::new()
                .wrap(crate::api::security_headers())
                .route(
                    "/metrics",
                    actix_web::web::get().to(move |req: actix_web::HttpRequest| {
                        let allowed = token.as_ref().is_none_or(|t| {
                            t.verify(
                                req.headers()
                                    .get(actix_web::http::header::AUTHORIZATION)
                                    .and_then(|v| v.to_str().ok()),
                            )
                        });
                        let body = allowed.then(|| handle.render());
                        async move {
                            match body {
                                Some(body) => actix_web::HttpResponse::Ok()
                                    .content_type("text/plain; version=0.0.4; charset=utf-8")
                                    .body(body),
                                None => actix_web::HttpResponse::Unauthorized()
                                    .insert_header((
                                        actix_web::http::header::WWW_AUTHENTICATE,
                                        "Bearer realm=\"metrics\"",
                                    ))
                                    .finish(),
                            }
                        }
                    }),
                )
                .route(
                    "/livez",
                    actix_web::web::get().to(|| async { actix_web::HttpResponse::Ok().body("ok") }),
                )
        })
        .workers(1)
        .disable_signals()
        .bind((host.as_str(), port))
        .with_context(|| format!("METRICS_PORT {port}"))?
        .run();
        tracing::info!(%host, port, "metrics endpoint");
        metrics_server = Some(server.handle());
        actix_web::rt::spawn(server);
    }

    let shutdown = api.as_ref().map(ApiServer::shutdown_handle);
    let server = api.map(|a| a.server);
    let signals = async {
        wait_for_signal().await;
        tracing::info!("shutting down: draining (send the signal again to stop at once)");
        let drain = async {
            let workers = async {
                if let Some(s) = &separator {
                    let _ = s.send(Drain).await;
                }
                if let Some(u) = &uploader {
                    let _ = u.send(Drain).await;
                }
            };
            let api = async {
                if let Some(s) = &shutdown {
                    s.graceful().await;
                }
            };
            tokio::join!(workers, api);
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
    if let Some(m) = metrics_server {
        m.stop(true).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// This process's worker id: host name and pid.
fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!("{}-{}", host.trim(), std::process::id())
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

/// A binary's whole life for `roles` (`None`: from `UVR_ROLES`): logging, the actix system,
/// [`run`], and the exit code — 2 with one line naming the variable for a bad setting, 1 for
/// any other failure.
pub fn main(roles: Option<Vec<Role>>) -> std::process::ExitCode {
    use std::process::ExitCode;
    crate::telemetry::init();
    let env = Env::from_process();
    let roles = match roles.map_or_else(|| Role::parse_list(&env), Ok) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uvr: {e}");
            return ExitCode::from(2);
        }
    };
    let system = actix_web::rt::System::new();
    match system.block_on(run(env, roles)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            };
            eprintln!("uvr: {e:#}");
            // A failure after the actors started (a port taken, a model that does not load):
            // they would be torn down outside their runtime and complain about it, and
            // nothing is in flight yet, so leave without tearing down.
            std::process::exit(code)
        }
    }
}
