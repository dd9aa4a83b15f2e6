//! Redis key names, derived in one place.
//!
//! With the default configuration the two stage queues are exactly the seed's `uvr_tasks`
//! and `uvr_results`, so `ZCARD uvr_tasks` and `ZRANGE uvr_tasks 0 -1 WITHSCORES` work as
//! the seed documents. Every other key derives from the same names:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `uvr_tasks` / `uvr_results` | ZSet | waiting task ids, score `timestamp * (6 - priority)` |
//! | `<queue>:inflight` | ZSet | claimed task ids, score = lease deadline (ms) |
//! | `<queue>:delayed` | ZSet | tasks waiting to be retried, score = ready-at (ms) |
//! | `<queue>:dead` | ZSet | dead letters, score = time of death (ms) |
//! | `<queue>:waiting` | ZSet | idle claimers, score = registration deadline (ms) |
//! | `<queue>:wake` | channel | published when work arrives, so idle workers wake at once |
//! | `uvr_tasks:task:<id>` | hash | the task record (see `task::TaskRecord`) |
//! | `uvr_tasks:idem:<key>` | string | idempotency key -> task id |
//! | `uvr_tasks:clock` | string | the strictly increasing enqueue clock |
//! | `uvr_tasks:seq` | string | the fencing-token sequence |
//! | `uvr_tasks:workers` | ZSet | worker id -> last heartbeat (ms) |
//! | `uvr_tasks:workers:info` | hash | worker id -> JSON (role, device, models) |
//!
//! With `REDIS_KEY_HASH_TAG=uvr` every name gets the prefix `{uvr}:` so that all keys hash
//! to one Redis Cluster slot and the multi-key scripts are legal there.

use crate::config::QueueConfig;
use crate::task::{Stage, TaskId};

/// Key names of one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    task_queue: String,
    result_queue: String,
}

impl Keys {
    /// Derives the key names from the queue configuration.
    pub fn new(cfg: &QueueConfig) -> Self {
        Self {
            prefix: cfg
                .hash_tag
                .as_ref()
                .map(|t| format!("{{{t}}}:"))
                .unwrap_or_default(),
            task_queue: cfg.task_queue.clone(),
            result_queue: cfg.result_queue.clone(),
        }
    }

    fn stage_name(&self, stage: Stage) -> &str {
        match stage {
            Stage::Separate => &self.task_queue,
            Stage::Deliver => &self.result_queue,
        }
    }

    /// The waiting ZSet of a stage (`uvr_tasks`, `uvr_results`).
    pub fn queue(&self, stage: Stage) -> String {
        format!("{}{}", self.prefix, self.stage_name(stage))
    }

    /// The in-flight ZSet of a stage.
    pub fn inflight(&self, stage: Stage) -> String {
        format!("{}:inflight", self.queue(stage))
    }

    /// The delayed (retry) ZSet of a stage.
    pub fn delayed(&self, stage: Stage) -> String {
        format!("{}:delayed", self.queue(stage))
    }

    /// The dead-letter ZSet of a stage.
    pub fn dead(&self, stage: Stage) -> String {
        format!("{}:dead", self.queue(stage))
    }

    /// Idle claimers of a stage (worker -> registration deadline), so that enqueues publish
    /// a wake-up only when somebody waits.
    pub fn waiting(&self, stage: Stage) -> String {
        format!("{}:waiting", self.queue(stage))
    }

    /// The pub/sub channel announcing new work in a stage.
    pub fn wake(&self, stage: Stage) -> String {
        format!("{}:wake", self.queue(stage))
    }

    fn global(&self, suffix: &str) -> String {
        format!("{}{}:{suffix}", self.prefix, self.task_queue)
    }

    /// The record hash of a task.
    pub fn record(&self, id: &TaskId) -> String {
        self.global(&format!("task:{id}"))
    }

    /// The key mapping an idempotency key (already scoped by the caller) to a task id.
    pub fn idempotency(&self, scoped_key: &str) -> String {
        self.global(&format!("idem:{scoped_key}"))
    }

    /// The tasks a client submitted (ZSet, member = task id, score = the enqueue clock's tick:
    /// unique and in submission order).
    pub fn owned(&self, owner: &str) -> String {
        self.global(&format!("owner:{owner}"))
    }

    /// The enqueue clock.
    pub fn clock(&self) -> String {
        self.global("clock")
    }

    /// The fencing-token sequence.
    pub fn seq(&self) -> String {
        self.global("seq")
    }

    /// Live workers and their last heartbeat.
    pub fn workers(&self) -> String {
        self.global("workers")
    }

    /// What each worker reported about itself (role, device, models), JSON by worker id.
    pub fn workers_info(&self) -> String {
        self.global("workers:info")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};

    fn keys(pairs: &[(&str, &str)]) -> Keys {
        Keys::new(
            &Config::from(&Env::from_pairs(pairs.iter().copied()))
                .unwrap()
                .queue,
        )
    }

    #[test]
    fn default_names_are_the_seeds() {
        let k = keys(&[]);
        assert_eq!(k.queue(Stage::Separate), "uvr_tasks");
        assert_eq!(k.queue(Stage::Deliver), "uvr_results");
        assert_eq!(k.inflight(Stage::Separate), "uvr_tasks:inflight");
        let id: TaskId = "0190a2b4-0000-7000-8000-000000000000".parse().unwrap();
        assert_eq!(
            k.record(&id),
            "uvr_tasks:task:0190a2b4-0000-7000-8000-000000000000"
        );
    }

    #[test]
    fn hash_tag_prefixes_every_key() {
        let k = keys(&[("REDIS_KEY_HASH_TAG", "uvr")]);
        let id = TaskId::generate();
        for key in [
            k.queue(Stage::Separate),
            k.queue(Stage::Deliver),
            k.inflight(Stage::Deliver),
            k.delayed(Stage::Separate),
            k.dead(Stage::Deliver),
            k.record(&id),
            k.idempotency("x"),
            k.clock(),
            k.seq(),
            k.workers(),
        ] {
            assert!(key.starts_with("{uvr}:"), "{key}");
        }
    }
}
