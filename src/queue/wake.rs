//! Wake-ups for idle claimers: one pub/sub subscription per process to each stage's wake
//! channel, fanned out to local waiters through a [`Notify`]. A lost subscription is
//! re-established with backoff; meanwhile claimers fall back to `CLAIM_POLL_SECONDS` polling,
//! so a missed wake-up only delays a pickup, it never loses a task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::pool::Manager;
use crate::task::Stage;

/// One [`Notify`] per stage, fed by the Redis subscription.
#[derive(Clone)]
pub(super) struct Wakers {
    separate: Arc<Notify>,
    deliver: Arc<Notify>,
}

impl Wakers {
    /// Starts the subscriber task; `channels` are the separate and deliver wake channels.
    /// The subscription goes to whichever server `manager` names as the master at the time.
    pub fn start(manager: Manager, channels: [String; 2]) -> Self {
        let wakers = Self {
            separate: Arc::new(Notify::new()),
            deliver: Arc::new(Notify::new()),
        };
        let w = wakers.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match w.listen(&manager, &channels).await {
                    Ok(()) => delay = Duration::from_millis(100),
                    Err(e) => {
                        tracing::debug!(error = %e, "wake-up subscription lost; retrying");
                    }
                }
                // Wake everyone so nobody sleeps through work that arrived meanwhile.
                w.separate.notify_waiters();
                w.deliver.notify_waiters();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        wakers
    }

    async fn listen(&self, manager: &Manager, channels: &[String; 2]) -> redis::RedisResult<()> {
        let mut pubsub = manager.client().await?.get_async_pubsub().await?;
        pubsub.subscribe(&channels[0]).await?;
        pubsub.subscribe(&channels[1]).await?;
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            if msg.get_channel_name() == channels[0] {
                self.separate.notify_waiters();
            } else {
                self.deliver.notify_waiters();
            }
        }
        Ok(())
    }

    /// The notifier of a stage.
    pub fn get(&self, stage: Stage) -> Arc<Notify> {
        match stage {
            Stage::Separate => self.separate.clone(),
            Stage::Deliver => self.deliver.clone(),
        }
    }
}
