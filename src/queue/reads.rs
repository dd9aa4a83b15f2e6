//! The queue's reads and upkeep: task records and logs, statistics, the reaper and
//! promoter, the worker registry, Redis health.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::pool::Conn;
use super::{
    Maintenance, QueueError, QueueStats, RedisInfo, StageStats, WorkerInfo, priority_band,
    redis_time,
};
use crate::task::result::StageResult;
use crate::task::{Priority, Stage, Status, TaskId, TaskRecord, field};

impl super::Queue {
    /// Reads a task record and, while it waits, its 0-based position in its stage queue.
    pub async fn get(&self, id: &TaskId) -> Result<(TaskRecord, Option<u64>), QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let fields: HashMap<String, String> = conn.hgetall(self.keys.record(id)).await?;
            if fields.is_empty() {
                return Err(QueueError::NotFound(id.clone()));
            }
            let record = TaskRecord::from_fields(fields)?;
            let position = if matches!(record.status, Status::Queued | Status::Separated) {
                let rank: Option<u64> = conn
                    .zrank(self.keys.queue(record.stage), id.as_str())
                    .await?;
                rank
            } else {
                None
            };
            Ok((record, position))
        })
        .await
    }

    /// The tasks `owner` submitted, newest first: at most `limit` of those submitted before
    /// the cursor `before` (`None`: from the newest) whose status is `status` (`None`: any),
    /// and the cursor of the next page when there may be one (cursors are enqueue ticks, unique
    /// per task, so a page boundary never skips one). Entries whose record has expired are
    /// dropped from the list as they are met.
    pub async fn list_owned(
        &self,
        owner: &str,
        status: Option<Status>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, Option<u64>), QueueError> {
        const BATCH: usize = 200;
        const MAX_BATCHES: usize = 10;
        let index = self.keys.owned(owner);
        self.timed(async {
            let mut conn = self.conn().await?;
            let mut found = Vec::new();
            let mut cursor = before;
            for _ in 0..MAX_BATCHES {
                let max = cursor.map_or("+inf".to_string(), |c| format!("({c}"));
                let ids: Vec<(String, u64)> = redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(&max)
                    .arg("-inf")
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(BATCH)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?;
                if ids.is_empty() {
                    return Ok((found, None));
                }
                let mut pipe = redis::pipe();
                for (id, _) in &ids {
                    // An id that does not parse reads a key that does not exist: dropped.
                    let key = match id.parse::<TaskId>() {
                        Ok(t) => self.keys.record(&t),
                        Err(_) => format!("{index}:?"),
                    };
                    pipe.hgetall(key);
                }
                let records: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
                let mut expired = Vec::new();
                for ((id, created), fields) in ids.iter().zip(records) {
                    cursor = Some(*created);
                    if fields.is_empty() {
                        expired.push(id.clone());
                        continue;
                    }
                    let record = TaskRecord::from_fields(fields)?;
                    if status.as_ref().is_none_or(|s| *s == record.status) {
                        found.push(record);
                        if found.len() == limit {
                            return Ok((found, cursor));
                        }
                    }
                }
                if !expired.is_empty() {
                    let _: () = conn.zrem(&index, &expired).await?;
                }
                if ids.len() < BATCH {
                    return Ok((found, None));
                }
            }
            // Many tasks of other statuses: the client goes on from where this page ended.
            Ok((found, cursor))
        })
        .await
    }

    /// Appends an entry to a JSON-list field of a task record (for example the webhook
    /// delivery log), keeping the last `keep` entries.
    pub async fn append_log(
        &self,
        id: &TaskId,
        field: &str,
        entry: serde_json::Value,
        keep: usize,
    ) -> Result<(), QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let key = self.keys.record(id);
            let current: Option<String> = conn.hget(&key, field).await?;
            let mut list: Vec<serde_json::Value> = current
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            list.push(entry);
            if list.len() > keep {
                let drop = list.len() - keep;
                list.drain(..drop);
            }
            let exists: bool = conn.exists(&key).await?;
            if exists {
                let _: () = conn
                    .hset(&key, field, serde_json::Value::Array(list).to_string())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Writes `result` onto a task record that still exists (stored stems and their links,
    /// shown by `GET /tasks/{id}` before the webhook is called).
    pub async fn save_result(&self, id: &TaskId, result: &StageResult) -> Result<(), QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let key = self.keys.record(id);
            let exists: bool = conn.exists(&key).await?;
            if exists {
                let _: () = conn
                    .hset(&key, field::RESULT, super::to_json(result))
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Queue statistics of both stages.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_s = redis_time(&mut conn).await?;
            let mut out = Vec::new();
            for stage in Stage::ALL {
                out.push(self.stage_stats(&mut conn, stage, now_s).await?);
            }
            let deliver = out.pop().expect("two stages");
            let separate = out.pop().expect("two stages");
            Ok(QueueStats { separate, deliver })
        })
        .await
    }

    async fn stage_stats(
        &self,
        conn: &mut Conn,
        stage: Stage,
        now_s: f64,
    ) -> Result<StageStats, QueueError> {
        let queue = self.keys.queue(stage);
        let mut pipe = redis::pipe();
        pipe.zcard(&queue)
            .zcard(self.keys.inflight(stage))
            .zcard(self.keys.delayed(stage))
            .zcard(self.keys.dead(stage));
        for p in Priority::all() {
            let (lo, hi) = priority_band(p, now_s);
            pipe.zcount(&queue, format!("{lo}"), format!("({hi}"));
            pipe.cmd("ZRANGE")
                .arg(&queue)
                .arg(format!("{lo}"))
                .arg(format!("({hi}"))
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .arg("WITHSCORES");
        }
        let (waiting, in_flight, delayed, dead): (u64, u64, u64, u64);
        let rest: Vec<redis::Value>;
        {
            let mut all: Vec<redis::Value> = pipe.query_async(&mut *conn).await?;
            let tail = all.split_off(4);
            let nums: Vec<u64> = all
                .into_iter()
                .map(|v| redis::from_redis_value(v).unwrap_or(0))
                .collect();
            (waiting, in_flight, delayed, dead) = (nums[0], nums[1], nums[2], nums[3]);
            rest = tail;
        }
        let mut by_priority = std::collections::BTreeMap::new();
        let mut oldest: f64 = 0.0;
        for (p, chunk) in Priority::all().zip(rest.chunks(2)) {
            let count: u64 = redis::from_redis_value(chunk[0].clone()).unwrap_or(0);
            by_priority.insert(p.to_string(), count);
            let first: Vec<(String, f64)> =
                redis::from_redis_value(chunk[1].clone()).unwrap_or_default();
            if let Some((_, score)) = first.first() {
                let enqueued_at = score / f64::from(p.multiplier());
                oldest = oldest.max(now_s - enqueued_at);
            }
        }
        Ok(StageStats {
            queue,
            waiting,
            waiting_by_priority: by_priority,
            in_flight,
            delayed,
            dead,
            oldest_wait_seconds: (oldest.max(0.0) * 1000.0).round() / 1000.0,
        })
    }

    /// One maintenance pass over both stages: returns expired leases to their queue,
    /// promotes due retries, trims dead letters and forgotten workers past the retention.
    pub async fn maintain(&self) -> Result<Maintenance, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_ms = (redis_time(&mut conn).await? * 1000.0) as u64;
            let mut m = Maintenance::default();
            for stage in Stage::ALL {
                let expired: Vec<String> = conn
                    .zrangebyscore_limit(self.keys.inflight(stage), "-inf", now_ms, 0, 100)
                    .await?;
                for id in expired {
                    let Ok(tid) = id.parse::<TaskId>() else {
                        let _: () = conn.zrem(self.keys.inflight(stage), &id).await?;
                        continue;
                    };
                    let reply: String = self
                        .scripts
                        .reap
                        .key(self.keys.inflight(stage))
                        .key(self.keys.queue(stage))
                        .key(self.keys.dead(stage))
                        .key(self.keys.record(&tid))
                        .arg(&id)
                        .arg(stage.waiting_status().as_str())
                        .arg(self.cfg.retention.as_millis() as u64)
                        .arg(self.keys.wake(stage))
                        .invoke_async(&mut conn)
                        .await?;
                    match reply.as_str() {
                        "requeued" => m.requeued += 1,
                        "dead" => m.dead_lettered += 1,
                        _ => {}
                    }
                }
                let due: Vec<String> = conn
                    .zrangebyscore_limit(self.keys.delayed(stage), "-inf", now_ms, 0, 100)
                    .await?;
                for id in due {
                    let Ok(tid) = id.parse::<TaskId>() else {
                        let _: () = conn.zrem(self.keys.delayed(stage), &id).await?;
                        continue;
                    };
                    let moved: i64 = self
                        .scripts
                        .promote
                        .key(self.keys.delayed(stage))
                        .key(self.keys.queue(stage))
                        .key(self.keys.record(&tid))
                        .arg(&id)
                        .arg(self.keys.wake(stage))
                        .invoke_async(&mut conn)
                        .await?;
                    m.promoted += moved as u64;
                }
                let horizon = now_ms.saturating_sub(self.cfg.retention.as_millis() as u64);
                let _: () = conn
                    .zrembyscore(self.keys.dead(stage), "-inf", horizon)
                    .await?;
            }
            let _: () = conn
                .zrembyscore(
                    self.keys.workers(),
                    "-inf",
                    now_ms.saturating_sub(3_600_000),
                )
                .await?;
            Ok(m)
        })
        .await
    }

    /// Records what a worker is (role, device, models) and marks it seen now.
    pub async fn register_worker(
        &self,
        worker: &str,
        info: &serde_json::Value,
    ) -> Result<(), QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_ms = (redis_time(&mut conn).await? * 1000.0) as u64;
            let mut pipe = redis::pipe();
            pipe.hset(self.keys.workers_info(), worker, info.to_string())
                .ignore()
                .zadd(self.keys.workers(), worker, now_ms)
                .ignore();
            let _: () = pipe.query_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Workers seen within `window`: id, seconds since last seen, and what they reported.
    pub async fn live_workers(&self, window: Duration) -> Result<Vec<WorkerInfo>, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let now_ms = redis_time(&mut conn).await? * 1000.0;
            let since = now_ms - window.as_millis() as f64;
            let seen: Vec<(String, f64)> = conn
                .zrangebyscore_withscores(self.keys.workers(), since, "+inf")
                .await?;
            if seen.is_empty() {
                return Ok(Vec::new());
            }
            // One round trip for every worker's self-description.
            let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
            let infos: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.workers_info())
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
            let out = seen
                .into_iter()
                .zip(infos)
                .map(|((id, t), info)| WorkerInfo {
                    info: info.and_then(|s| serde_json::from_str(&s).ok()),
                    last_seen_seconds: (((now_ms - t) / 1000.0).max(0.0) * 10.0).round() / 10.0,
                    id,
                })
                .collect();
            Ok(out)
        })
        .await
    }

    /// Pings Redis and reads its version, persistence mode and memory.
    pub async fn info(&self) -> Result<RedisInfo, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let start = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .arg("persistence")
                .arg("memory")
                .query_async(&mut conn)
                .await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                    .map(|v| v.trim().to_string())
            };
            let aof = field("aof_enabled").as_deref() == Some("1");
            let rdb = field("rdb_last_save_time").is_some()
                && field("rdb_changes_since_last_save").is_some()
                && {
                    let saves: String = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg("save")
                        .query_async::<Vec<String>>(&mut conn)
                        .await
                        .map(|v| v.get(1).cloned().unwrap_or_default())
                        .unwrap_or_default();
                    !saves.trim().is_empty()
                };
            let persistence = match (aof, rdb) {
                (true, true) => "aof+rdb",
                (true, false) => "aof",
                (false, true) => "rdb",
                (false, false) => "none",
            };
            Ok(RedisInfo {
                latency_ms: (latency_ms * 1000.0).round() / 1000.0,
                version: field("redis_version").unwrap_or_default(),
                persistence: persistence.into(),
                used_memory_bytes: field("used_memory")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            })
        })
        .await
    }

    /// A cheap liveness probe: PING with the operation timeout.
    pub async fn ping(&self) -> Result<Duration, QueueError> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let start = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(start.elapsed())
        })
        .await
    }
}
