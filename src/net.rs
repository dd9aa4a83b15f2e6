//! The address policy for user-supplied URLs (audio sources and webhook targets).
//!
//! Only `http` and `https` are allowed, and a host must not be or resolve to a loopback,
//! private, link-local, CGNAT, multicast, documentation/benchmark, reserved or cloud-metadata
//! address — IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64 and 6to4 IPv6 forms
//! included, since each of them reaches an IPv4 address (the local-use NAT64 block
//! `64:ff9b:1::/48` is refused whole). Port 0 is refused. `ALLOW_PRIVATE_NETWORKS=true` lifts the address rule
//! (local development, tests, private deployments); the scheme rule always holds.
//!
//! The Intake checks at submission time; whoever connects later (the audio fetcher, the
//! webhook sender) checks again at connect time against the addresses it actually uses, so
//! a DNS answer that changes between the two (DNS rebinding) is caught.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a parseable absolute URL.
    #[error("not a valid URL: {0}")]
    Malformed(String),
    /// A scheme other than http or https (`file://`, `ftp://`, `gopher://`...).
    #[error("scheme {0:?} is not allowed (http or https only)")]
    Scheme(String),
    /// No host, or a host that cannot be used.
    #[error("URL has no usable host")]
    NoHost,
    /// The host is, or resolves to, an address that is not public.
    #[error("{host} resolves to a non-public address ({addr})")]
    PrivateAddress {
        /// The host as written.
        host: String,
        /// The refused address.
        addr: IpAddr,
    },
    /// The host name does not resolve (at connect time only; submissions accept it).
    #[error("{0} does not resolve")]
    Unresolvable(String),
}

impl UrlError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            UrlError::Malformed(_) | UrlError::NoHost => "invalid_url",
            UrlError::Scheme(_) => "unsupported_scheme",
            UrlError::PrivateAddress { .. } => "private_address",
            UrlError::Unresolvable(_) => "unresolvable_host",
        }
    }
}

/// The URL policy in force.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlPolicy {
    /// Allow loopback and private targets (`ALLOW_PRIVATE_NETWORKS`).
    pub allow_private: bool,
}

/// How long a submission-time DNS lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

impl UrlPolicy {
    /// Syntactic checks: absolute http(s) URL with a host; IP literals and `localhost`
    /// names are checked against the address rule here.
    pub fn parse(&self, raw: &str) -> Result<Url, UrlError> {
        let trimmed = raw.trim();
        if trimmed.len() != raw.len() || raw.chars().any(|c| c.is_control()) {
            return Err(UrlError::Malformed(
                "contains whitespace or control characters".into(),
            ));
        }
        let url = Url::parse(raw).map_err(|e| UrlError::Malformed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme(url.scheme().to_string()));
        }
        let host = url.host().ok_or(UrlError::NoHost)?;
        if url.port() == Some(0) {
            return Err(UrlError::Malformed("port 0 cannot be connected to".into()));
        }
        if !self.allow_private {
            match host {
                Host::Ipv4(ip) => self.check_ip(&url, IpAddr::V4(ip))?,
                Host::Ipv6(ip) => self.check_ip(&url, IpAddr::V6(ip))?,
                Host::Domain(d) => {
                    let d = d.trim_end_matches('.').to_ascii_lowercase();
                    if d == "localhost" || d.ends_with(".localhost") {
                        return Err(UrlError::PrivateAddress {
                            host: d,
                            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        });
                    }
                }
            }
        }
        Ok(url)
    }

    fn check_ip(&self, url: &Url, ip: IpAddr) -> Result<(), UrlError> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(UrlError::PrivateAddress {
                host: url.host_str().unwrap_or_default().to_string(),
                addr: ip,
            })
        }
    }

    /// Submission-time check: [`parse`](Self::parse), then every address the host resolves
    /// to must be public. A name that does not resolve (now) is accepted; the connect-time
    /// check decides.
    pub async fn check(&self, raw: &str) -> Result<Url, UrlError> {
        let url = self.parse(raw)?;
        self.check_resolved(&url).await?;
        Ok(url)
    }

    /// The DNS half of [`check`](Self::check), for a URL [`parse`](Self::parse) accepted.
    pub async fn check_resolved(&self, url: &Url) -> Result<(), UrlError> {
        if self.allow_private {
            return Ok(());
        }
        if let Some(Host::Domain(_)) = url.host() {
            match self.resolve(url).await {
                Ok(_) | Err(UrlError::Unresolvable(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Connect-time check: resolves the host once and returns the socket addresses to
    /// connect to, all of them allowed by the policy.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, UrlError> {
        let host = url.host_str().ok_or(UrlError::NoHost)?;
        let port = url.port_or_known_default().ok_or(UrlError::NoHost)?;
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            _ => {
                let lookup = tokio::net::lookup_host((host.trim_end_matches('.'), port));
                match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Ok(Ok(it)) => it.collect(),
                    _ => return Err(UrlError::Unresolvable(host.to_string())),
                }
            }
        };
        if addrs.is_empty() {
            return Err(UrlError::Unresolvable(host.to_string()));
        }
        for a in &addrs {
            self.check_ip(url, a.ip())?;
        }
        Ok(addrs)
    }
}

/// A URL as it may be shown (logs, errors, task records, webhooks): scheme, host, port and
/// path kept; user info dropped; every query value replaced by `REDACTED` (the names stay,
/// so `?token=REDACTED&v=REDACTED` still tells what was sent); the fragment dropped.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    if let Some(query) = url.query() {
        let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        if names.is_empty() {
            shown.set_query(None);
        } else if query
            .split('&')
            .any(|pair| !pair.is_empty() && !pair.contains('='))
        {
            // A bare value (`?s3cret`) has no name to keep: the whole query goes.
            shown.set_query(Some("REDACTED"));
        } else {
            shown
                .query_pairs_mut()
                .clear()
                .extend_pairs(names.iter().map(|k| (k.as_str(), "REDACTED")));
        }
    }
    shown.to_string()
}

/// [`redact`] for a URL kept as text; text that does not parse as a URL is not shown.
pub fn redact_str(raw: &str) -> String {
    match Url::parse(raw.trim()) {
        Ok(u) => redact(&u),
        Err(_) => "<not a URL>".into(),
    }
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let blocked = ip.is_unspecified()
        || o[0] == 0 // 0.0.0.0/8 "this network"
        || o[0] == 10 // private
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT (incl. 100.100.100.200 metadata)
        || o[0] == 127 // loopback
        || (o[0] == 169 && o[1] == 254) // link-local (incl. 169.254.169.254 metadata)
        || (o[0] == 172 && (o[1] & 0xf0) == 16) // private
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 2) // TEST-NET-1
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
        || (o[0] == 192 && o[1] == 168) // private
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || (o[0] == 198 && o[1] == 51 && o[2] == 100) // TEST-NET-2
        || (o[0] == 203 && o[1] == 0 && o[2] == 113) // TEST-NET-3
        || o[0] >= 224; // multicast, reserved, broadcast
    !blocked
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Forms that embed an IPv4 address reach that address: judge it instead.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4); // ::ffff:a.b.c.d
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32)); // ::a.b.c.d
    }
    if s[0..6] == [0, 0, 0, 0, 0xffff, 0] {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32)); // ::ffff:0:a.b.c.d (IPv4-translated)
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32)); // NAT64
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // Local-use NAT64 (64:ff9b:1::/48): the embedded IPv4 address may sit at any of the
        // RFC 6052 positions and the translator is the operator's own; refuse the block.
        return false;
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32)); // 6to4
    }
    let blocked = ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254 metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only
        || (s[0] == 0x2001 && s[1] < 0x0200 && s[1] != 0x0001); // IETF special purpose (Teredo etc.)
    !blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:0001::",
            "ff02::1",
            "2001:db8::1",
            "::ffff:0:7f00:1",    // IPv4-translated 127.0.0.1
            "::ffff:0:a9fe:a9fe", // IPv4-translated 169.254.169.254
            "64:ff9b:1::7f00:1",  // local-use NAT64
            "64:ff9b:1:2:3::",
        ] {
            assert!(!public(a), "{a} must be refused");
        }
        for a in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808", // IPv4-translated 8.8.8.8
            "64:ff9b::808:808", // well-known NAT64 prefix, public target
        ] {
            assert!(public(a), "{a} is public");
        }
    }

    #[test]
    fn schemes_and_literal_hosts() {
        let p = UrlPolicy::default();
        assert_eq!(
            p.parse("file:///etc/passwd").unwrap_err().code(),
            "unsupported_scheme"
        );
        assert_eq!(
            p.parse("ftp://example.com/a.wav").unwrap_err().code(),
            "unsupported_scheme"
        );
        assert_eq!(
            p.parse("gopher://x/").unwrap_err().code(),
            "unsupported_scheme"
        );
        assert_eq!(p.parse("not a url").unwrap_err().code(), "invalid_url");
        assert_eq!(p.parse("http://:80/").unwrap_err().code(), "invalid_url");
        assert_eq!(p.parse(" http://x.com").unwrap_err().code(), "invalid_url");
        for u in [
            "http://127.0.0.1/a",
            "http://localhost:8000/",
            "http://LOCALHOST./",
            "http://foo.localhost/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://2130706433/", // decimal 127.0.0.1
            "http://0x7f.0.0.1/", // hex
            "http://0177.0.0.1/", // octal
            "http://169.254.169.254/latest/meta-data/",
            "https://10.0.0.5:8443/hook",
            "http://[::ffff:0:7f00:1]/",
            "http://[64:ff9b:1::7f00:1]/",
        ] {
            assert_eq!(p.parse(u).unwrap_err().code(), "private_address", "{u}");
        }
        assert!(p.parse("https://example.com/song.wav").is_ok());
        for u in ["http://example.com:0/a.wav", "https://[2606:4700::1111]:0/"] {
            assert_eq!(p.parse(u).unwrap_err().code(), "invalid_url", "{u}");
        }
        let open = UrlPolicy {
            allow_private: true,
        };
        assert!(open.parse("http://127.0.0.1:9000/a.wav").is_ok());
        assert_eq!(
            open.parse("http://127.0.0.1:0/a.wav").unwrap_err().code(),
            "invalid_url",
            "port 0 is refused whatever the address rule"
        );
        assert_eq!(
            open.parse("file:///x").unwrap_err().code(),
            "unsupported_scheme"
        );
    }

    #[test]
    fn shown_urls_keep_the_place_and_drop_the_secrets() {
        for (raw, shown) in [
            (
                "https://user:pa55@cdn.example.com:8443/a/song.wav?token=s3cret&x=1#frag",
                "https://cdn.example.com:8443/a/song.wav?token=REDACTED&x=REDACTED",
            ),
            (
                "http://example.com/hook?sig=abc",
                "http://example.com/hook?sig=REDACTED",
            ),
            (
                "http://example.com/plain.wav",
                "http://example.com/plain.wav",
            ),
            ("http://example.com/a?", "http://example.com/a"),
            ("http://token@example.com/", "http://example.com/"),
            (
                "http://example.com/a?s3cret",
                "http://example.com/a?REDACTED",
            ),
            (
                "http://example.com/a?x=1&s3cret",
                "http://example.com/a?REDACTED",
            ),
        ] {
            assert_eq!(redact_str(raw), shown, "{raw}");
        }
        assert_eq!(redact_str("no url here"), "<not a URL>");
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let p = UrlPolicy::default();
        // `localhost.` resolves through /etc/hosts; the literal check catches it first, so
        // use a resolver path: an IP literal passes through resolve() unchanged.
        let url = Url::parse("http://127.0.0.1:1/").unwrap();
        assert_eq!(p.resolve(&url).await.unwrap_err().code(), "private_address");
        let url = Url::parse("http://93.184.215.14/").unwrap();
        assert_eq!(p.resolve(&url).await.unwrap().len(), 1);
        // An unresolvable name is accepted at submission time.
        assert!(p.check("http://does-not-exist.invalid/a.wav").await.is_ok());
    }
}
