//! `/metrics` in a process of its own: the Prometheus recorder is global to a process, so
//! counters asserted here must not be moved by the other API tests running in parallel.

mod common;

use common::client::{ApiClient, Auth};
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
    let app = spawn_app(&[]).await;
    let client = ApiClient::for_app(&app.base);
    let anonymous = client.with_auth(Auth::None);
    let scrape = || async { anonymous.get("/metrics").await.text().await.unwrap() };
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
    let depth5 = |t: &str| {
        metric(
            t,
            "uvr_queue_depth",
            &[("stage", "separate"), ("priority", "5")],
        )
    };
    let first = client.generate(&seed_body(5)).await;
    assert_eq!(first.status(), 202);
    let id = first.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(client.generate(&seed_body(5)).await.status(), 202);
    assert_eq!(client.generate(&seed_body(9)).await.status(), 422);
    // This app has a Redis of its own: the gauge is sampled from it on every scrape.
    assert_eq!(depth5(&before), 0.0, "empty queue before");
    let after = scrape().await;
    assert_eq!(
        depth5(&after),
        2.0,
        "the two accepted priority-5 tasks wait"
    );
    for p in ["1", "2", "3", "4"] {
        assert_eq!(
            metric(
                &after,
                "uvr_queue_depth",
                &[("stage", "separate"), ("priority", p)]
            ),
            0.0,
            "priority {p}"
        );
    }
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
    assert!(after.contains("uvr_http_request_duration_seconds_bucket"));

    // Task routes are labelled by their template, never by the id in the path. (In the same
    // test as the rest: a second test in this process would move the same counters.)
    let missing = "0190a2b4-0000-7000-8000-00000000abcd";
    let tasks = |t: &str, status: &str| {
        metric(
            t,
            "uvr_http_requests_total",
            &[
                ("route", "/tasks/{id}"),
                ("method", "GET"),
                ("status", status),
            ],
        )
    };
    let before = after;
    assert_eq!(client.get(&format!("/tasks/{id}")).await.status(), 200);
    assert_eq!(client.get(&format!("/tasks/{id}")).await.status(), 200);
    assert_eq!(client.get(&format!("/tasks/{missing}")).await.status(), 404);
    let after = scrape().await;
    // The requests were counted, under the route template.
    assert_eq!(tasks(&after, "200") - tasks(&before, "200"), 2.0);
    assert_eq!(tasks(&after, "404") - tasks(&before, "404"), 1.0);
    // And no id (existing or not) appears anywhere in the exposition.
    for needle in [id.as_str(), missing] {
        assert!(!after.contains(needle), "{needle} in the metrics");
    }
    // Every route label is a template of the API.
    const TEMPLATES: &[&str] = &[
        "/generate",
        "/tasks/{id}",
        "/queue",
        "/models",
        "/health",
        "/livez",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/files/{task}/{name}",
        "/",
        "unmatched",
    ];
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, rest)) = line.split_once("route=\"") {
            let route = &rest[..rest.find('"').unwrap()];
            assert!(TEMPLATES.contains(&route), "{line}");
        }
    }
}

/// A process without the API serves `/metrics` and `/livez` on `METRICS_PORT` with the API's
/// own handlers: the token closes `/metrics`, the queue gauges are refreshed before the
/// answer, `/livez` answers as the API's does, and the listener goes away with the process.
#[actix_rt::test]
async fn a_process_without_the_api_serves_metrics_on_its_own_port() {
    let redis = common::RedisServer::start();
    let staging = tempfile::tempdir().unwrap();
    let token = "scrape-token-0123456789abcdef";
    let env = uvr::config::Env::from_pairs([
        ("UVR_ROLES", "processor".to_string()),
        ("REDIS_URL", redis.url()),
        ("MODELS_DIR", "/nonexistent".into()),
        ("STAGING_DIR", staging.path().display().to_string()),
        ("METRICS_PORT", "0".into()),
        ("METRICS_TOKEN", token.into()),
    ]);
    let settings = uvr::settings::Settings::from_env(&env, None).unwrap();
    assert!(settings.api.is_none() && settings.processor.is_some());
    let service = uvr::service::Service::start_as(settings, "metrics-only")
        .await
        .unwrap();
    assert!(service.api_addr.is_none());
    let base = format!(
        "http://{}",
        service.metrics_addr.expect("a metrics listener")
    );
    let stopper = service.stopper();
    let running = actix_rt::spawn(service.run());
    let scraper = ApiClient::new(&base, Auth::bearer(token));
    let anonymous = scraper.with_auth(Auth::None);

    let open = anonymous.get("/metrics").await;
    assert_eq!(open.status(), 401);
    assert_eq!(
        open.headers()["www-authenticate"],
        "Bearer realm=\"metrics\""
    );
    let scraped = scraper.get("/metrics").await;
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    assert_eq!(metric(&text, "uvr_redis_up", &[]), 1.0, "{text}");
    let live = anonymous.get("/livez").await;
    assert_eq!(live.status(), 200);
    let body: serde_json::Value = live.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    stopper.drain();
    running.await.unwrap().unwrap();
    let after = reqwest::Client::new().get(format!("{base}/livez")).send();
    assert!(
        after.await.is_err(),
        "the listener stopped with the process"
    );
}
