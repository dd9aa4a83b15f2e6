//! `/metrics` in a process of its own: the Prometheus recorder is global to a process, so
//! counters asserted here must not be moved by the other API tests running in parallel.

mod common;

use common::{seed_body, spawn_app};

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[actix_rt::test]
async fn metrics_parse_and_counters_move() {
    let app = spawn_app(&[]);
    let scrape = || async {
        app.client
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    let accepted = |t: &str| {
        metric(
            t,
            "uvr_http_requests_total",
            &[("route", "/generate"), ("status", "202")],
        )
    };
    let enq5 = |t: &str| metric(t, "uvr_tasks_enqueued_total", &[("priority", "5")]);
    let rejected = |t: &str| metric(t, "uvr_tasks_rejected_total", &[("code", "out_of_range")]);
    assert_eq!(app.generate(&seed_body(5)).await.status(), 202);
    assert_eq!(app.generate(&seed_body(5)).await.status(), 202);
    assert_eq!(app.generate(&seed_body(9)).await.status(), 422);
    let after = scrape().await;
    assert_eq!(accepted(&after) - accepted(&before), 2.0);
    assert_eq!(enq5(&after) - enq5(&before), 2.0);
    assert_eq!(rejected(&after) - rejected(&before), 1.0);
    // Every sample line parses: name{labels} value.
    for line in after
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(line.starts_with("uvr_"), "{line}");
    }
    assert!(after.contains("# HELP uvr_http_request_duration_seconds"));
    assert!(
        metric(
            &after,
            "uvr_queue_depth",
            &[("stage", "separate"), ("priority", "5")]
        ) >= 0.0
    );
    assert!(after.contains("uvr_http_request_duration_seconds_bucket"));
    assert!(!after.contains("/tasks/0"), "no ids in labels");
}
