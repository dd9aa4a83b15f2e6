//! The HTTP API (actix-web): the seed's `POST /generate`, `GET /health` and `GET /metrics`,
//! then task status and cancel, queue statistics, models, probes and the OpenAPI document.
//!
//! Handlers are thin: request policy lives in the Intake actor, queue access in the
//! Scheduler actor. This module owns transport concerns only: authentication, content type,
//! body size, JSON syntax, status codes and the shutdown story (readiness turns unhealthy
//! first, then the server stops accepting and drains).

mod auth;
mod error;
mod files;
mod handlers;
pub mod keys;
#[cfg(test)]
mod openapi_tests;
mod tasks;
mod upload;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::actors::intake::{Intake, IntakeConfig};
use crate::actors::scheduler::SchedulerHandle;
use crate::config::{ConfigError, Env, Listen, SecretPolicy, Shared};
use crate::models::Library;
use crate::net::UrlPolicy;
use crate::task::Priority;

pub use auth::{BearerToken, Credentials, Throttle};
pub use error::ApiError;
pub use handlers::{check_json_content_type, parse_json_body};

/// What the API's access checks share with the metrics listener of a process without the
/// API: the failed-login limit and the bearer token `/metrics` asks for.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Failed logins per client address and minute before it is refused
    /// (`AUTH_FAILURES_PER_MINUTE`, default 20; 0 turns throttling off).
    pub auth_failures_per_minute: u32,
    /// The bearer token `/metrics` requires (`METRICS_TOKEN`; unset: `/metrics` is open).
    pub metrics_token: Option<BearerToken>,
}

impl AccessConfig {
    /// Reads `AUTH_FAILURES_PER_MINUTE` and `METRICS_TOKEN` (checked like the other secrets).
    pub fn from_env(env: &Env, secret_policy: SecretPolicy) -> Result<Self, ConfigError> {
        let metrics_token = match env.get("METRICS_TOKEN") {
            None => None,
            Some(t) => {
                let t = t.trim();
                secret_policy.require_strong("METRICS_TOKEN", t.as_bytes(), 16)?;
                Some(BearerToken::new(t))
            }
        };
        Ok(Self {
            auth_failures_per_minute: env.ranged("AUTH_FAILURES_PER_MINUTE", 20, 0..=1_000_000)?,
            metrics_token,
        })
    }

    /// `/metrics` as both listeners serve it.
    fn metrics(&self, scheduler: SchedulerHandle) -> MetricsAccess {
        MetricsAccess {
            scheduler,
            recorder: crate::metrics::install(),
            token: self.metrics_token.clone(),
            throttle: Arc::new(Throttle::per_minute(self.auth_failures_per_minute)),
        }
    }
}

/// The metrics listener of a process without the API (`METRICS_HOST`, `METRICS_PORT`).
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Where it listens.
    pub listen: Listen,
    /// Its token and failed-login limit.
    pub access: AccessConfig,
}

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where it listens (`API_HOST`, `API_PORT`).
    pub listen: Listen,
    /// HTTP worker threads (`API_WORKERS`, default: the number of CPUs).
    pub workers: usize,
    /// Basic-auth credentials (`API_USERNAME` / `API_PASSWORD`): the administrator, who
    /// sees every task.
    pub credentials: Credentials,
    /// Client keys (`API_KEYS_FILE`): each client sees only its own tasks.
    pub keys: Arc<keys::Keyring>,
    /// The failed-login limit and `/metrics`'s token.
    pub access: AccessConfig,
    /// Largest accepted request body (`MAX_REQUEST_BYTES`, default 64 KiB).
    pub max_request_bytes: usize,
    /// How long readiness reports unhealthy before the server stops accepting
    /// (`SHUTDOWN_GRACE_SECONDS`, default 2).
    pub shutdown_grace: Duration,
    /// How long in-flight requests get to finish on shutdown (`SHUTDOWN_TIMEOUT_SECONDS`, default 30).
    pub shutdown_timeout: Duration,
    /// Intake policy (URL rules, rate limit, backpressure, models).
    pub intake: IntakeConfig,
    /// Local stem storage served under `/files/` (when `STORAGE_URL` is `file://`).
    pub files: Option<FilesConfig>,
    /// The stem store, for fresh links (`GET /tasks/{id}/stems/{name}`): local storage, or
    /// S3 when its credentials are given to the API.
    pub storage: Option<crate::pipeline::storage::StorageConfig>,
    /// Where uploaded audio goes (`STAGING_DIR/uploads`, `MAX_AUDIO_BYTES`).
    pub uploads: crate::pipeline::uploads::Uploads,
}

/// Local storage the API serves through signed links.
#[derive(Clone)]
pub struct FilesConfig {
    /// The storage directory.
    pub root: std::path::PathBuf,
    /// The link signing key.
    pub key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for FilesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesConfig")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl ApiConfig {
    /// Reads the API's own settings; `shared` holds those other roles read too, `catalog` is
    /// the installed model catalogue and `storage` the stem store when the API can sign its
    /// links (local storage, or S3 with credentials).
    pub fn from_env(
        env: &Env,
        shared: &Shared,
        listen: Listen,
        default_priority: Priority,
        catalog: Arc<Library>,
        storage: Option<crate::pipeline::storage::StorageConfig>,
    ) -> Result<Self, ConfigError> {
        let password = env.get("API_PASSWORD").ok_or(ConfigError::Invalid {
            var: "API_PASSWORD",
            value: String::new(),
            reason: "must be set (the password of POST /generate's HTTP Basic auth)".into(),
        })?;
        shared
            .secret_policy
            .require_strong("API_PASSWORD", password.as_bytes(), 12)?;
        let username = env.string("API_USERNAME", "admin");
        if username.contains(':') {
            return Err(ConfigError::Invalid {
                var: "API_USERNAME",
                value: username,
                reason: "must not contain ':'".into(),
            });
        }
        let keys = match env.get("API_KEYS_FILE") {
            None => keys::Keyring::none(),
            Some(path) => {
                let invalid = |e: keys::KeysError| ConfigError::Invalid {
                    var: "API_KEYS_FILE",
                    value: path.to_string(),
                    reason: e.to_string(),
                };
                keys::Keyring::open(std::path::Path::new(&path), &username).map_err(invalid)?
            }
        };
        let rate: f64 = env.parse("RATE_LIMIT_PER_SECOND", 100.0)?;
        let burst: f64 = env.parse("RATE_LIMIT_BURST", 200.0)?;
        for (var, v) in [("RATE_LIMIT_PER_SECOND", rate), ("RATE_LIMIT_BURST", burst)] {
            if !v.is_finite() || v < 0.0 {
                return Err(ConfigError::Invalid {
                    var,
                    value: v.to_string(),
                    reason: "expected a non-negative number".into(),
                });
            }
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let files = match &storage {
            Some(crate::pipeline::storage::StorageConfig::Local { root, key, .. }) => {
                Some(FilesConfig {
                    root: root.clone(),
                    key: key.clone(),
                })
            }
            _ => None,
        };
        Ok(Self {
            listen,
            workers: env.ranged("API_WORKERS", cpus, 1..=256)?,
            credentials: Credentials::new(&username, password),
            keys: Arc::new(keys),
            access: AccessConfig::from_env(env, shared.secret_policy)?,
            max_request_bytes: env.ranged("MAX_REQUEST_BYTES", 65536, 1024..=16 << 20)?,
            shutdown_grace: env.seconds("SHUTDOWN_GRACE_SECONDS", Duration::from_secs(2))?,
            shutdown_timeout: env.seconds("SHUTDOWN_TIMEOUT_SECONDS", Duration::from_secs(30))?,
            intake: IntakeConfig {
                default_priority,
                url_policy: UrlPolicy {
                    allow_private: shared.allow_private,
                },
                rate_per_second: rate,
                rate_burst: burst,
                max_queue_depth: env.parse("MAX_QUEUE_DEPTH", 100_000u64)?,
                catalog,
                presets: Arc::new(match env.get("ENSEMBLE_PRESETS_FILE") {
                    None => Default::default(),
                    Some(path) => {
                        crate::separation::presets::Presets::load(std::path::Path::new(path))
                            .map_err(|reason| ConfigError::Invalid {
                                var: "ENSEMBLE_PRESETS_FILE",
                                value: path.to_string(),
                                reason,
                            })?
                    }
                }),
            },
            files,
            storage,
            uploads: crate::pipeline::uploads::Uploads::new(
                &shared.staging_dir,
                shared.max_audio_bytes,
            ),
        })
    }
}

impl ApiConfig {
    /// The configured user name (the password is never exposed).
    pub fn credentials_user(&self) -> &str {
        self.credentials.username()
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    intake: Addr<Intake>,
    scheduler: SchedulerHandle,
    credentials: Credentials,
    keys: Arc<keys::Keyring>,
    throttle: Arc<Throttle>,
    catalog: Arc<Library>,
    presets: Arc<crate::separation::presets::Presets>,
    ready: Arc<AtomicBool>,
    max_request_bytes: usize,
    started: Instant,
    files: Option<FilesConfig>,
    storage: Option<crate::pipeline::storage::Storage>,
    uploads: crate::pipeline::uploads::Uploads,
}

/// A running API server.
pub struct ApiServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The server future; await it (or spawn it) to run the server.
    pub server: Server,
    ready: Arc<AtomicBool>,
    grace: Duration,
}

impl ApiServer {
    /// Binds the listener and builds the server; it starts serving once `server` is polled.
    pub fn bind(cfg: &ApiConfig, scheduler: SchedulerHandle) -> std::io::Result<Self> {
        let listener = TcpListener::bind((cfg.listen.host.as_str(), cfg.listen.port))?;
        let addr = listener.local_addr()?;
        let intake = actix::Supervisor::start({
            let intake_cfg = cfg.intake.clone();
            let scheduler = scheduler.clone();
            move |_| Intake::new(intake_cfg, scheduler)
        });
        let ready = Arc::new(AtomicBool::new(true));
        let metrics = cfg.access.metrics(scheduler.clone());
        let throttle = metrics.throttle.clone();
        let access = web::Data::new(metrics);
        let state = AppState {
            intake,
            scheduler,
            credentials: cfg.credentials.clone(),
            keys: cfg.keys.clone(),
            throttle,
            catalog: cfg.intake.catalog.clone(),
            presets: cfg.intake.presets.clone(),
            ready: ready.clone(),
            max_request_bytes: cfg.max_request_bytes,
            started: Instant::now(),
            files: cfg.files.clone(),
            storage: cfg
                .storage
                .as_ref()
                .map(crate::pipeline::storage::Storage::open)
                .transpose()
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            uploads: cfg.uploads.clone(),
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(access.clone())
                .wrap(security_headers())
                .wrap_fn(|req, srv| {
                    let start = Instant::now();
                    let method = method_label(req.method());
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await?;
                        let route = route_label(res.request().match_pattern());
                        crate::metrics::http_request(
                            route,
                            method,
                            res.status().as_u16(),
                            start.elapsed().as_secs_f64(),
                        );
                        Ok(res)
                    }
                })
                .configure(routes)
        })
        .workers(cfg.workers)
        .backlog(4096)
        .disable_signals()
        .shutdown_timeout(cfg.shutdown_timeout.as_secs().max(1))
        .listen(listener)?
        .run();
        Ok(Self {
            addr,
            server,
            ready,
            grace: cfg.shutdown_grace,
        })
    }

    /// A handle that shuts the server down gracefully: readiness turns unhealthy, the grace
    /// period lets load balancers notice, then the server stops accepting and drains.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            server: self.server.handle(),
            ready: self.ready.clone(),
            grace: self.grace,
        }
    }
}

/// What `/metrics` needs: the recorder, the bearer token it asks for, the failed-login
/// throttle, and the Scheduler (to refresh the queue gauges first).
pub(crate) struct MetricsAccess {
    scheduler: SchedulerHandle,
    recorder: PrometheusHandle,
    token: Option<BearerToken>,
    throttle: Arc<Throttle>,
}

/// The metrics listener of a process without the API: `/metrics` and `/livez`, served by
/// the API's own handlers.
pub struct MetricsServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The server future; await it (or spawn it) to run the server.
    pub server: Server,
}

impl MetricsServer {
    /// Binds the listener of `cfg`.
    pub fn bind(cfg: &MetricsConfig, scheduler: SchedulerHandle) -> std::io::Result<Self> {
        let listener = TcpListener::bind((cfg.listen.host.as_str(), cfg.listen.port))?;
        let addr = listener.local_addr()?;
        let access = web::Data::new(cfg.access.metrics(scheduler));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(access.clone())
                .wrap(security_headers())
                .route("/metrics", web::get().to(handlers::metrics))
                .route("/livez", web::get().to(handlers::livez))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Self { addr, server })
    }
}

/// Stops an [`ApiServer`].
#[derive(Clone)]
pub struct ShutdownHandle {
    server: ServerHandle,
    ready: Arc<AtomicBool>,
    grace: Duration,
}

impl ShutdownHandle {
    /// Graceful: readiness off, wait the grace period, stop accepting, drain in-flight requests.
    pub async fn graceful(&self) {
        self.ready.store(false, Ordering::SeqCst);
        tokio::time::sleep(self.grace).await;
        self.server.stop(true).await;
    }

    /// Immediate: drop connections now.
    pub async fn immediate(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.server.stop(false).await;
    }
}

/// Headers on every response unless the handler set its own: no content sniffing, and no
/// caching of API answers (task views carry links, `/health` carries state).
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((actix_web::http::header::CACHE_CONTROL, "no-store"))
}

/// Bounded method label for metrics.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Bounded route label for metrics: the matched template, never the raw path.
fn route_label(pattern: Option<String>) -> &'static str {
    match pattern.as_deref() {
        Some("/generate") => "/generate",
        Some("/uploads") => "/uploads",
        Some("/tasks") => "/tasks",
        Some("/tasks/{id}") => "/tasks/{id}",
        Some("/tasks/{id}/stems/{name}") => "/tasks/{id}/stems/{name}",
        Some("/queue") => "/queue",
        Some("/admin/dead/{id}/requeue") => "/admin/dead/{id}/requeue",
        Some("/models") => "/models",
        Some("/health") => "/health",
        Some("/livez") => "/livez",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        Some("/openapi.json") => "/openapi.json",
        Some("/docs") => "/docs",
        Some("/files/{task}/{name}") => "/files/{task}/{name}",
        Some("/") => "/",
        _ => "unmatched",
    }
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/generate", web::post().to(handlers::generate))
        .route("/uploads", web::post().to(files::upload))
        .route("/tasks", web::get().to(tasks::list_tasks))
        .route("/tasks/{id}", web::get().to(tasks::get_task))
        .route("/tasks/{id}", web::delete().to(tasks::cancel_task))
        .route("/tasks/{id}/stems/{name}", web::get().to(files::stem_link))
        .route("/queue", web::get().to(handlers::queue_stats))
        .route(
            "/admin/dead/{id}/requeue",
            web::post().to(handlers::requeue_dead),
        )
        .route("/models", web::get().to(handlers::models))
        .route("/health", web::get().to(handlers::health))
        .route("/livez", web::get().to(handlers::livez))
        .route("/readyz", web::get().to(handlers::readyz))
        .route("/metrics", web::get().to(handlers::metrics))
        .route("/openapi.json", web::get().to(handlers::openapi))
        .route("/docs", web::get().to(handlers::docs))
        .route("/files/{task}/{name}", web::get().to(files::download))
        .route("/files/{task}/{name}", web::head().to(files::download))
        .route("/", web::get().to(handlers::index))
        .default_service(web::to(handlers::not_found));
}
