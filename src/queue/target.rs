//! Where the queue's Redis is: one fixed address, or whichever server the Sentinels
//! currently name as the master.
//!
//! Under Sentinel every new connection asks the sentinels for the master's address and
//! checks with `ROLE` that the server still considers itself the master. Connections are
//! made anew when the pool drops a broken one (see [`super::pool`]), so after a failover
//! the next operation fails fast and the one after it talks to the promoted replica. A
//! demoted master that is still reachable answers writes with `READONLY`; the pool treats
//! that like a broken connection and replays the command on a fresh one.

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisResult};
use tokio::sync::Mutex;

use crate::config::RedisConfig;

/// How connections find the Redis master.
pub enum Target {
    /// A fixed address (`REDIS_URL` or `REDIS_HOST`/`REDIS_PORT`).
    Direct(redis::Client),
    /// The master of a Sentinel-monitored group.
    Sentinel {
        /// The sentinel client; it caches its connections to the sentinels, hence the lock.
        client: Mutex<SentinelClient>,
        /// The monitored name, for logs.
        master: String,
    },
}

impl Target {
    /// The target described by `cfg`.
    pub fn new(cfg: &RedisConfig) -> RedisResult<Self> {
        let Some(sentinel) = &cfg.sentinel else {
            return Ok(Target::Direct(redis::Client::open(cfg.url.as_str())?));
        };
        // The master's database and credentials come from the configured URL.
        let info = cfg.url.as_str().into_connection_info()?;
        let redis = info.redis_settings();
        let nodes = sentinel
            .nodes
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder =
            SentinelClientBuilder::new(nodes, sentinel.master.clone(), SentinelServerType::Master)?
                .set_client_to_redis_db(redis.db());
        if let Some(user) = redis.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = redis.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(password) = &sentinel.password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        Ok(Target::Sentinel {
            client: Mutex::new(builder.build()?),
            master: sentinel.master.clone(),
        })
    }

    /// A client for the current master.
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel { client, master } => {
                let found = client.lock().await.async_get_client().await;
                match &found {
                    Ok(c) => tracing::debug!(
                        master = %master,
                        addr = %c.get_connection_info().addr(),
                        "sentinel named the master"
                    ),
                    Err(e) => {
                        tracing::warn!(master = %master, error = %e, "no master from the sentinels")
                    }
                }
                found
            }
        }
    }
}
