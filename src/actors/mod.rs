//! The actors of the pipeline, one per file.
//!
//! - [`scheduler`]: owns the Redis queue; every queue operation is a message to it.
//! - [`intake`]: validates and normalises submissions, applies rate limits and
//!   backpressure, then hands tasks to the Scheduler.

pub mod intake;
pub mod scheduler;
