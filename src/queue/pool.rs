//! The Redis connection pool: bb8 over multiplexed connections, with two additions.
//!
//! A multiplexed connection whose socket died stays dead, and a pool cannot tell without a
//! PING on every checkout; so each connection carries a flag that is set when a command on
//! it fails with an I/O or connection error, and bb8 drops flagged connections when they
//! come back. After a Redis restart the next operation fails fast and the one after that
//! gets a fresh connection, made through the [`Target`] (under Sentinel: to the master the
//! sentinels name now).
//!
//! A command answered `READONLY` reached a master that has been demoted to a replica by a
//! failover. Nothing ran (a replica refuses every write, and a script's first write aborts
//! it), so the connection is flagged and the command is replayed on a fresh connection to
//! the current master, a few times with short pauses while the sentinels settle.
//!
//! Operations do not hold a pool slot while they run: they take a clone of a pooled
//! connection and give the slot back at once, so concurrent operations share the sockets
//! and redis-rs pipelines them (far fewer system calls per operation than one socket
//! round trip each).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind,
    Value,
};

use super::target::Target;

/// Replays of a command that reached a demoted master.
const READONLY_REPLAYS: u32 = 5;

/// The pool type used by the queue.
pub type Pool = bb8::Pool<Manager>;

/// A pooled multiplexed connection that remembers whether it broke. Clones share the
/// socket (a multiplexed connection pipelines concurrent commands) and the flag.
#[derive(Clone)]
pub struct Conn {
    inner: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    connector: Arc<Connector>,
}

impl Conn {
    /// Whether a command on this connection failed with a connection error.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Marks the connection broken: the pool drops it and the next operation reconnects
    /// (under Sentinel, to whichever server is the master by then).
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Flags the connection when `r` shows it is broken or reaches a replica now.
    fn watch<T>(&self, r: Result<T, RedisError>) -> Result<T, RedisError>
    where
        Result<T, RedisError>: Reply,
    {
        let broken = match &r {
            Err(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
            }
            Ok(_) => false,
        };
        if broken || r.is_read_only() {
            self.broken.store(true, Ordering::Relaxed);
        }
        r
    }
}

/// A reply that may say `READONLY`. redis-rs hands a server's error reply back as a value
/// (`Value::ServerError`), turned into an `Err` only when the caller converts the reply, so
/// both forms are checked; a pipeline says it when any of its replies does.
trait Reply {
    fn is_read_only(&self) -> bool;
}

fn read_only_value(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::ReadOnly))
}

impl Reply for Result<Value, RedisError> {
    fn is_read_only(&self) -> bool {
        match self {
            Ok(v) => read_only_value(v),
            Err(e) => is_read_only(e),
        }
    }
}

impl Reply for Result<(), RedisError> {
    fn is_read_only(&self) -> bool {
        self.as_ref().err().is_some_and(is_read_only)
    }
}

impl Reply for Result<Vec<Value>, RedisError> {
    fn is_read_only(&self) -> bool {
        match self {
            Ok(values) => values.iter().any(read_only_value),
            Err(e) => is_read_only(e),
        }
    }
}

/// The replays of one command after `READONLY` answers.
struct Replay {
    done: u32,
    pause: Duration,
}

impl Replay {
    fn new() -> Self {
        Self {
            done: 0,
            pause: Duration::from_millis(50),
        }
    }

    /// Whether `r` calls for another replay (and one is left).
    fn wanted<T>(&mut self, r: &Result<T, RedisError>) -> bool
    where
        Result<T, RedisError>: Reply,
    {
        match r {
            r if r.is_read_only() && self.done < READONLY_REPLAYS => {
                self.done += 1;
                tracing::warn!(
                    replay = self.done,
                    "redis answered READONLY (failover); replaying on the master"
                );
                metrics::counter!(super::REDIS_READONLY_REPLAYS).increment(1);
                true
            }
            _ => false,
        }
    }

    /// After a pause, a connection to whichever server is the master now. It replaces the
    /// demoted one in this operation's handle (a clone: the pool replaces the flagged
    /// connection itself), so that what the operation sends next goes there too: a script
    /// new to that server answers `NOSCRIPT`, and redis-rs then loads it through the same
    /// handle.
    async fn connection(
        &mut self,
        connector: &Connector,
    ) -> Result<MultiplexedConnection, RedisError> {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(800));
        connector.connect().await
    }
}

/// Whether `e` is a `READONLY` reply: the server is a replica now.
pub(super) fn is_read_only(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let first = self.inner.req_packed_command(cmd).await;
            let mut r = self.watch(first);
            let mut replay = Replay::new();
            while replay.wanted(&r) {
                self.inner = replay.connection(&self.connector).await?;
                r = self.inner.req_packed_command(cmd).await;
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let first = self.inner.req_packed_commands(cmd, offset, count).await;
            let mut r = self.watch(first);
            let mut replay = Replay::new();
            while replay.wanted(&r) {
                self.inner = replay.connection(&self.connector).await?;
                r = self.inner.req_packed_commands(cmd, offset, count).await;
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Makes connections to the current master with the configured response timeout.
struct Connector {
    target: Target,
    config: AsyncConnectionConfig,
}

impl Connector {
    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let client = self.target.client().await?;
        client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }
}

/// The bb8 manager: connections through the [`Target`], with the broken-connection flag.
#[derive(Clone)]
pub struct Manager {
    connector: Arc<Connector>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager for `target`; every command waits at most `response_timeout` for its
    /// reply, every connection attempt at most `connect_timeout`.
    pub fn new(target: Target, response_timeout: Duration, connect_timeout: Duration) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(connect_timeout));
        Self {
            connector: Arc::new(Connector { target, config }),
        }
    }

    /// A client for the current master (pub/sub uses its own connection).
    pub async fn client(&self) -> Result<redis::Client, RedisError> {
        self.connector.target.client().await
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        Ok(Conn {
            inner: self.connector.connect().await?,
            broken: Arc::new(AtomicBool::new(false)),
            connector: self.connector.clone(),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        let r = redis::cmd("PING").query_async::<()>(&mut conn.inner).await;
        conn.watch(r)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}
