//! Stem storage (object_store) and the links handed to clients.
//!
//! - `STORAGE_URL=file:///path` (the default, `file://data/stems` relative to the working
//!   directory): a local directory, served by the API under `/files/<task>/<stem>.wav` with
//!   signed, expiring links: `expires` (Unix seconds) and `sig` = hex HMAC-SHA256 of
//!   `"<key>\n<expires>"` under `LINK_SIGNING_KEY`, checked in constant time.
//! - `STORAGE_URL=s3://bucket[/prefix]`: any S3-compatible store (`S3_ENDPOINT`, `S3_REGION`,
//!   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), with presigned GET links; files above
//!   8 MiB are sent as multipart uploads.
//!
//! Uploads are idempotent (same key, same bytes), so a retried delivery never duplicates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use sha2::Sha256;
use tokio::io::AsyncReadExt;

use crate::config::{ConfigError, Env, Listen, SecretPolicy};

/// Files above this size are uploaded in parts.
const MULTIPART_THRESHOLD: u64 = 8 << 20;
const PART_SIZE: usize = 8 << 20;

/// Where stems go.
#[derive(Clone)]
pub enum StorageConfig {
    /// A local directory served by the API.
    Local {
        /// The directory.
        root: PathBuf,
        /// The API's public base URL (`PUBLIC_BASE_URL`).
        public_base_url: String,
        /// The link signing key (`LINK_SIGNING_KEY`).
        key: Arc<Vec<u8>>,
        /// Link lifetime (`RESULT_URL_TTL`).
        ttl: Duration,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket.
        prefix: String,
        /// Endpoint URL (`S3_ENDPOINT`), for non-AWS stores.
        endpoint: Option<String>,
        /// Region (`S3_REGION`, default us-east-1).
        region: String,
        /// Access key (`AWS_ACCESS_KEY_ID`).
        access_key: String,
        /// Secret key (`AWS_SECRET_ACCESS_KEY`).
        secret_key: Arc<String>,
        /// Link lifetime (`RESULT_URL_TTL`, at most 7 days for S3).
        ttl: Duration,
    },
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Local {
                root,
                public_base_url,
                ttl,
                ..
            } => f
                .debug_struct("Local")
                .field("root", root)
                .field("public_base_url", public_base_url)
                .field("ttl", ttl)
                .finish_non_exhaustive(),
            StorageConfig::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                ttl,
                ..
            } => f
                .debug_struct("S3")
                .field("bucket", bucket)
                .field("prefix", prefix)
                .field("endpoint", endpoint)
                .field("region", region)
                .field("ttl", ttl)
                .finish_non_exhaustive(),
        }
    }
}

/// The link signing key from `LINK_SIGNING_KEY` (required for local storage).
fn link_key(env: &Env, secret_policy: SecretPolicy) -> Result<Arc<Vec<u8>>, ConfigError> {
    let key = env.get("LINK_SIGNING_KEY").ok_or(ConfigError::Invalid {
        var: "LINK_SIGNING_KEY",
        value: String::new(),
        reason: "must be set to sign download links of local storage (any long random string)"
            .into(),
    })?;
    secret_policy.require_strong("LINK_SIGNING_KEY", key.as_bytes(), 32)?;
    Ok(Arc::new(key.as_bytes().to_vec()))
}

impl StorageConfig {
    /// How long links live (`RESULT_URL_TTL`).
    pub fn ttl(&self) -> Duration {
        match self {
            StorageConfig::Local { ttl, .. } | StorageConfig::S3 { ttl, .. } => *ttl,
        }
    }
}

impl StorageConfig {
    /// Reads `STORAGE_URL` and its companions; local links point at the API's address
    /// `api` unless `PUBLIC_BASE_URL` is set. `stores`: this process stores stems (the
    /// uploader), so S3 credentials are required; without it (the API, which only signs
    /// fresh links) an S3 store without credentials is `None`.
    pub fn from_env(
        env: &Env,
        api: &Listen,
        secret_policy: SecretPolicy,
        stores: bool,
    ) -> Result<Option<Self>, ConfigError> {
        let raw = env.string("STORAGE_URL", "file://data/stems");
        let ttl = env.seconds("RESULT_URL_TTL", Duration::from_secs(7 * 86400))?;
        let invalid = |reason: &str| ConfigError::Invalid {
            var: "STORAGE_URL",
            value: raw.clone(),
            reason: reason.into(),
        };
        if let Some(path) = raw.strip_prefix("file://") {
            if path.is_empty() {
                return Err(invalid("file:// needs a directory"));
            }
            let host = match api.host.as_str() {
                "0.0.0.0" | "::" => "127.0.0.1",
                host => host,
            };
            let port = api.port;
            let public_base_url = env
                .get("PUBLIC_BASE_URL")
                .map(|u| u.trim_end_matches('/').to_string())
                .unwrap_or_else(|| format!("http://{host}:{port}"));
            return Ok(Some(StorageConfig::Local {
                root: PathBuf::from(path),
                public_base_url,
                key: link_key(env, secret_policy)?,
                ttl,
            }));
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("s3:// needs a bucket name"));
            }
            if ttl > Duration::from_secs(7 * 86400) {
                return Err(ConfigError::Invalid {
                    var: "RESULT_URL_TTL",
                    value: ttl.as_secs().to_string(),
                    reason: "S3 presigned links last at most 604800 s (7 days)".into(),
                });
            }
            let endpoint = env.get("S3_ENDPOINT").map(str::to_string);
            let region = env.string("S3_REGION", "us-east-1");
            let access_key = env.get("AWS_ACCESS_KEY_ID").map(str::to_string);
            let secret_key = env.get("AWS_SECRET_ACCESS_KEY").map(str::to_string);
            let (access_key, secret_key) = match (access_key, secret_key) {
                (Some(a), Some(s)) => (a, s),
                _ if !stores => return Ok(None),
                (a, _) => {
                    return Err(ConfigError::Invalid {
                        var: match a {
                            None => "AWS_ACCESS_KEY_ID",
                            Some(_) => "AWS_SECRET_ACCESS_KEY",
                        },
                        value: String::new(),
                        reason: "must be set for s3:// storage".into(),
                    });
                }
            };
            return Ok(Some(StorageConfig::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                endpoint,
                region,
                access_key,
                secret_key: Arc::new(secret_key),
                ttl,
            }));
        }
        Err(invalid("expected file:///dir or s3://bucket"))
    }
}

/// Why storing or linking failed.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

/// A signed link.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Link {
    /// The URL.
    pub url: String,
    /// When it stops working (RFC 3339).
    pub expires_at: String,
}

/// An opened store.
#[derive(Clone)]
pub struct Storage {
    cfg: StorageConfig,
    store: Arc<dyn ObjectStore>,
    s3: Option<Arc<AmazonS3>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cfg.fmt(f)
    }
}

impl Storage {
    /// Opens the store (creating a local directory if needed).
    pub fn open(cfg: &StorageConfig) -> Result<Self, StorageError> {
        match cfg {
            StorageConfig::Local { root, .. } => {
                std::fs::create_dir_all(root)
                    .map_err(|e| StorageError(format!("{}: {e}", root.display())))?;
                let fs = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| StorageError(e.to_string()))?;
                Ok(Self {
                    cfg: cfg.clone(),
                    store: Arc::new(fs),
                    s3: None,
                })
            }
            StorageConfig::S3 {
                bucket,
                endpoint,
                region,
                access_key,
                secret_key,
                ..
            } => {
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key)
                    .with_secret_access_key(secret_key.as_str());
                if let Some(ep) = endpoint {
                    b = b
                        .with_endpoint(ep)
                        .with_allow_http(ep.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                let s3 = Arc::new(b.build().map_err(|e| StorageError(e.to_string()))?);
                Ok(Self {
                    cfg: cfg.clone(),
                    store: s3.clone(),
                    s3: Some(s3),
                })
            }
        }
    }

    /// "local" or "s3".
    pub fn kind(&self) -> &'static str {
        match self.cfg {
            StorageConfig::Local { .. } => "local",
            StorageConfig::S3 { .. } => "s3",
        }
    }

    fn object_path(&self, key: &str) -> ObjectPath {
        match &self.cfg {
            StorageConfig::S3 { prefix, .. } if !prefix.is_empty() => {
                ObjectPath::from(format!("{prefix}/{key}"))
            }
            _ => ObjectPath::from(key),
        }
    }

    /// Stores `file` under `key` (`<task>/<stem>.wav`); skips the upload when an object of
    /// the same size is there already (a retried delivery). S3 objects carry the stem's
    /// media type (`Content-Type`), which their presigned links are then served with.
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<u64, StorageError> {
        let path = self.object_path(key);
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| StorageError(format!("{}: {e}", file.display())))?
            .len();
        if let Ok(meta) = self.store.head(&path).await
            && meta.size == size
        {
            return Ok(size);
        }
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| StorageError(format!("{}: {e}", file.display())))?;
        let err = |e: object_store::Error| StorageError(e.to_string());
        let mut attributes = object_store::Attributes::new();
        if let StorageConfig::S3 { .. } = &self.cfg
            && let Some(media_type) = key
                .rsplit_once('.')
                .and_then(|(_, ext)| crate::audio::encode::media_type(ext))
        {
            attributes.insert(object_store::Attribute::ContentType, media_type.into());
        }
        if size <= MULTIPART_THRESHOLD {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf)
                .await
                .map_err(|e| StorageError(e.to_string()))?;
            let opts = object_store::PutOptions {
                attributes,
                ..Default::default()
            };
            self.store
                .put_opts(&path, PutPayload::from(buf), opts)
                .await
                .map_err(err)?;
        } else {
            let opts = object_store::PutMultipartOptions {
                attributes,
                ..Default::default()
            };
            let upload = self
                .store
                .put_multipart_opts(&path, opts)
                .await
                .map_err(err)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .read(&mut buf)
                    .await
                    .map_err(|e| StorageError(e.to_string()))?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4).await.map_err(err)?;
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(err)?;
        }
        Ok(size)
    }

    /// Deletes the stems uvr stored (objects `<task id>/<file>` under the storage prefix)
    /// last written before `cutoff`; returns how many. Anything else in the bucket or
    /// directory is left alone. For local storage the task directories left empty go too.
    pub async fn delete_older_than(&self, cutoff: SystemTime) -> Result<u64, StorageError> {
        use futures_util::StreamExt;
        let prefix = match &self.cfg {
            StorageConfig::S3 { prefix, .. } if !prefix.is_empty() => {
                Some(ObjectPath::from(prefix.as_str()))
            }
            _ => None,
        };
        let depth = prefix.as_ref().map_or(0, |p| p.parts().count());
        let ours = |location: &ObjectPath| {
            let parts: Vec<_> = location.parts().skip(depth).collect();
            parts.len() == 2 && parts[0].as_ref().parse::<crate::task::TaskId>().is_ok()
        };
        let cutoff_ms = cutoff
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let mut listing = self.store.list(prefix.as_ref());
        let mut old = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| StorageError(e.to_string()))?;
            if ours(&meta.location) && meta.last_modified.timestamp_millis() < cutoff_ms {
                old.push(meta.location);
            }
        }
        let mut deleted = 0;
        for path in old {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(StorageError(e.to_string())),
            }
        }
        if let StorageConfig::Local { root, .. } = &self.cfg
            && let Ok(entries) = std::fs::read_dir(root)
        {
            // Task directories are `<root>/<task id>/`; remove_dir only removes empty ones.
            for e in entries.flatten() {
                let task = e
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<crate::task::TaskId>().is_ok());
                if task {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        Ok(deleted)
    }

    /// Whether an object is stored under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.store.head(&self.object_path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StorageError(e.to_string())),
        }
    }

    /// A signed, expiring download link for `key`.
    pub async fn link(&self, key: &str) -> Result<Link, StorageError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        match &self.cfg {
            StorageConfig::Local {
                public_base_url,
                key: secret,
                ttl,
                ..
            } => {
                let expires = (now + *ttl).as_secs();
                let sig = sign_link(secret, key, expires);
                Ok(Link {
                    url: format!("{public_base_url}/files/{key}?expires={expires}&sig={sig}"),
                    expires_at: rfc3339(expires),
                })
            }
            StorageConfig::S3 { ttl, .. } => {
                let s3 = self.s3.as_ref().expect("s3 storage has a signer");
                let url = s3
                    .signed_url(http::Method::GET, &self.object_path(key), *ttl)
                    .await
                    .map_err(|e| StorageError(e.to_string()))?;
                Ok(Link {
                    url: url.to_string(),
                    expires_at: rfc3339((now + *ttl).as_secs()),
                })
            }
        }
    }
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The signature of a local download link.
pub fn sign_link(secret: &[u8], key: &str, expires: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a local download link: signature (constant time) and expiry.
pub fn verify_link(secret: &[u8], key: &str, expires: u64, sig: &str) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if expires < now {
        return false;
    }
    let Ok(given) = hex::decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_and_expire() {
        let key = b"0123456789abcdef";
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let sig = sign_link(key, "t/vocals.wav", exp);
        assert!(verify_link(key, "t/vocals.wav", exp, &sig));
        assert!(!verify_link(key, "t/instrumental.wav", exp, &sig));
        assert!(!verify_link(key, "t/vocals.wav", exp + 1, &sig));
        assert!(!verify_link(b"another-key-1234", "t/vocals.wav", exp, &sig));
        assert!(!verify_link(key, "t/vocals.wav", exp, "zz"));
        let old = exp - 120;
        assert!(!verify_link(
            key,
            "t/vocals.wav",
            old,
            &sign_link(key, "t/vocals.wav", old)
        ));
    }
}
