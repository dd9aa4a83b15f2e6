//! Restart policies of the actors, declared in one place.
//!
//! actix's `Supervisor` restarts an actor whenever it stops; supervision assumes the message
//! in flight is lost, which is fine because every piece of state that matters lives in
//! Redis (a task whose worker died comes back when its lease expires). On top of that each
//! actor gets a [`RestartPolicy`]: a growing delay before it resumes work after a restart,
//! and a budget of restarts per window; when the budget is spent the process exits with a
//! non-zero status so that the orchestrator (systemd, Docker, Kubernetes) restarts it whole.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What happens when an actor restarts more often than its budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// Exit the process with this status.
    ExitProcess(i32),
    /// Keep the actor stopped (tests; it stays visible in `uvr_actor_restarts_total`).
    StayDown,
}

/// A restart policy.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Delay before resuming after the first restart; doubles with each restart in the window.
    pub backoff: Duration,
    /// Longest delay.
    pub backoff_max: Duration,
    /// Restarts allowed within `window`.
    pub budget: u32,
    /// The budget's window.
    pub window: Duration,
    /// What happens when the budget is spent.
    pub on_exhausted: Exhausted,
}

/// The policy of each actor.
pub fn policy(actor: &str) -> RestartPolicy {
    match actor {
        // The Scheduler and the Intake hold no work of their own (their state is in Redis):
        // they serve again at once, and only the budget applies.
        "scheduler" | "intake" => RestartPolicy {
            backoff: Duration::ZERO,
            backoff_max: Duration::ZERO,
            budget: 20,
            window: Duration::from_secs(60),
            on_exhausted: Exhausted::ExitProcess(70),
        },
        // Workers: a panic in a model or a poisoned input; back off harder.
        _ => RestartPolicy {
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            budget: 10,
            window: Duration::from_secs(300),
            on_exhausted: Exhausted::ExitProcess(70),
        },
    }
}

/// Counts restarts against a policy.
#[derive(Debug)]
pub struct RestartTracker {
    actor: &'static str,
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    /// Total starts (first start included).
    pub starts: u64,
}

/// The tracker's verdict on a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Resume after this delay.
    ResumeAfter(Duration),
    /// The budget is spent: stay down (the process exit, if the policy says so, has been
    /// requested already).
    GiveUp,
}

impl RestartTracker {
    /// A tracker for `actor` with `policy`.
    pub fn new(actor: &'static str, policy: RestartPolicy) -> Self {
        Self {
            actor,
            policy,
            recent: VecDeque::new(),
            starts: 0,
        }
    }

    /// Records a start; after the first, returns how long to wait before working again.
    pub fn on_start(&mut self) -> Verdict {
        self.starts += 1;
        crate::metrics::actor_started(self.actor);
        if self.starts == 1 {
            return Verdict::ResumeAfter(Duration::ZERO);
        }
        crate::metrics::actor_restarted(self.actor);
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let n = self.recent.len() as u32;
        if n > self.policy.budget {
            tracing::error!(actor = self.actor, restarts = n, window = ?self.policy.window,
                "restart budget spent");
            if let Exhausted::ExitProcess(code) = self.policy.on_exhausted {
                std::process::exit(code);
            }
            return Verdict::GiveUp;
        }
        let delay = self
            .policy
            .backoff
            .saturating_mul(1 << (n - 1).min(16))
            .min(self.policy.backoff_max);
        tracing::warn!(actor = self.actor, restarts = n, ?delay, "actor restarted");
        Verdict::ResumeAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_the_budget_ends_it() {
        let mut t = RestartTracker::new(
            "test",
            RestartPolicy {
                backoff: Duration::from_millis(10),
                backoff_max: Duration::from_millis(25),
                budget: 3,
                window: Duration::from_secs(60),
                on_exhausted: Exhausted::StayDown,
            },
        );
        assert_eq!(t.on_start(), Verdict::ResumeAfter(Duration::ZERO));
        assert_eq!(
            t.on_start(),
            Verdict::ResumeAfter(Duration::from_millis(10))
        );
        assert_eq!(
            t.on_start(),
            Verdict::ResumeAfter(Duration::from_millis(20))
        );
        assert_eq!(
            t.on_start(),
            Verdict::ResumeAfter(Duration::from_millis(25))
        );
        assert_eq!(t.on_start(), Verdict::GiveUp);
        assert_eq!(t.starts, 5);
    }
}
