//! Process assembly, one way for the binaries and the tests: [`Service::start`] starts the
//! Scheduler and the roles of the settings, [`Service::run`] serves until its [`Stopper`]
//! says stop, and drains (readiness off, stop accepting, finish in-flight work; a second
//! stop ends the wait at once). The binaries stop on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;
use actix_web::dev::Server;
use anyhow::Context as _;

use crate::actors::scheduler::SchedulerHandle;
use crate::actors::separator::{Drain, SeparatorActor};
use crate::actors::uploader::UploaderActor;
use crate::api::{ApiServer, MetricsServer, ShutdownHandle};
use crate::config::{ConfigError, Env};
use crate::pipeline::storage::Storage;
use crate::queue::Queue;
use crate::settings::{Role, Settings, SettingsError};

/// A started process: its roles running, its listeners bound. [`Service::run`] serves until
/// its [`Stopper`] says stop; the binaries stop it on signals, the tests by hand.
pub struct Service {
    /// The API's bound address, when the process hosts the API.
    pub api_addr: Option<SocketAddr>,
    /// The metrics listener's bound address, when it has one.
    pub metrics_addr: Option<SocketAddr>,
    /// The Scheduler: the one owner of the queue.
    pub scheduler: SchedulerHandle,
    api: Option<(Server, ShutdownHandle)>,
    metrics: Option<Server>,
    separator: Option<Addr<SeparatorActor>>,
    uploader: Option<Addr<UploaderActor>>,
    stopper: Stopper,
}

/// Stops a [`Service`]: a first [`Stopper::drain`] drains (readiness off, stop accepting,
/// finish in-flight work), [`Stopper::now`] (or a second drain) stops at once.
#[derive(Clone, Default)]
pub struct Stopper {
    asked: Arc<tokio::sync::watch::Sender<u8>>,
}

impl Stopper {
    /// Drain, or stop at once when a drain was asked for already.
    pub fn drain(&self) {
        self.asked.send_modify(|n| *n = (*n + 1).min(2));
    }

    /// Stop at once.
    pub fn now(&self) {
        self.asked.send_replace(2);
    }

    /// Resolves once `level` stops were asked for (1: drain, 2: at once).
    async fn asked(&self, level: u8) {
        let mut rx = self.asked.subscribe();
        let _ = rx.wait_for(|n| *n >= level).await;
    }
}

impl Service {
    /// Starts the roles of `settings`, workers named after this host and process.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        Self::start_as(settings, &worker_id()).await
    }

    /// Starts the roles of `settings`: the Scheduler, the API and the metrics listener
    /// (bound, served once [`Service::run`] runs or their servers are spawned), the
    /// Separator (after its default model is loaded and warmed up) and the Uploader, whose
    /// workers are named `<worker>-processor` and `<worker>-uploader`.
    pub async fn start_as(settings: Settings, worker: &str) -> anyhow::Result<Self> {
        let base = &settings.base;
        tracing::info!(redis = ?base.redis, task_queue = %base.queue.task_queue,
            result_queue = %base.queue.result_queue, roles = ?settings.roles, "starting uvr");
        crate::metrics::install();
        let queue = Queue::connect(base).context("redis configuration")?;
        let scheduler = SchedulerHandle::start(queue);

        let api = match settings.api {
            Some(cfg) => {
                let server = ApiServer::bind(&cfg, scheduler.clone()).with_context(|| {
                    format!("cannot listen on {}:{}", cfg.listen.host, cfg.listen.port)
                })?;
                tracing::info!(addr = %server.addr, user = %cfg.credentials_user(), "API listening");
                Some(server)
            }
            None => None,
        };
        let metrics = match settings.metrics {
            Some(cfg) => {
                let server = MetricsServer::bind(&cfg, scheduler.clone())
                    .with_context(|| format!("METRICS_PORT {}", cfg.listen.port))?;
                tracing::info!(addr = %server.addr, "metrics endpoint");
                Some(server)
            }
            None => None,
        };

        let separator = match settings.processor {
            Some(cfg) => {
                // Load and warm up the default model before the first job (a no-op for
                // dsp-centre).
                let engine = cfg.engine.clone();
                let default_model = cfg.default_model.clone();
                tokio::task::spawn_blocking(move || engine.prepare(&default_model))
                    .await
                    .context("loading the default model")?
                    .map_err(|e| anyhow::anyhow!("default model {}: {e}", cfg.default_model))?;
                std::fs::create_dir_all(&cfg.staging_dir)
                    .with_context(|| format!("STAGING_DIR {}", cfg.staging_dir.display()))?;
                tracing::info!(staging = %cfg.staging_dir.display(), concurrency = cfg.concurrency,
                    model = %cfg.default_model, "processor started");
                let name = format!("{worker}-processor");
                Some(SeparatorActor::new(scheduler.clone(), cfg, name).start_supervised())
            }
            None => None,
        };
        let uploader = match settings.uploader {
            Some(cfg) => {
                let storage = Storage::open(&cfg.storage)?;
                tracing::info!(storage = ?cfg.storage, "uploader started");
                crate::pipeline::retention::spawn(
                    storage.clone(),
                    scheduler.clone(),
                    cfg.retention.clone(),
                );
                let name = format!("{worker}-uploader");
                Some(UploaderActor::new(scheduler.clone(), cfg, storage, name).start_supervised())
            }
            None => None,
        };
        Ok(Self {
            api_addr: api.as_ref().map(|a| a.addr),
            metrics_addr: metrics.as_ref().map(|m| m.addr),
            scheduler,
            api: api.map(|a| {
                let shutdown = a.shutdown_handle();
                (a.server, shutdown)
            }),
            metrics: metrics.map(|m| m.server),
            separator,
            uploader,
            stopper: Stopper::default(),
        })
    }

    /// The handle that stops [`Service::run`].
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves until stopped, then drains: readiness off, the API stops accepting and
    /// finishes its requests while the workers finish their tasks. A second stop (or
    /// [`Stopper::now`]) ends the wait at once.
    pub async fn run(self) -> anyhow::Result<()> {
        let Service {
            api,
            metrics,
            separator,
            uploader,
            stopper,
            ..
        } = self;
        let metrics = metrics.map(|server| {
            let handle = server.handle();
            actix_web::rt::spawn(server);
            handle
        });
        let (server, shutdown) = match api {
            Some((server, shutdown)) => (Some(server), Some(shutdown)),
            None => (None, None),
        };
        let stopped = async {
            stopper.asked(1).await;
            tracing::info!("shutting down: draining (stop again to stop at once)");
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
                _ = stopper.asked(2) => {
                    tracing::warn!("second signal to stop: stopping now");
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
                    _ = stopped => {}
                }
            }
            None => stopped.await,
        }
        if let Some(m) = metrics {
            m.stop(true).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// This process's worker id: host name and pid.
fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!("{}-{}", host.trim(), std::process::id())
}

/// A binary's whole life for `roles` (`None`: from `UVR_ROLES`): logging, the actix system,
/// [`run`], and the exit code — 2 with one line naming the variable for a bad setting, 1 for
/// any other failure.
pub fn main(roles: Option<Vec<Role>>) -> std::process::ExitCode {
    use std::process::ExitCode;
    crate::telemetry::init();
    // Every role's settings are read before anything starts, so a bad one stops the process
    // with nothing to tear down.
    let settings = match Settings::from_env(&Env::from_process(), roles.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("uvr: {e}");
            return ExitCode::from(match e {
                SettingsError::Config(_) => 2,
                SettingsError::Models(_) => 1,
            });
        }
    };
    let system = actix_web::rt::System::new();
    let run = async {
        let service = Service::start(settings).await?;
        let stopper = service.stopper();
        actix_web::rt::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                stopper.drain();
            }
        });
        service.run().await
    };
    match system.block_on(run) {
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
