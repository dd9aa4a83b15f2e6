//! Client API keys (`API_KEYS_FILE`): one key per client, each client seeing only its own
//! tasks, each key revoked by deleting its line.
//!
//! The file holds one client per line, `<client> sha256:<hex digest of the key>`, optionally
//! followed by the client's own limits, `rate=<per second>`, `burst=<n>` and
//! `max_priority=<1-5>` (instead of `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`, and 5), with
//! `#` comments and blank lines allowed; `uvr api-key <client>` makes a key and its line. Only
//! digests are stored, so the file does not reveal the keys. A client authenticates with
//! `Authorization: Bearer <key>`, or HTTP Basic with its name and the key as the password.
//! The digest of the presented key is compared with every entry in constant time.
//!
//! The file is read at start-up (a bad file stops the service) and again whenever its
//! modification time or size changes, looked at most once a second: a key is revoked, or a
//! client added, by editing the file, without a restart. A file that no longer parses, or
//! that cannot be read, leaves no client key valid (the service fails closed) until it is
//! fixed; the administrator's `API_USERNAME` credential keeps working.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use subtle::ConstantTimeEq;

use super::auth::{basic, bearer, digest};

use crate::actors::intake::ClientLimits;

/// How often the file is looked at for changes.
const RECHECK: Duration = Duration::from_secs(1);

/// The longest client name.
const NAME_MAX: usize = 64;

/// One client's key, as a digest.
#[derive(Clone, PartialEq)]
struct Entry {
    client: String,
    digest: [u8; 32],
    limits: ClientLimits,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// A file's modification time and size.
type Stamp = Option<(SystemTime, u64)>;

/// What the file held when it was last read.
struct Loaded {
    entries: Vec<Entry>,
    /// Modification time and size of the file read.
    stamp: Stamp,
    checked: Instant,
}

/// The client keys of `API_KEYS_FILE` (none when it is not set).
pub struct Keyring {
    path: Option<PathBuf>,
    /// The administrator's `API_USERNAME`, which no client may be named.
    admin: String,
    loaded: Mutex<Loaded>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clients = self.loaded.lock().map(|l| l.entries.len()).unwrap_or(0);
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("clients", &clients)
            .finish()
    }
}

/// Why the keys file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct KeysError {
    path: String,
    reason: String,
}

impl Keyring {
    /// No client keys: only the administrator's credential.
    pub fn none() -> Self {
        Self {
            path: None,
            admin: String::new(),
            loaded: Mutex::new(Loaded {
                entries: Vec::new(),
                stamp: None,
                checked: Instant::now(),
            }),
        }
    }

    /// The keys in `path`, which must be readable and valid now; no client may be named
    /// `admin` (the administrator's `API_USERNAME`: a task's owner must say who submitted it).
    pub fn open(path: &Path, admin: &str) -> Result<Self, KeysError> {
        let (entries, stamp) = read(path, admin).map_err(|reason| KeysError {
            path: path.display().to_string(),
            reason,
        })?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            admin: admin.to_string(),
            loaded: Mutex::new(Loaded {
                entries,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// How many client keys are valid now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.refresh();
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    /// Whether no client key is valid now.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The client an `Authorization` header value authenticates: `Bearer <key>`, or `Basic`
    /// with the client's name and its key.
    pub fn verify(&self, header: Option<&str>) -> Option<(String, ClientLimits)> {
        let header = header?;
        let (name, key) = match bearer(header) {
            Some(key) => (None, key.as_bytes().to_vec()),
            None => {
                let (name, key) = basic(header)?;
                (Some(String::from_utf8(name).ok()?), key)
            }
        };
        self.refresh();
        let digest = digest(&key);
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        // Every entry is compared, whichever matches.
        let mut found = None;
        for e in &loaded.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some((e.client.clone(), e.limits));
            }
        }
        match (found, name) {
            (Some((client, _)), Some(name)) if name != client => None,
            (found, _) => found,
        }
    }

    /// Reads the file again when it changed since it was last read (looked at most once a
    /// second).
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() < RECHECK {
            return;
        }
        loaded.checked = Instant::now();
        let now = stamp(path);
        if now.is_some() && now == loaded.stamp {
            return;
        }
        match read(path, &self.admin) {
            Ok((entries, stamp)) => {
                tracing::info!(path = %path.display(), clients = entries.len(), "API keys reloaded");
                loaded.entries = entries;
                loaded.stamp = stamp;
            }
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason,
                    "API keys file refused; no client key is valid until it is fixed");
                loaded.entries.clear();
                loaded.stamp = now;
            }
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(path: &Path, admin: &str) -> Result<(Vec<Entry>, Stamp), String> {
    let before = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Ok((parse(&text, admin)?, before))
}

/// Parses the file's text.
fn parse(text: &str, admin: &str) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |reason: String| format!("line {}: {reason}", n + 1);
        let mut words = line.split_whitespace();
        let (Some(client), Some(digest)) = (words.next(), words.next()) else {
            return Err(at(
                "expected `<client> sha256:<hex> [rate=..] [burst=..] [max_priority=..]`".into(),
            ));
        };
        let limits = limits(words).map_err(at)?;
        if !valid_name(client) {
            return Err(at(format!(
                "client names are 1-{NAME_MAX} letters, digits, '.', '_' or '-'"
            )));
        }
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| at("the digest must start with sha256:".into()))?;
        let digest: [u8; 32] = hex::decode(hex)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| at("the digest must be 64 hex digits".into()))?;
        if client == admin {
            return Err(at(format!(
                "client {client:?} is the administrator's API_USERNAME"
            )));
        }
        if entries.iter().any(|e| e.client == client) {
            return Err(at(format!("client {client:?} appears twice")));
        }
        if entries.iter().any(|e| e.digest == digest) {
            return Err(at("this key is another client's too".into()));
        }
        entries.push(Entry {
            client: client.to_string(),
            digest,
            limits,
        });
    }
    Ok(entries)
}

/// A client's `rate=`, `burst=` and `max_priority=` settings.
fn limits<'a>(words: impl Iterator<Item = &'a str>) -> Result<ClientLimits, String> {
    let mut l = ClientLimits::default();
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, not {word:?}"))?;
        let number = |what: &str| -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{what} must be a non-negative number, not {value:?}"))
        };
        match key {
            "rate" => l.rate_per_second = Some(number("rate")?),
            "burst" => l.burst = Some(number("burst")?.max(1.0)),
            "max_priority" => {
                let p = value
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=5).contains(p))
                    .ok_or_else(|| format!("max_priority must be 1-5, not {value:?}"))?;
                l.max_priority = Some(p);
            }
            _ => {
                return Err(format!(
                    "unknown setting {key:?} (rate, burst, max_priority)"
                ));
            }
        }
    }
    Ok(l)
}

/// Whether `name` can be a client's name.
pub fn valid_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new random key (256 bits) for `client`, and the line of the keys file that admits it.
pub fn generate(client: &str) -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    let key = format!(
        "uvr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let line = format!("{client} sha256:{}", hex::encode(digest(key.as_bytes())));
    (key, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(key: &str) -> String {
        format!("Bearer {key}")
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn keys_authenticate_their_client_only() {
        let (ka, la) = generate("alpha");
        let (kb, lb) = generate("beta");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let text = format!("# clients\n{la}\n\n{lb} rate=2 burst=4 max_priority=3 # limited\n");
        std::fs::write(&path, text).unwrap();
        let ring = Keyring::open(&path, "admin").unwrap();
        assert_eq!(ring.len(), 2);
        let who = |h: String| ring.verify(Some(&h));
        let beta = ClientLimits {
            rate_per_second: Some(2.0),
            burst: Some(4.0),
            max_priority: Some(3),
        };
        assert_eq!(
            who(bearer(&ka)),
            Some(("alpha".into(), ClientLimits::default()))
        );
        assert_eq!(who(bearer(&kb)), Some(("beta".into(), beta)));
        assert_eq!(who(basic("beta", &kb)), Some(("beta".into(), beta)));
        // Another client's name with this key, a wrong key, other schemes: nobody.
        assert_eq!(who(basic("alpha", &kb)), None);
        assert_eq!(who(bearer(&format!("{ka}x"))), None);
        assert_eq!(who(format!("Token {ka}")), None);
        assert_eq!(ring.verify(None), None);
        let named_admin = parse(&la, "alpha").unwrap_err();
        assert!(named_admin.contains("administrator"), "{named_admin}");
        // The file itself does not hold the keys.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&ka) && !text.contains(&kb));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let (_, line) = generate("alpha");
        let digest = line.split_once(' ').unwrap().1;
        for (text, why) in [
            ("alpha".to_string(), "line 1: expected"),
            (format!("{line} extra"), "line 1: expected key=value"),
            (format!("{line} speed=3"), "line 1: unknown setting"),
            (format!("{line} rate=-1"), "line 1: rate must be"),
            (
                format!("{line} max_priority=6"),
                "line 1: max_priority must be 1-5",
            ),
            ("al/pha sha256:00".to_string(), "line 1: client names"),
            ("alpha md5:00".to_string(), "line 1: the digest must start"),
            (
                "alpha sha256:zz".to_string(),
                "line 1: the digest must be 64 hex",
            ),
            (
                "alpha sha256:0011".to_string(),
                "line 1: the digest must be 64 hex",
            ),
        ] {
            let err = parse(&text, "admin").unwrap_err();
            assert!(err.starts_with(why), "{text:?}: {err}");
        }
        let twice = format!("{line}\n{line}");
        let err = parse(&twice, "admin").unwrap_err();
        assert!(
            err.contains("line 2: client \"alpha\" appears twice"),
            "{err}"
        );
        let shared = format!("{line}\nbeta {digest}");
        let err = parse(&shared, "admin").unwrap_err();
        assert!(err.contains("line 2: this key is another"), "{err}");
        assert!(Keyring::open(Path::new("/nonexistent/keys"), "admin").is_err());
    }

    #[test]
    fn edits_take_effect_and_a_broken_file_fails_closed() {
        let (ka, la) = generate("alpha");
        let (kb, lb) = generate("beta");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("{la}\n{lb}\n")).unwrap();
        let ring = Keyring::open(&path, "admin").unwrap();
        let recheck = || ring.loaded.lock().unwrap().checked -= RECHECK;
        let who = |key: &str| ring.verify(Some(&bearer(key))).map(|(name, _)| name);
        // Revoke beta.
        std::fs::write(&path, format!("{la}\n")).unwrap();
        recheck();
        assert_eq!(who(&kb), None);
        assert_eq!(who(&ka).as_deref(), Some("alpha"));
        // A file that does not parse: no client key works.
        std::fs::write(&path, format!("{la}\nbroken line here\n")).unwrap();
        recheck();
        assert_eq!(who(&ka), None);
        assert!(ring.is_empty());
        // A client named like the administrator, added later: refused the same way.
        let (_, as_admin) = generate("admin");
        std::fs::write(&path, format!("{la}\n{as_admin}\n")).unwrap();
        recheck();
        assert_eq!(who(&ka), None);
        // Fixed again.
        std::fs::write(&path, format!("{la}\n{lb}\n")).unwrap();
        recheck();
        assert_eq!(who(&kb).as_deref(), Some("beta"));
        // A deleted file: none.
        std::fs::remove_file(&path).unwrap();
        recheck();
        assert_eq!(who(&ka), None);
    }
}
