//! Retention: what a finished task leaves behind does not stay forever. Stored stems whose
//! links have expired (older than `RESULT_URL_TTL`) are deleted from the store, local or S3,
//! and so are staging leftovers of that age (an attempt that died with its process). The
//! uploader role runs the sweep every `RETENTION_SWEEP_SECONDS`; Redis records expire on
//! their own (`RESULT_RETENTION_SECONDS`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::storage::{Storage, StorageError};

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Stored objects (stem files).
    pub stored: u64,
    /// Entries of the staging directory (task directories or files).
    pub staging: u64,
}

/// Deletes stored objects and staging entries last modified more than `ttl` ago.
pub async fn sweep(
    storage: &Storage,
    staging: &Path,
    ttl: Duration,
) -> Result<Swept, StorageError> {
    let cutoff = SystemTime::now()
        .checked_sub(ttl)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let stored = storage.delete_older_than(cutoff).await?;
    let staging = staging.to_path_buf();
    let staging = tokio::task::spawn_blocking(move || sweep_dir(&staging, cutoff))
        .await
        .unwrap_or(0);
    Ok(Swept { stored, staging })
}

/// Removes the entries of `dir` whose newest modification (of the entry or anything inside
/// it) is older than `cutoff`: a directory still being written to is kept whole.
fn sweep_dir(dir: &Path, cutoff: SystemTime) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if newest(&path).is_some_and(|t| t < cutoff) {
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed += 1;
            }
        }
    }
    removed
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

/// Runs [`sweep`] every `every` until the process ends (`every` zero: never).
pub fn spawn(storage: Storage, staging: std::path::PathBuf, every: Duration) {
    if every.is_zero() {
        return;
    }
    let ttl = storage.ttl();
    actix::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep(&storage, &staging, ttl).await {
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
    fn staging_entries_go_when_everything_in_them_is_old() {
        let dir = tempfile::tempdir().unwrap();
        let hours = |n: u64| Duration::from_secs(n * 3600);
        let old_task = dir.path().join("old-task");
        let live_task = dir.path().join("live-task");
        for d in [&old_task, &live_task] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("source.audio"), b"x").unwrap();
            age(&d.join("source.audio"), hours(3));
        }
        // The live task is writing a stem now.
        std::fs::write(live_task.join("vocals.wav"), b"y").unwrap();
        age(&old_task, hours(3));
        age(&live_task, hours(3));
        let stray = dir.path().join("stray.tmp");
        std::fs::write(&stray, b"z").unwrap();
        age(&stray, hours(3));
        let fresh = dir.path().join("fresh.tmp");
        std::fs::write(&fresh, b"z").unwrap();

        let removed = sweep_dir(dir.path(), SystemTime::now() - hours(1));
        assert_eq!(removed, 2);
        assert!(!old_task.exists() && !stray.exists());
        assert!(live_task.join("vocals.wav").exists() && live_task.join("source.audio").exists());
        assert!(fresh.exists());
        assert_eq!(sweep_dir(&dir.path().join("missing"), SystemTime::now()), 0);
    }
}
