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
#[path = "fetch_tests.rs"]
mod tests;
