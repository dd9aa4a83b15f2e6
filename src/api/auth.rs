//! HTTP Basic authentication, the `/metrics` bearer token, and failed-login throttling.
//! Credentials are kept only as SHA-256 digests and compared in constant time (digests have
//! a fixed length, so not even the length of a guess leaks); neither the header nor the
//! password is ever logged.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured credential.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    user_digest: [u8; 32],
    pass_digest: [u8; 32],
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The SHA-256 digest credentials are kept and compared as.
pub(super) fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// The user and password of an `Authorization: Basic` value.
pub(super) fn basic(header: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let pass = decoded.split_off(colon + 1);
    decoded.truncate(colon);
    Some((decoded, pass))
}

/// The token of an `Authorization: Bearer` value.
pub(super) fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Credentials {
    /// A credential for `username` / `password`.
    pub fn new(username: &str, password: &str) -> Self {
        Self {
            username: username.to_string(),
            user_digest: digest(username.as_bytes()),
            pass_digest: digest(password.as_bytes()),
        }
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Checks an `Authorization` header value; returns the user name when it matches.
    pub fn verify(&self, header: Option<&str>) -> Option<&str> {
        let (user, pass) = basic(header?)?;
        let user_ok = digest(&user).ct_eq(&self.user_digest);
        let pass_ok = digest(&pass).ct_eq(&self.pass_digest);
        bool::from(user_ok & pass_ok).then_some(self.username.as_str())
    }
}

/// The bearer token that guards `/metrics` (`METRICS_TOKEN`), kept as a digest.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

impl BearerToken {
    /// A token to compare against.
    pub fn new(token: &str) -> Self {
        Self {
            digest: digest(token.as_bytes()),
        }
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    pub fn verify(&self, header: Option<&str>) -> bool {
        header
            .and_then(bearer)
            .is_some_and(|token| bool::from(digest(token.as_bytes()).ct_eq(&self.digest)))
    }
}

/// Failed logins per client address. Once an address has failed `limit` times within a
/// window (a minute), every request of it that needs credentials is refused, the right
/// password included, until its window has passed. A limit of 0 turns throttling off.
#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Addresses remembered at most; beyond it, windows that have passed are forgotten, then
/// the older half.
const THROTTLE_MEMORY: usize = 100_000;

/// The client an address stands for: itself for IPv4, its /64 for IPv6 (one host usually
/// holds a whole /64, so single IPv6 addresses would give unlimited guesses).
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// `limit` failures per minute per address (`AUTH_FAILURES_PER_MINUTE`).
    pub fn per_minute(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` failures per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must wait, when it is throttled now.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let w = map.get(&client(ip))?;
        let ends = w.started + self.window;
        (w.failures >= self.limit && now < ends).then(|| ends - now)
    }

    /// Records a failed login from `ip`; true when this failure reached the limit.
    pub fn failed(&self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = Instant::now();
        let window = self.window;
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= THROTTLE_MEMORY {
            map.retain(|_, w| now < w.started + window);
            if map.len() >= THROTTLE_MEMORY / 2 {
                // Still full of live windows: forget the older half (amortised: the next
                // pass is at least THROTTLE_MEMORY / 2 new addresses away).
                let mut starts: Vec<Instant> = map.values().map(|w| w.started).collect();
                let mid = starts.len() / 2;
                let (_, median, _) = starts.select_nth_unstable(mid);
                let median = *median;
                map.retain(|_, w| w.started > median);
            }
        }
        let w = map.entry(client(ip)).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= w.started + window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        w.failures == self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn verifies_basic_credentials() {
        let c = Credentials::new("admin", "pa:ss");
        assert_eq!(c.verify(Some(&basic("admin:pa:ss"))), Some("admin"));
        assert_eq!(c.verify(Some(&basic("admin:pa:s"))), None);
        assert_eq!(c.verify(Some(&basic("Admin:pa:ss"))), None);
        assert_eq!(c.verify(Some(&basic("admin"))), None);
        assert_eq!(c.verify(Some("Bearer abc")), None);
        assert_eq!(c.verify(Some("Basic !!!")), None);
        assert_eq!(c.verify(None), None);
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    #[test]
    fn bearer_tokens_compare_whole() {
        let t = BearerToken::new("scrape-token-0123456789");
        assert!(t.verify(Some("Bearer scrape-token-0123456789")));
        assert!(t.verify(Some("bearer  scrape-token-0123456789 ")));
        for h in [
            "Bearer scrape-token-012345678",
            "Bearer scrape-token-01234567890",
            "Basic scrape-token-0123456789",
            "scrape-token-0123456789",
            "",
        ] {
            assert!(!t.verify(Some(h)), "{h}");
        }
        assert!(!t.verify(None));
        assert!(!format!("{t:?}").contains("scrape"));
    }

    #[test]
    fn an_address_is_throttled_at_the_limit_until_its_window_passes() {
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        let t = Throttle::new(3, Duration::from_millis(300));
        assert!(!t.failed(a));
        assert!(!t.failed(a));
        assert_eq!(t.blocked(a), None, "below the limit");
        assert!(t.failed(a), "the third failure reaches the limit");
        let wait = t.blocked(a).expect("throttled");
        assert!(wait <= Duration::from_millis(300), "{wait:?}");
        assert_eq!(t.blocked(b), None, "other addresses are not affected");
        assert!(!t.failed(a), "the limit is reported once");
        std::thread::sleep(wait + Duration::from_millis(20));
        assert_eq!(t.blocked(a), None, "the window passed");
        assert!(!t.failed(a), "a new window counts from one");
        // An IPv6 /64 is one client.
        let t6 = Throttle::new(2, Duration::from_secs(60));
        assert!(!t6.failed("2001:db8:1:2::1".parse().unwrap()));
        assert!(t6.failed("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert!(t6.blocked("2001:db8:1:2::77".parse().unwrap()).is_some());
        assert_eq!(t6.blocked("2001:db8:1:3::1".parse().unwrap()), None);
        let off = Throttle::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            assert!(!off.failed(a));
        }
        assert_eq!(off.blocked(a), None);
    }
}
