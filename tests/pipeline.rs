//! End to end: the real `uvr` binary, a real Redis, a loopback server that serves audio and
//! receives webhooks.
//!
//! Layout: this file is the crate root; its modules live in `tests/pipeline/` (declared with
//! `#[path]`, since a crate root's `mod x;` would look for `tests/x.rs`), one surface each:
//!
//! - `separation`: a song through the whole service (separated, stored, announced or
//!   polled), failures with their code, priorities, cancelling, stem formats and ranges, and
//!   ensembles;
//! - `supervision`: a processor killed mid-task and a separator restarted, with no task lost;
//! - `webhooks`: delivery, retries, `Retry-After`, giving up, redirects not followed, and
//!   links on the task before the webhook;
//! - `storage`: S3 with presigned and multipart uploads, and the retention sweeps of local
//!   and S3 storage;
//! - `sources`: where the audio comes from: uploads, and a name rebound to loopback after the
//!   submission, refused at connect time.

mod common;

#[path = "pipeline/separation.rs"]
mod separation;
#[path = "pipeline/sources.rs"]
mod sources;
#[path = "pipeline/storage.rs"]
mod storage;
#[path = "pipeline/supervision.rs"]
mod supervision;
#[path = "pipeline/webhooks.rs"]
mod webhooks;
