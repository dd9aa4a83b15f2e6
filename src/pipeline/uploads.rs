//! Uploaded audio: files a client sent with its request (`POST /uploads`, or a
//! `multipart/form-data` `POST /generate`), kept in `STAGING_DIR/uploads/<id>` and named
//! `upload://<id>` in the task's `audio`. The API writes them (under `MAX_AUDIO_BYTES`); a
//! processor takes its task's upload from there instead of fetching a URL; the upload goes
//! when its task ends, and unused uploads with the staging leftovers (`RESULT_URL_TTL`).

use std::path::{Path, PathBuf};

use crate::task::TaskId;

/// The scheme of an upload reference.
pub const SCHEME: &str = "upload://";

/// Where uploads live.
#[derive(Debug, Clone)]
pub struct Uploads {
    dir: PathBuf,
    /// The largest upload (`MAX_AUDIO_BYTES`).
    pub max_bytes: u64,
}

impl Uploads {
    /// Uploads under `staging/uploads`, at most `max_bytes` each.
    pub fn new(staging: &Path, max_bytes: u64) -> Self {
        Self {
            dir: staging.join("uploads"),
            max_bytes,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new upload's id and the path it is written to (`<id>.part` until it is complete).
    pub fn allocate(&self) -> (String, PathBuf) {
        let id = TaskId::generate().to_string();
        let part = self.dir.join(format!("{id}.part"));
        (id, part)
    }

    /// The file of a complete upload.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The file an `upload://<id>` reference names, when it is well formed.
    pub fn resolve(&self, reference: &str) -> Option<PathBuf> {
        let id = id_of(reference)?;
        Some(self.path(&id))
    }
}

/// The id of an `upload://<id>` reference (a task-id-shaped UUID), when it is one.
pub fn id_of(reference: &str) -> Option<String> {
    let id = reference.strip_prefix(SCHEME)?;
    id.parse::<TaskId>().ok().map(|t| t.to_string())
}

/// Whether `audio` names an upload rather than a URL.
pub fn is_upload(audio: &str) -> bool {
    audio.starts_with(SCHEME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_files_under_the_uploads_directory() {
        let u = Uploads::new(Path::new("/staging"), 10);
        let (id, part) = u.allocate();
        assert!(part.starts_with("/staging/uploads"));
        assert!(part.to_str().unwrap().ends_with(".part"));
        let reference = format!("{SCHEME}{id}");
        assert!(is_upload(&reference));
        assert_eq!(u.resolve(&reference), Some(u.path(&id)));
        for bad in [
            "upload://../etc/passwd",
            "upload://",
            "upload://not-a-uuid",
            "https://example.com/a.wav",
        ] {
            assert_eq!(u.resolve(bad), None, "{bad}");
        }
    }
}
