//! Every metric of the service, in one place: names prefixed `uvr_`, help text, units and
//! explicit buckets. Labels are bounded (route template, method, status, stage, priority,
//! outcome, actor); never a task id or a URL.

use std::sync::OnceLock;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::queue::{Maintenance, Outcome, QueueStats, StageStats};
/// The queue's own counters (named beside the code that counts them).
pub use crate::queue::{REDIS_READONLY_REPLAYS, REDIS_REPLICATION_SHORTFALLS};
use crate::task::Priority;

/// HTTP requests handled, by route template, method and status.
pub const HTTP_REQUESTS: &str = "uvr_http_requests_total";
/// HTTP request latency in seconds, by route template and method.
pub const HTTP_DURATION: &str = "uvr_http_request_duration_seconds";
/// Tasks accepted into the queue, by priority.
pub const TASKS_ENQUEUED: &str = "uvr_tasks_enqueued_total";
/// Requests refused before enqueue, by error code.
pub const TASKS_REJECTED: &str = "uvr_tasks_rejected_total";
/// Tasks waiting, by stage and priority (sampled on `/metrics`, `/queue` and `/health`).
pub const QUEUE_DEPTH: &str = "uvr_queue_depth";
/// Tasks claimed by workers, by stage.
pub const QUEUE_IN_FLIGHT: &str = "uvr_queue_in_flight";
/// Tasks waiting for a retry, by stage.
pub const QUEUE_DELAYED: &str = "uvr_queue_delayed";
/// Dead letters kept, by stage.
pub const QUEUE_DEAD: &str = "uvr_queue_dead_letters";
/// Age of the oldest waiting task, by stage.
pub const QUEUE_OLDEST: &str = "uvr_queue_oldest_wait_seconds";
/// Time from entering a stage queue to being claimed, by stage.
pub const WAIT_TIME: &str = "uvr_queue_wait_seconds";
/// Stage outcomes (advanced, finished, retrying, dead_lettered, cancelled), by stage.
pub const OUTCOMES: &str = "uvr_task_outcomes_total";
/// Maintenance moves (requeued, dead_lettered, promoted).
pub const MAINTENANCE: &str = "uvr_queue_maintenance_total";
/// Actor starts, by actor.
pub const ACTOR_STARTS: &str = "uvr_actor_starts_total";
/// Actor restarts by their supervisor, by actor.
pub const ACTOR_RESTARTS: &str = "uvr_actor_restarts_total";
/// Whether Redis answered the last probe (1) or not (0).
pub const REDIS_UP: &str = "uvr_redis_up";
/// Webhook delivery attempts, by outcome (delivered, retry, failed, gone).
pub const WEBHOOK_DELIVERIES: &str = "uvr_webhook_deliveries_total";
/// Client addresses throttled for failed logins (`AUTH_FAILURES_PER_MINUTE` reached).
pub const AUTH_THROTTLED: &str = "uvr_auth_throttled_addresses_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS)
                .expect("valid buckets")
                .set_buckets_for_metric(Matcher::Full(WAIT_TIME.into()), WAIT_BUCKETS)
                .expect("valid buckets")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests handled, by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route template and method."
    );
    describe_counter!(
        TASKS_ENQUEUED,
        Unit::Count,
        "Tasks accepted into the queue, by priority."
    );
    describe_counter!(
        TASKS_REJECTED,
        Unit::Count,
        "Submissions refused before enqueue, by error code."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Tasks waiting, by stage and priority."
    );
    describe_gauge!(
        QUEUE_IN_FLIGHT,
        Unit::Count,
        "Tasks claimed by a worker, by stage."
    );
    describe_gauge!(
        QUEUE_DELAYED,
        Unit::Count,
        "Tasks waiting for a retry, by stage."
    );
    describe_gauge!(QUEUE_DEAD, Unit::Count, "Dead letters kept, by stage.");
    describe_gauge!(
        QUEUE_OLDEST,
        Unit::Seconds,
        "Age of the oldest waiting task, by stage."
    );
    describe_histogram!(
        WAIT_TIME,
        Unit::Seconds,
        "Time from entering a stage queue to being claimed, by stage."
    );
    describe_counter!(
        OUTCOMES,
        Unit::Count,
        "Stage outcomes, by stage and outcome."
    );
    describe_counter!(MAINTENANCE, Unit::Count, "Reaper and retry moves, by kind.");
    describe_counter!(ACTOR_STARTS, Unit::Count, "Actor starts, by actor.");
    describe_counter!(
        WEBHOOK_DELIVERIES,
        Unit::Count,
        "Webhook delivery attempts, by outcome."
    );
    describe_counter!(
        AUTH_THROTTLED,
        Unit::Count,
        "Client addresses throttled after too many failed logins."
    );
    describe_counter!(
        ACTOR_RESTARTS,
        Unit::Count,
        "Actor restarts by their supervisor, by actor."
    );
    describe_gauge!(
        REDIS_UP,
        Unit::Count,
        "1 when Redis answered the last probe, else 0."
    );
    describe_counter!(
        REDIS_READONLY_REPLAYS,
        Unit::Count,
        "Commands replayed on the master after a demoted one answered READONLY (failover)."
    );
    describe_counter!(
        REDIS_REPLICATION_SHORTFALLS,
        Unit::Count,
        "Submissions refused because fewer than REDIS_WAIT_REPLICAS replicas confirmed them."
    );
}

/// Counts one webhook delivery attempt (`outcome` as recorded on the task).
pub fn webhook_delivery(outcome: &'static str) {
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// Counts a client address that reached the failed-login limit.
pub fn auth_throttled() {
    counter!(AUTH_THROTTLED).increment(1);
}

/// Records one HTTP request.
pub fn http_request(route: &'static str, method: &'static str, status: u16, seconds: f64) {
    counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "route" => route, "method" => method).record(seconds);
}

/// Records an accepted task.
pub fn task_enqueued(priority: Priority) {
    counter!(TASKS_ENQUEUED, "priority" => priority.to_string()).increment(1);
}

/// Records a refused submission.
pub fn task_rejected(code: &'static str) {
    counter!(TASKS_REJECTED, "code" => code).increment(1);
}

/// Records the wait of a claimed task.
pub fn waited(stage: &'static str, seconds: f64) {
    histogram!(WAIT_TIME, "stage" => stage).record(seconds.max(0.0));
}

/// Records a stage outcome.
pub fn outcome(stage: &'static str, outcome: Outcome) {
    let label = match outcome {
        Outcome::Advanced => "advanced",
        Outcome::Finished => "finished",
        Outcome::Retrying => "retrying",
        Outcome::DeadLettered => "dead_lettered",
        Outcome::Cancelled => "cancelled",
    };
    counter!(OUTCOMES, "stage" => stage, "outcome" => label).increment(1);
}

/// Records a maintenance pass.
pub fn maintenance(m: &Maintenance) {
    counter!(MAINTENANCE, "kind" => "requeued").increment(m.requeued);
    counter!(MAINTENANCE, "kind" => "dead_lettered").increment(m.dead_lettered);
    counter!(MAINTENANCE, "kind" => "promoted").increment(m.promoted);
}

/// Records an actor start.
pub fn actor_started(actor: &'static str) {
    counter!(ACTOR_STARTS, "actor" => actor).increment(1);
}

/// Records an actor restart.
pub fn actor_restarted(actor: &'static str) {
    counter!(ACTOR_RESTARTS, "actor" => actor).increment(1);
}

/// Records Redis reachability.
pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// Publishes queue statistics as gauges.
pub fn queue_stats(stats: &QueueStats) {
    stage_gauges("separate", &stats.separate);
    stage_gauges("deliver", &stats.deliver);
}

fn stage_gauges(stage: &'static str, s: &StageStats) {
    for (priority, n) in &s.waiting_by_priority {
        gauge!(QUEUE_DEPTH, "stage" => stage, "priority" => priority.clone()).set(*n as f64);
    }
    gauge!(QUEUE_IN_FLIGHT, "stage" => stage).set(s.in_flight as f64);
    gauge!(QUEUE_DELAYED, "stage" => stage).set(s.delayed as f64);
    gauge!(QUEUE_DEAD, "stage" => stage).set(s.dead as f64);
    gauge!(QUEUE_OLDEST, "stage" => stage).set(s.oldest_wait_seconds);
}
