//! The Redis connection pool: bb8 over bb8-redis's manager, with one addition. A
//! multiplexed connection whose socket died stays dead, and bb8-redis cannot tell without a
//! PING on every checkout; so each connection carries a flag that is set when a command on
//! it fails with an I/O or connection error, and bb8 drops flagged connections when they
//! come back. After a Redis restart the next operation fails fast and the one after that
//! gets a fresh connection.
//!
//! Operations do not hold a pool slot while they run: they take a clone of a pooled
//! connection and give the slot back at once, so concurrent operations share the sockets
//! and redis-rs pipelines them (far fewer system calls per operation than one socket
//! round trip each).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// The pool type used by the queue.
pub type Pool = bb8::Pool<Manager>;

/// A pooled multiplexed connection that remembers whether it broke. Clones share the
/// socket (a multiplexed connection pipelines concurrent commands) and the flag.
#[derive(Clone)]
pub struct Conn {
    inner: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl Conn {
    /// Whether a command on this connection failed with a connection error.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    fn watch<T>(&self, r: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &r
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error()
                || e.is_timeout())
        {
            self.broken.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.inner.req_packed_command(cmd).await;
            self.watch(r)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.inner.req_packed_commands(cmd, offset, count).await;
            self.watch(r)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// bb8-redis's manager plus the broken-connection flag and a response timeout.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: RedisConnectionManager,
    response_timeout: Duration,
}

impl Manager {
    /// A manager for `url`; every command waits at most `response_timeout` for its reply.
    pub fn new(url: &str, response_timeout: Duration) -> Result<Self, RedisError> {
        Ok(Self {
            inner: RedisConnectionManager::new(url)?,
            response_timeout,
        })
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let mut inner = self.inner.connect().await?;
        inner.set_response_timeout(self.response_timeout);
        Ok(Conn {
            inner,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        let r = self.inner.is_valid(&mut conn.inner).await;
        conn.watch(r)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}
