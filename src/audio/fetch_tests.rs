//! The connect-time check, with a scripted resolver in place of the system's: what it
//! answers is what the client would connect to, and the loopback server below counts
//! every connection it gets.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;

use super::*;

/// Answers the n-th lookup with `answers[n]` (the last answer repeats) and counts them.
struct Script {
    answers: Vec<Vec<IpAddr>>,
    lookups: AtomicUsize,
    names: Mutex<Vec<String>>,
}

impl Script {
    fn new(answers: &[&[&str]]) -> Arc<Self> {
        Arc::new(Self {
            answers: answers
                .iter()
                .map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect())
                .collect(),
            lookups: AtomicUsize::new(0),
            names: Mutex::new(Vec::new()),
        })
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl Resolve for Script {
    fn resolve(&self, name: Name) -> Resolving {
        let n = self.lookups.fetch_add(1, Ordering::SeqCst);
        self.names.lock().unwrap().push(name.as_str().to_string());
        let answer = self.answers[n.min(self.answers.len() - 1)].clone();
        let addrs: Vec<SocketAddr> = answer
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 0))
            .collect();
        Box::pin(async move {
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// A loopback HTTP server on port 0 that answers every request with `hello` and counts
/// the connections it accepts.
struct Origin {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Origin {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                        )
                        .await;
                });
            }
        });
        Self { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn config(allow_private: bool, lookup: &Arc<Script>) -> FetchConfig {
    FetchConfig {
        policy: UrlPolicy { allow_private },
        max_bytes: 1 << 20,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        lookup: Lookup::Custom(lookup.clone()),
        ..FetchConfig::default()
    }
}

/// The service's client (it reads no proxy from the environment).
fn test_client(cfg: &FetchConfig) -> reqwest::Client {
    client(cfg, None)
}

async fn fetch(cfg: &FetchConfig, url: &str) -> (Result<(Url, u64), FetchError>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("source.audio");
    let r = download(&test_client(cfg), cfg, url, &dest).await;
    (r, dest.exists())
}

async fn first_lookup(cfg: &FetchConfig, host: &str) -> Result<Vec<SocketAddr>, UrlError> {
    let resolver = PolicyResolver::new(cfg.policy, cfg.lookup.clone());
    match resolver.resolve(Name::from_str(host).unwrap()).await {
        Ok(addrs) => Ok(addrs.collect()),
        Err(e) => Err(e
            .downcast_ref::<UrlError>()
            .expect("a policy error")
            .clone()),
    }
}

#[tokio::test]
async fn a_name_rebound_to_loopback_after_a_public_answer_is_refused_at_connect_time() {
    let origin = Origin::start().await;
    let dns = Script::new(&[&["93.184.215.14"], &["127.0.0.1"]]);
    let cfg = config(false, &dns);
    // First lookup (the submission's view): public, handed through unchanged.
    assert_eq!(
        first_lookup(&cfg, "media.rebind.test").await.unwrap(),
        ["93.184.215.14:0".parse::<SocketAddr>().unwrap()]
    );
    // Connect time: the name now points at the loopback origin.
    let url = format!("http://media.rebind.test:{}/song.wav", origin.port);
    let (r, written) = fetch(&cfg, &url).await;
    let err = r.unwrap_err();
    assert_eq!(err.code(), "private_address", "{err}");
    assert!(!err.retryable());
    match &err {
        FetchError::Policy(UrlError::PrivateAddress { host, addr }) => {
            assert_eq!(host, "media.rebind.test");
            assert_eq!(*addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        other => panic!("not the connect-time refusal: {other:?}"),
    }
    assert_eq!(dns.lookups(), 2, "the download looked the name up again");
    assert_eq!(dns.names.lock().unwrap()[1], "media.rebind.test");
    assert_eq!(origin.connections(), 0, "nothing reached the origin");
    assert!(!written, "nothing was written");
}

#[tokio::test]
async fn every_non_public_answer_is_refused_and_nothing_is_connected() {
    let origin = Origin::start().await;
    for answer in [
        &["127.0.0.1"][..],
        &["::ffff:127.0.0.1"],
        &["::1"],
        &["10.0.0.7"],
        &["169.254.169.254"],
        &["fd00:ec2::254"],
        // One bad address among public ones refuses the whole answer.
        &["93.184.215.14", "127.0.0.1"],
    ] {
        let dns = Script::new(&[answer]);
        let cfg = config(false, &dns);
        let url = format!("http://cdn.rebind.test:{}/a.wav", origin.port);
        let (r, _) = fetch(&cfg, &url).await;
        let err = r.unwrap_err();
        assert_eq!(err.code(), "private_address", "{answer:?}: {err}");
        assert_eq!(dns.lookups(), 1, "{answer:?}");
        let refused = first_lookup(&cfg, "cdn.rebind.test").await.unwrap_err();
        assert_eq!(refused.code(), "private_address", "{answer:?}");
    }
    assert_eq!(origin.connections(), 0);
}

#[tokio::test]
async fn public_answers_pass_through_unchanged() {
    let dns = Script::new(&[&["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8"]]);
    let cfg = config(false, &dns);
    let addrs: Vec<IpAddr> = first_lookup(&cfg, "example.com")
        .await
        .unwrap()
        .iter()
        .map(SocketAddr::ip)
        .collect();
    assert_eq!(addrs, dns.answers[0]);
}

/// The control: with the policy lifted the same scripted name is fetched from the
/// origin, so the refusals above are the policy's doing, not an unreachable server or
/// a resolver the client ignores.
#[tokio::test]
async fn with_private_networks_allowed_the_same_name_is_fetched() {
    let origin = Origin::start().await;
    let dns = Script::new(&[&["127.0.0.1"]]);
    let cfg = config(true, &dns);
    let url = format!("http://media.rebind.test:{}/song.wav", origin.port);
    let (r, written) = fetch(&cfg, &url).await;
    let (final_url, bytes) = r.unwrap();
    assert_eq!(final_url.as_str(), url);
    assert_eq!(bytes, 5);
    assert!(written);
    assert_eq!(dns.lookups(), 1);
    assert_eq!(origin.connections(), 1);
}

#[tokio::test]
async fn loopback_literals_are_refused_before_any_request() {
    let origin = Origin::start().await;
    let dns = Script::new(&[&["93.184.215.14"]]);
    let cfg = config(false, &dns);
    for host in [
        "127.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "0x7f.1",
    ] {
        let url = format!("http://{host}:{}/a.wav", origin.port);
        let (r, _) = fetch(&cfg, &url).await;
        assert_eq!(r.unwrap_err().code(), "private_address", "{url}");
    }
    assert_eq!(dns.lookups(), 0, "literals are not looked up");
    assert_eq!(origin.connections(), 0);
}

/// A loopback server that sends a 200 with a large `Content-Length`, then one byte
/// every `every`.
async fn trickle(every: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut chunk = [0u8; 1024];
                let _ = sock.read(&mut chunk).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
                if sock.write_all(head).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(every).await;
                    if sock.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_source_below_the_minimum_rate_or_past_the_deadline_is_cut_off_for_good() {
    let dns = Script::new(&[&["127.0.0.1"]]);
    let port = trickle(Duration::from_millis(50)).await;
    let url = format!("http://slow.example:{port}/song.wav");
    // About 20 bytes/s against a 1000 bytes/s minimum, judged after half a second.
    let cfg = FetchConfig {
        min_bytes_per_second: 1000,
        min_rate_after: Duration::from_millis(500),
        ..config(true, &dns)
    };
    let t = std::time::Instant::now();
    let (r, written) = fetch(&cfg, &url).await;
    let err = r.unwrap_err();
    assert!(matches!(err, FetchError::TooSlow(_)), "{err:?}");
    assert_eq!(err.code(), "audio_timeout");
    assert!(!err.retryable(), "the same slow source is not tried again");
    assert!(
        err.to_string().contains("FETCH_MIN_BYTES_PER_SECOND"),
        "{err}"
    );
    assert!(!written, "the partial download was removed");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The rate is met (a 1 B/s minimum), so the total deadline ends it.
    let cfg = FetchConfig {
        min_bytes_per_second: 1,
        min_rate_after: Duration::from_millis(100),
        total_timeout: Duration::from_millis(800),
        ..config(true, &dns)
    };
    let (r, written) = fetch(&cfg, &url).await;
    let err = r.unwrap_err();
    assert_eq!((err.code(), err.retryable()), ("audio_timeout", false));
    assert!(
        err.to_string().contains("FETCH_TOTAL_TIMEOUT_SECONDS"),
        "{err}"
    );
    assert!(!written);
    // Control: with neither limit in reach the same source is read until it is cut
    // by the read timeout, which stays retryable.
    let cfg = FetchConfig {
        min_bytes_per_second: 0,
        read_timeout: Duration::from_millis(20),
        ..config(true, &dns)
    };
    let (r, _) = fetch(&cfg, &url).await;
    let err = r.unwrap_err();
    assert_eq!(
        (err.code(), err.retryable()),
        ("audio_timeout", true),
        "{err}"
    );
}

/// `OUTBOUND_PROXY` may name a host on a private network (the operator's own proxy): its
/// address is not judged, while targets keep their literal checks.
#[tokio::test]
async fn a_named_outbound_proxy_on_a_private_address_is_used() {
    let proxy = Origin::start().await;
    let dns = Script::new(&[&["127.0.0.1"]]);
    let cfg = FetchConfig {
        proxy: Some(Url::parse(&format!("http://proxy.internal:{}", proxy.port)).unwrap()),
        ..config(false, &dns)
    };
    let (r, written) = fetch(&cfg, "http://93.184.215.14/song.wav").await;
    let (_, bytes) = r.unwrap();
    assert_eq!((bytes, written), (5, true));
    assert_eq!(proxy.connections(), 1, "through the proxy");
    assert_eq!(dns.names.lock().unwrap().as_slice(), ["proxy.internal"]);
    // A private target is still refused before any request.
    let (r, _) = fetch(&cfg, "http://10.0.0.7/song.wav").await;
    assert_eq!(r.unwrap_err().code(), "private_address");
    assert_eq!(proxy.connections(), 1);
    // Without the exemption the same proxy name is refused like any other.
    let other = FetchConfig {
        proxy: None,
        ..config(false, &dns)
    };
    let (r, _) = fetch(&other, &format!("http://proxy.internal:{}/x", proxy.port)).await;
    assert_eq!(r.unwrap_err().code(), "private_address");
}

/// Errors name the URL as it may be shown: no user info, no query values.
#[tokio::test]
async fn errors_show_the_url_without_its_secrets() {
    let dns = Script::new(&[&["127.0.0.1"]]);
    let cfg = config(true, &dns);
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://gone.example:{port}/a.wav?token=s3cret-t0ken");
    let (r, _) = fetch(&cfg, &url).await;
    let text = r.unwrap_err().to_string();
    assert!(!text.contains("s3cret-t0ken"), "{text}");
    assert!(text.contains("/a.wav?token=REDACTED"), "{text}");
}

#[tokio::test]
async fn a_webhook_to_a_rebound_name_is_refused_at_connect_time() {
    let origin = Origin::start().await;
    let dns = Script::new(&[&["127.0.0.1"]]);
    let cfg = config(false, &dns);
    let webhook =
        crate::pipeline::webhook::WebhookConfig::from_test_env(&crate::config::Env::from_pairs([
            ("WEBHOOK_SECRET", "test-webhook-secret-0123456789-abcdefgh"),
        ]))
        .unwrap();
    let url = format!("http://hooks.rebind.test:{}/hook", origin.port);
    let (attempt, r) = crate::pipeline::webhook::send(
        &test_client(&cfg),
        &cfg,
        &webhook,
        &url,
        "0190a2b4-0000-7000-8000-000000000000",
        b"{}",
    )
    .await;
    let err = r.unwrap_err();
    assert_eq!(err.code, "webhook_refused", "{err}");
    assert!(!err.retryable);
    assert!(err.message.contains("127.0.0.1"), "{}", err.message);
    assert_eq!(attempt.outcome, "failed");
    assert_eq!(dns.lookups(), 1);
    assert_eq!(origin.connections(), 0);
}
