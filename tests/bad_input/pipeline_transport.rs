//! The pipeline against hostile transports: missing files, sources over the size and duration
//! caps, redirect chains, trickling sources, oversized outputs, proxies in the environment,
//! and redirects into private space.

use std::time::{Duration, Instant};

use super::fixtures;
use super::pipeline_cases::{End, LIMITS, Source, pipe, run_pipeline_table};
use crate::common::e2e::{Deployment, Peer, Silence};

/// Transport-level input: missing files, an hour of silence against the size and duration
/// caps (streamed, with and without `Content-Length`), redirect chains and broken redirects.
#[actix_rt::test]
async fn pipeline_limits_and_redirect_chains_end_with_stable_codes() {
    use End::{Fail, Ok};
    let origin = Peer::start();
    let dep = Deployment::new(&LIMITS);
    let hour = |rate, channels, content_length, unknown_length| {
        Source::Stream(Silence {
            rate,
            channels,
            seconds: 3600,
            content_length,
            unknown_length,
        })
    };
    let song = Some("/audio/shared".to_string());
    origin.put("shared", fixtures::tone(0.5, 44_100));
    let cases = vec![
        pipe("404 Not Found", Source::Missing, Fail("audio_http_status")),
        pipe(
            "an hour of silence, 8 kHz mono (57.6 MB, under the byte cap)",
            hour(8000, 1, true, false),
            Fail("audio_too_long"),
        ),
        pipe(
            "an hour of silence, 8 kHz mono, length unknown (cap hit while decoding)",
            hour(8000, 1, false, true),
            Fail("audio_too_long"),
        ),
        pipe(
            "an hour of silence, 44.1 kHz stereo (635 MB), Content-Length",
            hour(44_100, 2, true, false),
            Fail("audio_too_large"),
        ),
        pipe(
            "an hour of silence, 44.1 kHz stereo (635 MB), chunked",
            hour(44_100, 2, false, false),
            Fail("audio_too_large"),
        ),
        pipe(
            "5 redirects (the limit)",
            Source::Redirects {
                hops: 4,
                then: song.clone(),
            },
            Ok(0.5),
        ),
        pipe(
            "6 redirects",
            Source::Redirects {
                hops: 5,
                then: song.clone(),
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect loop",
            Source::Redirects {
                hops: 0,
                then: Some("{self}".into()),
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect without Location",
            Source::Redirects {
                hops: 1,
                then: None,
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect to an unparseable URL",
            Source::Redirects {
                hops: 0,
                then: Some("http://[::1".into()),
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect to ftp:",
            Source::Redirects {
                hops: 0,
                then: Some("ftp://127.0.0.1:{port}/a.wav".into()),
            },
            Fail("unsupported_scheme"),
        ),
        pipe(
            "a redirect to file:",
            Source::Redirects {
                hops: 1,
                then: Some("file:///etc/passwd".into()),
            },
            Fail("unsupported_scheme"),
        ),
        pipe(
            "a redirect to a 404",
            Source::Redirects {
                hops: 0,
                then: Some("/audio/none".into()),
            },
            Fail("audio_http_status"),
        ),
        pipe(
            "control: a valid song after all of the above",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
    ];
    run_pipeline_table(&dep, &origin, &origin.base, &origin.base, cases).await;
}

/// What one task may take: a source that trickles its bytes is cut off by the total deadline
/// (`FETCH_TOTAL_TIMEOUT_SECONDS`) with `audio_timeout` after one attempt, instead of holding
/// a processor for as long as it keeps each gap under the idle timeout; stems that would
/// pass `MAX_OUTPUT_BYTES` fail with `output_too_large`, before writing when the length is
/// known and as they grow when it is not, leaving nothing behind. And the proxy variables of
/// the environment are not obeyed: every one of them names a decoy proxy that would answer
/// 404, and the song and the webhooks still go directly.
#[actix_rt::test]
async fn pipeline_bounds_slow_sources_and_large_outputs_and_ignores_environment_proxies() {
    use End::{Fail, Ok};
    let origin = Peer::start();
    let decoy = Peer::start();
    let dep = Deployment::new(&[
        LIMITS[0],
        LIMITS[1],
        ("FETCH_TOTAL_TIMEOUT_SECONDS", "3"),
        // Two 16-bit stems of about 5.6 s (176,400 bytes per second each).
        ("MAX_OUTPUT_BYTES", "2000000"),
        ("http_proxy", decoy.base.as_str()),
        ("HTTP_PROXY", decoy.base.as_str()),
        ("https_proxy", decoy.base.as_str()),
        ("all_proxy", decoy.base.as_str()),
        ("ALL_PROXY", decoy.base.as_str()),
    ]);
    let started = Instant::now();
    let cases = vec![
        pipe(
            "a byte every 400 ms, well inside the idle timeout",
            Source::Trickle(400),
            Fail("audio_timeout"),
        ),
        pipe(
            "control: a song, with proxies in the environment",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
        pipe(
            "10 s: two stems over MAX_OUTPUT_BYTES, known before writing",
            Source::File(fixtures::tone(10.0, 44_100)),
            Fail("output_too_large"),
        ),
        pipe(
            "10 s of unknown length: over MAX_OUTPUT_BYTES while writing",
            Source::Stream(Silence {
                rate: 44_100,
                channels: 2,
                seconds: 10,
                content_length: false,
                unknown_length: true,
            }),
            Fail("output_too_large"),
        ),
        pipe(
            "control: 5 s, within the budget",
            Source::File(fixtures::tone(5.0, 44_100)),
            Ok(5.0),
        ),
    ];
    run_pipeline_table(&dep, &origin, &origin.base, &origin.base, cases).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the trickling source was not cut off at its deadline"
    );
    assert_eq!(
        decoy.audio_requests(),
        Vec::<String>::new(),
        "a request went through an environment proxy"
    );
    assert_eq!(origin.audio_requests().len(), 3);
}

/// Redirects into private space, with the address policy on. The origin is reached through a
/// forward proxy under a name that resolves nowhere (see the crate documentation); every
/// redirect target below would serve a valid song if the policy let the request through.
#[actix_rt::test]
async fn pipeline_refuses_redirects_into_private_space() {
    use End::{Fail, Ok};
    let origin = Peer::start();
    let dep = Deployment::new(&[
        LIMITS[0],
        LIMITS[1],
        ("ALLOW_PRIVATE_NETWORKS", "false"),
        ("OUTBOUND_PROXY", origin.base.as_str()),
    ]);
    origin.put("shared", fixtures::tone(0.5, 44_100));
    let to = |target: &str| Source::Redirects {
        hops: 0,
        then: Some(target.to_string()),
    };
    let private = Fail("private_address");
    let cases = vec![
        pipe(
            "control: the song through the proxy",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
        pipe(
            "control: two public redirects",
            Source::Redirects {
                hops: 1,
                then: Some("/audio/shared".into()),
            },
            Ok(0.5),
        ),
        pipe(
            "to 127.0.0.1",
            to("http://127.0.0.1:{port}/audio/shared"),
            private,
        ),
        pipe("to 127.1", to("http://127.1:{port}/audio/shared"), private),
        pipe(
            "to 0x7f000001",
            to("http://0x7f000001:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to 2130706433",
            to("http://2130706433:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to 0.0.0.0",
            to("http://0.0.0.0:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to localhost",
            to("http://localhost:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to a subdomain of localhost",
            to("http://a.localhost:{port}/audio/shared"),
            private,
        ),
        pipe("to [::1]", to("http://[::1]:{port}/audio/shared"), private),
        pipe(
            "to [::ffff:127.0.0.1]",
            to("http://[::ffff:127.0.0.1]:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to userinfo@127.0.0.1",
            to("http://good@127.0.0.1:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to a percent-encoded 127.0.0.1",
            to("http://%31%32%37.0.0.1:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to 169.254.169.254 (metadata)",
            to("http://169.254.169.254/latest/meta-data/"),
            private,
        ),
        pipe(
            "to [fd00:ec2::254] (metadata)",
            to("http://[fd00:ec2::254]/latest/meta-data/"),
            private,
        ),
        pipe(
            "to 100.100.100.200 (metadata)",
            to("http://100.100.100.200/latest/meta-data/"),
            private,
        ),
        pipe("to 10.0.0.1", to("http://10.0.0.1/a.wav"), private),
        pipe("to 100.64.0.1", to("http://100.64.0.1/a.wav"), private),
        pipe("to [fd00::1]", to("http://[fd00::1]/a.wav"), private),
        pipe(
            "two public hops, then 127.0.0.1",
            Source::Redirects {
                hops: 2,
                then: Some("http://127.0.0.1:{port}/audio/shared".into()),
            },
            private,
        ),
        pipe(
            "to file:",
            to("file:///etc/passwd"),
            Fail("unsupported_scheme"),
        ),
        pipe(
            "to gopher: on loopback",
            to("gopher://127.0.0.1:{port}/_GET"),
            Fail("unsupported_scheme"),
        ),
        pipe(
            "control: a valid song after all of the above",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
    ];
    run_pipeline_table(
        &dep,
        &origin,
        "http://audio.invalid",
        "http://hooks.invalid",
        cases,
    )
    .await;
}
