//! Fetching audio (and, with the same client rules, calling webhooks).
//!
//! The address policy of the Intake is enforced again here, at connect time: the HTTP client
//! resolves names through [`PolicyResolver`], which checks every address a name resolves to
//! and hands the connector only checked addresses (so a DNS answer that changed since the
//! submission is caught); IP literals are checked before the request. Redirects are followed
//! by hand, at most [`MAX_REDIRECTS`], each target checked again. Downloads stream to a file
//! with a size cap, a connect timeout and a read (idle) timeout.

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
            FetchError::Timeout(_) => "audio_timeout",
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

/// A DNS resolver that only returns addresses the policy allows.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: UrlPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(Box::new(UrlError::Unresolvable(host)) as _);
            }
            if !policy.allow_private
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
    /// Address policy.
    pub policy: UrlPolicy,
    /// Largest download (`MAX_AUDIO_BYTES`).
    pub max_bytes: u64,
    /// Connect timeout (`FETCH_CONNECT_TIMEOUT_SECONDS`).
    pub connect_timeout: Duration,
    /// Longest silence while reading (`FETCH_READ_TIMEOUT_SECONDS`).
    pub read_timeout: Duration,
}

/// An HTTP client that applies the address policy at connect time and never follows
/// redirects by itself.
pub fn client(cfg: &FetchConfig, total_timeout: Option<Duration>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver { policy: cfg.policy }))
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout)
        .user_agent(concat!("uvr/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = total_timeout {
        b = b.timeout(t);
    }
    b.build().expect("static client configuration")
}

/// Downloads audio into `dest`, following checked redirects; returns the final URL and size.
pub async fn download(
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
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(&e))?;
            written += chunk.len() as u64;
            if written > cfg.max_bytes {
                drop(file);
                let _ = tokio::fs::remove_file(dest).await;
                return Err(FetchError::TooLarge {
                    limit: cfg.max_bytes,
                });
            }
            file.write_all(&chunk).await?;
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
    if e.is_timeout() {
        FetchError::Timeout(e.to_string())
    } else {
        FetchError::Unreachable(error_chain(e))
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
