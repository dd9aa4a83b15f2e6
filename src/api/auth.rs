//! HTTP Basic authentication. Credentials are kept only as SHA-256 digests and compared in
//! constant time (digests have a fixed length, so not even the length of a guess leaks);
//! neither the header nor the password is ever logged.

use std::fmt;

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

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
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
        let value = header?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        let user_ok = digest(user).ct_eq(&self.user_digest);
        let pass_ok = digest(pass).ct_eq(&self.pass_digest);
        bool::from(user_ok & pass_ok).then_some(self.username.as_str())
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
}
