//! Fetching audio (and, with the same client rules, calling webhooks).
//!
//! The address policy of the Intake is enforced again here, at connect time: the HTTP client
//! resolves names through [`PolicyResolver`], which checks every address a name resolves to
//! and hands the connector only checked addresses (so a DNS answer that changed since the
//! submission is caught); IP literals are checked before the request. Redirects are followed
//! by hand, at most [`MAX_REDIRECTS`], each target checked again. Downloads stream to a file
//! with a size cap, a connect timeout, a read (idle) timeout, a total deadline and a minimum
//! average rate (so a source trickling a byte just inside the idle timeout cannot hold a
//! processor). Proxies from the environment (`http_proxy`...) are ignored: a proxy would
//! connect in place of the policy-checked resolver; `OUTBOUND_PROXY` names one explicitly.
//!
//! Where the answers come from is a [`Lookup`]: the system resolver in the service, a scripted
//! one in tests (a name whose answer changes between two lookups, as in DNS rebinding). The
//! policy judges whatever it answers.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::dns::{Name, Resolve, Resolving};
use reqwest::header;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::net::{UrlError, UrlPolicy, is_public};

/// Most redirects followed for one download.
pub const MAX_REDIRECTS: usize = 5;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or a redirect target breaks the address policy.
    #[error("{0}")]
    Policy(#[from] UrlError),
    /// The server could not be reached (DNS, connect, TLS, reset).
    #[error("audio source unreachable: {0}")]
    Unreachable(String),
    /// No data for longer than the read timeout, or connect took too long.
    #[error("audio source timed out: {0}")]
    Timeout(String),
    /// The download broke its total deadline or stayed below the minimum average rate:
    /// the same source is not tried again.
    #[error("audio source too slow: {0}")]
    TooSlow(String),
    /// The server answered with a non-success status.
    #[error("audio source answered HTTP {0}")]
    HttpStatus(u16),
    /// More than `MAX_AUDIO_BYTES`.
    #[error("audio is larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// More than [`MAX_REDIRECTS`] redirects, or a redirect without a usable Location.
    #[error("too many or malformed redirects")]
    Redirects,
    /// Writing the temporary file failed.
    #[error("cannot write the download: {0}")]
    Io(#[from] std::io::Error),
}

impl FetchError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Policy(e) => e.code(),
            FetchError::Unreachable(_) => "audio_unreachable",
            FetchError::Timeout(_) | FetchError::TooSlow(_) => "audio_timeout",
            FetchError::HttpStatus(_) => "audio_http_status",
            FetchError::TooLarge { .. } => "audio_too_large",
            FetchError::Redirects => "audio_too_many_redirects",
            FetchError::Io(_) => "internal_error",
        }
    }

    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Unreachable(_) | FetchError::Timeout(_) | FetchError::Io(_) => true,
            FetchError::HttpStatus(s) => *s == 408 || *s == 429 || *s >= 500,
            FetchError::Policy(UrlError::Unresolvable(_)) => true,
            _ => false,
        }
    }
}

/// Where [`PolicyResolver`] gets its answers before it judges them.
#[derive(Clone, Default)]
pub enum Lookup {
    /// The system resolver (`getaddrinfo`, through tokio): what the service uses.
    #[default]
    System,
    /// Another resolver, for tests: its answers are judged exactly like the system's.
    Custom(Arc<dyn Resolve>),
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::System => f.write_str("System"),
            Lookup::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A DNS resolver that only returns addresses the policy allows.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: UrlPolicy,
    lookup: Lookup,
    /// The configured outbound proxy's host: the operator's own choice, often on a private
    /// network, so it is not judged (the targets behind it are the proxy's to judge).
    exempt: Option<String>,
}

impl PolicyResolver {
    /// A resolver applying `policy` to the answers of `lookup`.
    pub fn new(policy: UrlPolicy, lookup: Lookup) -> Self {
        Self {
            policy,
            lookup,
            exempt: None,
        }
    }

    /// Answers for `host` (the outbound proxy's) pass unjudged.
    pub fn exempting(mut self, host: Option<&str>) -> Self {
        self.exempt = host.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
        self
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let lookup = self.lookup.clone();
        let exempt = self.exempt.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let judged = exempt.as_deref() != Some(host.trim_end_matches('.'));
            let addrs: Vec<SocketAddr> = match lookup {
                Lookup::System => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
                Lookup::Custom(inner) => inner.resolve(name).await?.collect(),
            };
            if addrs.is_empty() {
                return Err(Box::new(UrlError::Unresolvable(host)) as _);
            }
            if !policy.allow_private
                && judged
                && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
            {
                return Err(Box::new(UrlError::PrivateAddress {
                    host,
                    addr: bad.ip(),
                }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// Limits of the HTTP client.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Longest a whole download may take, redirects included (`FETCH_TOTAL_TIMEOUT_SECONDS`,
    /// default 600).
    pub total_timeout: Duration,
    /// Lowest average rate once [`min_rate_after`](Self::min_rate_after) has passed
    /// (`FETCH_MIN_BYTES_PER_SECOND`, default 16384; 0 turns the check off).
    pub min_bytes_per_second: u64,
    /// When the average-rate check starts (10 s into a download).
    pub min_rate_after: Duration,
    /// An explicit outbound proxy (`OUTBOUND_PROXY`); `None`: direct connections only,
    /// whatever `http_proxy`/`https_proxy`/`all_proxy` say.
    pub proxy: Option<Url>,
    /// Address policy.
    pub policy: UrlPolicy,
    /// Largest download (`MAX_AUDIO_BYTES`).
    pub max_bytes: u64,
    /// Connect timeout (`FETCH_CONNECT_TIMEOUT_SECONDS`).
    pub connect_timeout: Duration,
    /// Longest silence while reading (`FETCH_READ_TIMEOUT_SECONDS`).
    pub read_timeout: Duration,
    /// Where host names are resolved (the system resolver; tests supply their own).
    pub lookup: Lookup,
}

impl Default for FetchConfig {
    /// The defaults of the environment variables, private networks refused, no proxy.
    fn default() -> Self {
        Self {
            total_timeout: Duration::from_secs(600),
            min_bytes_per_second: 16 * 1024,
            min_rate_after: MIN_RATE_AFTER,
            proxy: None,
            policy: UrlPolicy::default(),
            max_bytes: 1 << 30,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            lookup: Lookup::System,
        }
    }
}

/// How far into a download the minimum-rate check starts.
pub const MIN_RATE_AFTER: Duration = Duration::from_secs(10);

/// An HTTP client that applies the address policy at connect time and never follows
/// redirects by itself.
pub fn client(cfg: &FetchConfig, total_timeout: Option<Duration>) -> reqwest::Client {
    builder(cfg, total_timeout)
        .build()
        .expect("static client configuration")
}

/// The configuration of [`client`], before it is built.
fn builder(cfg: &FetchConfig, total_timeout: Option<Duration>) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(
            PolicyResolver::new(cfg.policy, cfg.lookup.clone())
                .exempting(cfg.proxy.as_ref().and_then(Url::host_str)),
        ))
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout)
        .user_agent(concat!("uvr/", env!("CARGO_PKG_VERSION")));
    b = match &cfg.proxy {
        // Proxy variables of the environment are never read: a proxy connects in place of
        // the policy-checked resolver.
        None => b.no_proxy(),
        Some(p) => b.proxy(reqwest::Proxy::all(p.as_str()).expect("a parsed proxy URL")),
    };
    if let Some(t) = total_timeout {
        b = b.timeout(t);
    }
    b
}

/// Downloads audio into `dest`, following checked redirects; returns the final URL and size.
/// On any failure nothing is left at `dest`.
pub async fn download(
    client: &reqwest::Client,
    cfg: &FetchConfig,
    url: &str,
    dest: &Path,
) -> Result<(Url, u64), FetchError> {
    let result =
        match tokio::time::timeout(cfg.total_timeout, fetch_to(client, cfg, url, dest)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::TooSlow(format!(
                "the download took longer than {} s (FETCH_TOTAL_TIMEOUT_SECONDS)",
                cfg.total_timeout.as_secs_f64()
            ))),
        };
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

async fn fetch_to(
    client: &reqwest::Client,
    cfg: &FetchConfig,
    url: &str,
    dest: &Path,
) -> Result<(Url, u64), FetchError> {
    let mut current = cfg.policy.parse(url)?;
    for _ in 0..=MAX_REDIRECTS {
        let resp = client
            .get(current.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(FetchError::Redirects)?;
            let next = current.join(location).map_err(|_| FetchError::Redirects)?;
            current = cfg.policy.parse(next.as_str())?;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::HttpStatus(status.as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > cfg.max_bytes) {
            return Err(FetchError::TooLarge {
                limit: cfg.max_bytes,
            });
        }
        let mut file = tokio::fs::File::create(dest).await?;
        let mut written: u64 = 0;
        let mut stream = resp.bytes_stream();
        // The average rate is the body's: connecting, waiting for the answer and redirects
        // are bounded by the other timeouts.
        let body_started = tokio::time::Instant::now();
        loop {
            // Wake at least once a second to judge the average rate, data or not.
            match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Err(_) => {}
                Ok(None) => break,
                Ok(Some(chunk)) => {
                    let chunk = chunk.map_err(|e| classify(&e))?;
                    written += chunk.len() as u64;
                    if written > cfg.max_bytes {
                        return Err(FetchError::TooLarge {
                            limit: cfg.max_bytes,
                        });
                    }
                    file.write_all(&chunk).await?;
                }
            }
            let elapsed = body_started.elapsed();
            if cfg.min_bytes_per_second > 0
                && elapsed >= cfg.min_rate_after
                && (written as f64) < cfg.min_bytes_per_second as f64 * elapsed.as_secs_f64()
            {
                return Err(FetchError::TooSlow(format!(
                    "{written} bytes in {:.0} s, below {} bytes/s (FETCH_MIN_BYTES_PER_SECOND)",
                    elapsed.as_secs_f64(),
                    cfg.min_bytes_per_second
                )));
            }
        }
        file.flush().await?;
        return Ok((current, written));
    }
    Err(FetchError::Redirects)
}

/// Maps a reqwest error to a fetch error, surfacing a policy refusal from the resolver.
pub fn classify(e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(u) = s.downcast_ref::<UrlError>() {
            return FetchError::Policy(u.clone());
        }
        source = s.source();
    }
    // reqwest names the URL in its errors; show it without credentials or query values.
    let shown = |text: String| match e.url() {
        Some(u) => text.replace(u.as_str(), &crate::net::redact(u)),
        None => text,
    };
    if e.is_timeout() {
        FetchError::Timeout(shown(e.to_string()))
    } else {
        FetchError::Unreachable(shown(error_chain(e)))
    }
}

/// The whole cause chain of an error, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
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
            crate::pipeline::webhook::WebhookConfig::from_env(&crate::config::Env::from_pairs([(
                "WEBHOOK_SECRET",
                "test-webhook-secret-0123456789-abcdefgh",
            )]))
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
}
