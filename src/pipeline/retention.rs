//! Retention: what a finished task leaves behind does not stay forever. Stored stems whose
//! links have expired are deleted from the store, local or S3, and so are staging leftovers
//! (an attempt that died with its process). The uploader role runs the sweep every
//! `RETENTION_SWEEP_SECONDS`; Redis records expire on their own (`RESULT_RETENTION_SECONDS`).
//!
//! Only what uvr wrote is touched: stored objects named `<task id>/<file>` under the storage
//! prefix, and staging entries named after a task id whose task has ended or is gone. A
//! stored object goes once it is older than `RESULT_URL_TTL` plus the longest a delivery
//! can keep signing links for it (every delivery attempt signs fresh links, valid for
//! `RESULT_URL_TTL` from then).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::storage::{Storage, StorageError};
use crate::actors::scheduler::{GetTask, SchedulerHandle};
use crate::queue::QueueError;
use crate::task::TaskId;

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Stored objects (stem files).
    pub stored: u64,
    /// Task directories and uploads of the staging directory.
    pub staging: u64,
}

/// How the sweep is run.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The staging directory (`STAGING_DIR`).
    pub staging: PathBuf,
    /// How long a stored object is kept: `RESULT_URL_TTL` plus the delivery window.
    pub keep: Duration,
    /// How long a staging leftover of an ended task is kept.
    pub keep_staging: Duration,
    /// How often the sweep runs (`RETENTION_SWEEP_SECONDS`; zero: never).
    pub every: Duration,
}

/// Deletes stored objects and staging leftovers past their time.
pub async fn sweep(
    storage: &Storage,
    scheduler: &SchedulerHandle,
    r: &Retention,
) -> Result<Swept, StorageError> {
    let now = SystemTime::now();
    let cutoff = |keep| now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    let stored = storage.delete_older_than(cutoff(r.keep)).await?;
    let staging = r.staging.clone();
    let stage_cutoff = cutoff(r.keep_staging);
    let candidates = tokio::task::spawn_blocking(move || {
        // Uploads no task took (or whose task was cancelled while queued) go too.
        let uploads = super::uploads::Uploads::new(&staging, 0);
        let stale = old_uploads(uploads.dir(), stage_cutoff);
        for f in &stale {
            let _ = std::fs::remove_file(f);
        }
        (old_task_dirs(&staging, stage_cutoff), stale.len() as u64)
    })
    .await
    .unwrap_or_default();
    let (candidates, uploads_removed) = candidates;
    let mut removed = 0;
    for (id, path) in candidates {
        // A task still moving (waiting for an uploader, say) keeps its staging.
        let ended = match scheduler.ask(GetTask(id)).await {
            Ok((rec, _)) => rec.status.is_final(),
            Err(QueueError::NotFound(_)) => true,
            Err(_) => false,
        };
        if ended && tokio::fs::remove_dir_all(&path).await.is_ok() {
            removed += 1;
        }
    }
    Ok(Swept {
        stored,
        staging: removed + uploads_removed,
    })
}

/// The task directories of `dir` (named after a task id) in which nothing changed since
/// `cutoff`.
fn old_task_dirs(dir: &Path, cutoff: SystemTime) -> Vec<(TaskId, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let id: TaskId = e.file_name().to_str()?.parse().ok()?;
            let path = e.path();
            (path.is_dir() && newest(&path).is_some_and(|t| t < cutoff)).then_some((id, path))
        })
        .collect()
}

/// The files of the uploads directory last changed before `cutoff`.
fn old_uploads(dir: &Path, cutoff: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && newest(p).is_some_and(|t| t < cutoff))
        .collect()
}

/// The latest modification time of `path` and everything below it.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut latest = meta.modified().ok()?;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for e in entries.flatten() {
            latest = latest.max(newest(&e.path())?);
        }
    }
    Some(latest)
}

/// Runs [`sweep`] every `r.every` until the process ends (zero: never).
pub fn spawn(storage: Storage, scheduler: SchedulerHandle, r: Retention) {
    if r.every.is_zero() {
        return;
    }
    actix::spawn(async move {
        let mut tick = tokio::time::interval(r.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep(&storage, &scheduler, &r).await {
                Ok(s) if s != Swept::default() => {
                    tracing::info!(stored = s.stored, staging = s.staging, "retention sweep")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying later"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets the modification time of a file or directory `by` in the past.
    fn age(path: &Path, by: Duration) {
        let f = std::fs::File::open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn only_task_directories_in_which_nothing_changed_are_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let hours = |n: u64| Duration::from_secs(n * 3600);
        let old_id = "0190a2b4-0000-7000-8000-000000000001";
        let live_id = "0190a2b4-0000-7000-8000-000000000002";
        let (old_task, live_task) = (dir.path().join(old_id), dir.path().join(live_id));
        for d in [&old_task, &live_task] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("source.audio"), b"x").unwrap();
            age(&d.join("source.audio"), hours(3));
        }
        // The live task is writing a stem now.
        std::fs::write(live_task.join("vocals.wav"), b"y").unwrap();
        age(&old_task, hours(3));
        age(&live_task, hours(3));
        // Not a task's: never a candidate, however old.
        let stray = dir.path().join("not-a-task");
        std::fs::create_dir(&stray).unwrap();
        age(&stray, hours(3));

        let found = old_task_dirs(dir.path(), SystemTime::now() - hours(1));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0.as_str(), old_id);
        assert_eq!(found[0].1, old_task);
        assert!(old_task_dirs(&dir.path().join("missing"), SystemTime::now()).is_empty());
    }
}
