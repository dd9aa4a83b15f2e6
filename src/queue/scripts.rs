//! The Lua scripts, loaded with `include_str!` and sent as EVALSHA (EVAL on first use).
//! Each script file opens with its `KEYS[n]` / `ARGV[n]` contract; `common.lua` (server
//! time, the enqueue clock, the seed's score) is prepended to each.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            "\n",
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// Every atomic move of the queue.
pub(super) struct Scripts {
    pub enqueue: Script,
    pub claim: Script,
    pub heartbeat: Script,
    pub ack: Script,
    pub fail: Script,
    pub reap: Script,
    pub promote: Script,
    pub cancel: Script,
    pub requeue: Script,
}

impl Scripts {
    pub fn load() -> Self {
        Self {
            enqueue: script!("enqueue.lua"),
            claim: script!("claim.lua"),
            heartbeat: script!("heartbeat.lua"),
            ack: script!("ack.lua"),
            fail: script!("fail.lua"),
            reap: script!("reap.lua"),
            promote: script!("promote.lua"),
            cancel: script!("cancel.lua"),
            requeue: script!("requeue.lua"),
        }
    }
}
