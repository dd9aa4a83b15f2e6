//! uvr: a self-hosted vocal/stem separation service.
//!
//! A client POSTs a job (audio URL, webhook URL, priority 1-5); the job waits in a Redis
//! priority queue; a processor separates the audio; an uploader stores the stems and calls
//! the webhook with their links. The seed's Kafka deployment is replaced by two Redis ZSets,
//! `uvr_tasks` and `uvr_results`, ordered by `timestamp * (6 - priority)`.
//!
//! ```text
//! client --POST /generate--> [http] -> Intake --Enqueue--> Scheduler ==Lua==> uvr_tasks
//!                                       Separator <--Claim/Heartbeat/Ack--> Scheduler
//!                                       Uploader  <--Claim/Heartbeat/Ack--> Scheduler ==> uvr_results
//! ```
//!
//! # Layout
//! - [`config`]: reading the environment (the seed's names and defaults), typed errors
//!   naming the variable, the Redis and queue settings and those several roles share.
//! - [`settings`]: every setting of a process, read once at start-up and split per role.
//! - [`task`]: the task model: ids, priorities, stages, lifecycle states, the task record.
//! - [`queue`]: Redis key names, the atomic Lua moves (enqueue, claim with lease and fencing
//!   token, heartbeat, ack, fail with backoff, reap, cancel) and statistics; used only by the
//!   Scheduler actor.
//! - [`actors`]: the actors; [`actors::scheduler`] is the sole owner of the queue,
//!   [`actors::intake`] holds the request policy.
//! - [`api`]: the HTTP API (actix-web): routes, authentication, errors, OpenAPI document.
//! - [`audio`]: fetching audio (the URL policy again, at connect time), streaming decoding
//!   to stereo 44.1 kHz, writing stems.
//! - [`separation`]: the `Separator` trait and the built-in DSP separator.
//! - [`mdx`]: UVR MDX-Net models on Burn (GPU through wgpu, CPU fallback): ONNX reader,
//!   graph compiler, streamed demix, device selection.
//! - [`roformer`]: BS-Roformer and Mel-Band Roformer checkpoints on Burn: YAML config,
//!   checkpoint reader, band layout, network, MSST's streamed demix.
//! - [`families`]: the registry of model families (MDX-Net, Roformer): how each finds its
//!   models in `MODELS_DIR` and loads them.
//! - [`engine`]: builds separators by model name (built-in or any family's), loading each
//!   model once onto the selected device.
//! - [`pipeline`]: what processors and uploaders do with a task: download, separate and
//!   stage stems; store them, sign links, call the signed webhook.
//! - [`net`]: the address policy for user-supplied URLs (SSRF defence).
//! - [`models`]: the catalogue of installed separation models.
//! - [`supervise`]: the restart policies of the actors, in one place.
//! - [`service`]: process assembly: start-up of the roles and the shutdown story.
//! - [`local`]: one-off local separation (`uvr separate`): inputs expanded and checked before
//!   any model loads, one model for all inputs, outputs named per input.
//! - [`metrics`]: every Prometheus metric, `uvr_` prefixed.
//! - [`telemetry`]: logging set-up for the binaries.

pub mod actors;
pub mod api;
pub mod audio;
pub mod config;
pub mod engine;
pub mod families;
pub mod local;
pub mod mdx;
pub mod metrics;
pub mod models;
pub mod net;
pub mod pipeline;
pub mod queue;
pub mod roformer;
pub mod separation;
pub mod service;
pub mod settings;
pub mod supervise;
pub mod task;
pub mod telemetry;
