//! The actors of the pipeline, one per file.
//!
//! - [`scheduler`]: owns the Redis queue; every queue operation is a message to it.
//! - [`intake`]: validates and normalises submissions, applies rate limits and
//!   backpressure, then hands tasks to the Scheduler.
//! - [`separator`]: claims separation tasks, separates them on dedicated threads.
//! - [`uploader`]: claims separated tasks, stores stems, signs links, calls webhooks.
//! - [`worker`]: the worker actor both are (a [`worker::Job`] each): claim loops, lease
//!   keeping, restart budget, draining, outcome reporting.
//! - [`messages`]: messages shared by more than one actor (`Drain`, `Restart`).

pub mod intake;
pub mod messages;
pub mod scheduler;
pub mod separator;
pub mod uploader;
pub mod worker;
