//! The actors of the pipeline, one per file.
//!
//! - [`scheduler`]: owns the Redis queue; every queue operation is a message to it.

pub mod scheduler;
