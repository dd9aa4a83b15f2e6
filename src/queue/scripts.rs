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

#[cfg(test)]
mod tests {
    use crate::task::field;

    /// Every script, by file name.
    const SOURCES: [(&str, &str); 10] = [
        ("common.lua", include_str!("lua/common.lua")),
        ("enqueue.lua", include_str!("lua/enqueue.lua")),
        ("claim.lua", include_str!("lua/claim.lua")),
        ("heartbeat.lua", include_str!("lua/heartbeat.lua")),
        ("ack.lua", include_str!("lua/ack.lua")),
        ("fail.lua", include_str!("lua/fail.lua")),
        ("reap.lua", include_str!("lua/reap.lua")),
        ("promote.lua", include_str!("lua/promote.lua")),
        ("cancel.lua", include_str!("lua/cancel.lua")),
        ("requeue.lua", include_str!("lua/requeue.lua")),
    ];

    /// The arguments of each `redis.call(...)` in `lua`, split at top-level commas.
    fn calls(lua: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for (start, _) in lua.match_indices("redis.call(") {
            let (mut depth, mut args, mut arg) = (1, Vec::new(), String::new());
            let mut quoted = false;
            for c in lua[start + "redis.call(".len()..].chars() {
                match c {
                    '\'' => quoted = !quoted,
                    '(' | '{' if !quoted => depth += 1,
                    ')' | '}' if !quoted => depth -= 1,
                    ',' if !quoted && depth == 1 => {
                        args.push(std::mem::take(&mut arg).trim().to_string());
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                arg.push(c);
            }
            args.push(arg.trim().to_string());
            out.push(args);
        }
        out
    }

    /// The record fields the scripts name are exactly those `task::field` declares: a
    /// field renamed on one side only fails here.
    #[test]
    fn scripts_name_only_the_declared_record_fields() {
        let mut named = std::collections::BTreeSet::<String>::new();
        for (file, lua) in SOURCES {
            for args in calls(lua) {
                let fields: Vec<&String> = match args[0].trim_matches('\'') {
                    "HSET" => args.iter().skip(2).step_by(2).collect(),
                    "HGET" | "HINCRBY" | "HEXISTS" => args.iter().skip(2).take(1).collect(),
                    "HDEL" | "HMGET" => args.iter().skip(2).collect(),
                    _ => continue,
                };
                for f in fields {
                    // A literal; a variable (an ARGV) is checked where Rust passes it.
                    if let Some(name) = f.strip_prefix('\'').and_then(|f| f.strip_suffix('\'')) {
                        assert!(
                            field::ALL.contains(&name),
                            "{file}: record field {name:?} is not declared in task::field"
                        );
                        named.insert(name.to_string());
                    }
                }
            }
        }
        let never: Vec<_> = field::ALL.iter().filter(|f| !named.contains(**f)).collect();
        assert!(
            never.is_empty(),
            "declared but named by no script: {never:?}"
        );
    }
}
