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

    /// The child half of [`a_spent_budget_exits_the_process_with_70`]: an actor under actix's
    /// `Supervisor` that stops as soon as it has started (as a worker does after a panicked
    /// task), its starts counted against the policy of the actor it stands for.
    struct Crashing {
        tracker: RestartTracker,
    }

    impl actix::Actor for Crashing {
        type Context = actix::Context<Self>;

        fn started(&mut self, ctx: &mut Self::Context) {
            println!("crashing actor started");
            if let Verdict::ResumeAfter(_) = self.tracker.on_start() {
                actix::ActorContext::stop(ctx);
            }
        }
    }

    impl actix::Supervised for Crashing {}

    const CHILD: &str = "UVR_SUPERVISE_TEST_CHILD";
    const NAME: &str = "supervise::tests::a_spent_budget_exits_the_process_with_70";

    /// Each actor's supervised restarts past its budget end the process with status 70 (the
    /// orchestrator then restarts it whole): the first start, `budget` restarts, and the one
    /// that spends the budget. Run in a child process (this test binary again).
    #[test]
    fn a_spent_budget_exits_the_process_with_70() {
        if let Ok(actor) = std::env::var(CHILD) {
            let actor: &'static str = Box::leak(actor.into_boxed_str());
            let system = actix::System::new();
            // The address is kept, as the service keeps its actors' (actix restarts only an
            // actor someone can still reach).
            let _addr = system.block_on(async move {
                actix::Supervisor::start(move |_| Crashing {
                    tracker: RestartTracker::new(actor, policy(actor)),
                })
            });
            system.run().unwrap();
            unreachable!("a spent budget exits the process");
        }
        for actor in ["scheduler", "intake", "separator", "uploader"] {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, actor)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{actor}: still running after 60 s of restarts");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut out = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
            assert_eq!(status.code(), Some(70), "{actor}: {status:?}");
            // (Counted in the whole output: libtest's "test ... " shares the first line.)
            let starts = out.matches("crashing actor started").count();
            assert_eq!(starts as u32, policy(actor).budget + 2, "{actor}");
        }
    }
}
