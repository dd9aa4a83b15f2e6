//! The catalogue of separation models a deployment offers: the built-in DSP separator
//! (no weights) and every model a family ([`crate::families`]) finds in `MODELS_DIR`:
//! UVR MDX-Net `.onnx` files, Roformer checkpoints with their YAML configs.
//!
//! The API validates the `model`, `stems` and `output_format` request fields against it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Stems of the built-in separator and of MDX-Net models.
pub use crate::separation::STEMS;
/// The built-in separator's name.
pub use crate::separation::dsp::NAME as BUILTIN_DSP;

pub use crate::families::ModelInfo;

impl ModelInfo {
    /// The built-in separator.
    pub fn builtin() -> Self {
        Self {
            name: BUILTIN_DSP.into(),
            family: "dsp",
            stems: STEMS.iter().map(|s| s.to_string()).collect(),
            params: serde_json::Value::Null,
            files: Vec::new(),
        }
    }

    /// Whether the model has a stem called `stem`.
    pub fn has_stem(&self, stem: &str) -> bool {
        self.stems.iter().any(|s| s == stem)
    }
}

/// The models on offer and the default.
#[derive(Debug, Clone, Serialize)]
pub struct Catalog {
    /// The model used when a request names none.
    pub default: String,
    /// All models, the default first.
    pub models: Vec<ModelInfo>,
}

/// A catalogue setting that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// `DEFAULT_MODEL` names a model that is not installed.
    #[error("DEFAULT_MODEL {0:?} is not installed (available: {1})")]
    UnknownDefault(String, String),
}

impl Catalog {
    /// Scans `dir` with every family (a missing directory offers only the built-in model)
    /// and picks `default` (the built-in separator when unset).
    pub fn scan(dir: &Path, default: Option<&str>) -> Result<Self, CatalogError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut models = vec![ModelInfo::builtin()];
        for family in crate::families::FAMILIES {
            let mut found = family.discover(&files);
            found.sort_by(|a, b| a.name.cmp(&b.name));
            for m in found {
                if let Some(other) = models.iter().find(|o| o.name == m.name) {
                    tracing::warn!(
                        model = %m.name,
                        family = m.family,
                        kept = other.family,
                        "two models share a name; the first found is kept"
                    );
                    continue;
                }
                models.push(m);
            }
        }
        let default = match default {
            Some(d) => {
                if !models.iter().any(|m| m.name == d) {
                    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
                    return Err(CatalogError::UnknownDefault(d.into(), names.join(", ")));
                }
                d.to_string()
            }
            None => BUILTIN_DSP.to_string(),
        };
        if let Some(i) = models.iter().position(|m| m.name == default) {
            let m = models.remove(i);
            models.insert(0, m);
        }
        Ok(Self { default, models })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

/// Why the models directory cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The catalogue cannot be built.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What a directory holds, as far as a rescan cares: each file's name, size and
/// modification time.
type Listing = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn listing(dir: &Path) -> Listing {
    let mut files: Listing = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// The catalogue of a models directory, kept current while the service runs: a model added
/// to `MODELS_DIR`, replaced or removed is seen without a restart. [`current`](Self::current)
/// looks at the directory at most once per `MODELS_RESCAN_SECONDS`, and scans it again only
/// when its listing (names, sizes, modification times) changed; the scan runs outside the
/// lock, so callers meanwhile get the catalogue they had. A rescan that fails (the
/// `DEFAULT_MODEL` removed) keeps the previous catalogue and logs why.
pub struct Library {
    dir: Option<PathBuf>,
    default: Option<String>,
    every: Duration,
    state: Mutex<LibraryState>,
}

struct LibraryState {
    catalog: Arc<Catalog>,
    listing: Listing,
    checked: Instant,
    scanning: bool,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("dir", &self.dir)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// Where the models are (`MODELS_DIR`, default `models`) and the default model's name
/// (`DEFAULT_MODEL`), for the service and the command line alike.
pub fn location(env: &crate::config::Env) -> (PathBuf, Option<String>) {
    let dir = PathBuf::from(env.string("MODELS_DIR", "models"));
    (dir, env.get("DEFAULT_MODEL").map(str::to_string))
}

impl Library {
    /// Scans `dir` now; later, looks again every `every` (never when it is zero).
    pub fn open(dir: &Path, default: Option<&str>, every: Duration) -> Result<Self, CatalogError> {
        let before = listing(dir);
        let catalog = Catalog::scan(dir, default)?;
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            default: default.map(str::to_string),
            every,
            state: Mutex::new(LibraryState {
                catalog: Arc::new(catalog),
                listing: before,
                checked: Instant::now(),
                scanning: false,
            }),
        })
    }

    /// The catalogue of `MODELS_DIR` (default `models`) with `DEFAULT_MODEL`, looked at again
    /// every `MODELS_RESCAN_SECONDS` (default 10; 0: never).
    pub fn from_env(env: &crate::config::Env) -> Result<Self, LibraryError> {
        let (dir, default) = location(env);
        let every = env.seconds("MODELS_RESCAN_SECONDS", Duration::from_secs(10))?;
        Ok(Self::open(&dir, default.as_deref(), every)?)
    }

    /// A catalogue that never changes (one-off runs and tests).
    pub fn fixed(catalog: Catalog) -> Self {
        Self {
            dir: None,
            default: None,
            every: Duration::ZERO,
            state: Mutex::new(LibraryState {
                catalog: Arc::new(catalog),
                listing: Vec::new(),
                checked: Instant::now(),
                scanning: false,
            }),
        }
    }

    /// The catalogue now.
    pub fn current(&self) -> Arc<Catalog> {
        let Some(dir) = &self.dir else {
            return self.lock().catalog.clone();
        };
        let mut st = self.lock();
        if self.every.is_zero() || st.scanning || st.checked.elapsed() < self.every {
            return st.catalog.clone();
        }
        st.checked = Instant::now();
        let now = listing(dir);
        if now == st.listing {
            return st.catalog.clone();
        }
        st.scanning = true;
        drop(st);
        let scanned = Catalog::scan(dir, self.default.as_deref());
        let mut st = self.lock();
        st.scanning = false;
        match scanned {
            Ok(catalog) => {
                tracing::info!(dir = %dir.display(), models = ?catalog.names(),
                    "models directory changed; catalogue rescanned");
                st.catalog = Arc::new(catalog);
                st.listing = now;
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e,
                    "models directory changed but cannot be used; keeping the previous catalogue");
                st.listing = now;
            }
        }
        st.catalog.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LibraryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_only_without_a_models_dir() {
        let c = Catalog::scan(Path::new("/nonexistent"), None).unwrap();
        assert_eq!(c.default, BUILTIN_DSP);
        assert_eq!(c.names(), vec![BUILTIN_DSP]);
    }

    #[test]
    fn onnx_files_are_listed_and_can_be_the_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Kim_Vocal_2.onnx"), b"x").unwrap();
        std::fs::write(dir.path().join("README.md"), b"x").unwrap();
        let c = Catalog::scan(dir.path(), None).unwrap();
        assert_eq!(c.default, BUILTIN_DSP);
        assert_eq!(c.names(), vec![BUILTIN_DSP, "Kim_Vocal_2"]);
        let c = Catalog::scan(dir.path(), Some("Kim_Vocal_2")).unwrap();
        assert_eq!(c.default, "Kim_Vocal_2");
        assert_eq!(c.names(), vec!["Kim_Vocal_2", BUILTIN_DSP]);
        assert!(Catalog::scan(dir.path(), Some("nope")).is_err());
    }

    #[test]
    fn the_library_sees_models_come_and_go_and_keeps_a_usable_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| dir.path().join(n);
        std::fs::write(file("A.onnx"), b"x").unwrap();
        let every = Duration::from_millis(1);
        let lib = Library::open(dir.path(), Some("A"), every).unwrap();
        let names = || {
            std::thread::sleep(every * 2);
            lib.current()
                .names()
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(), vec!["A", BUILTIN_DSP]);
        std::fs::write(file("B.onnx"), b"x").unwrap();
        assert_eq!(names(), vec!["A", BUILTIN_DSP, "B"]);
        std::fs::remove_file(file("B.onnx")).unwrap();
        assert_eq!(names(), vec!["A", BUILTIN_DSP]);
        // Without its DEFAULT_MODEL the directory cannot be used: the catalogue stays.
        std::fs::remove_file(file("A.onnx")).unwrap();
        assert_eq!(names(), vec!["A", BUILTIN_DSP]);
        // Never rescanned when the interval is zero.
        let frozen = Library::open(dir.path(), None, Duration::ZERO).unwrap();
        std::fs::write(file("C.onnx"), b"x").unwrap();
        assert_eq!(frozen.current().names(), vec![BUILTIN_DSP]);
    }

    /// An MDX-Net model's stems are its primary stem and the rest of the mix, named as UVR
    /// names them; without parameters it is taken for a vocal model.
    #[test]
    fn mdx_stems_follow_the_primary_stem() {
        let dir = tempfile::tempdir().unwrap();
        for (name, primary) in [("dereverb", "Reverb"), ("inst", "Instrumental")] {
            std::fs::write(dir.path().join(format!("{name}.onnx")), b"x").unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.json")),
                format!(r#"{{"n_fft": 6144, "primary_stem": "{primary}"}}"#),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("unknown.onnx"), b"x").unwrap();
        let c = Catalog::scan(dir.path(), None).unwrap();
        assert_eq!(
            c.get("dereverb").unwrap().stems,
            vec!["reverb", "no_reverb"]
        );
        assert_eq!(c.get("inst").unwrap().stems, vec!["instrumental", "vocals"]);
        assert_eq!(c.get("inst").unwrap().params["n_fft"], 6144);
        assert_eq!(
            c.get("unknown").unwrap().stems,
            vec!["vocals", "instrumental"]
        );
    }

    #[test]
    fn roformer_checkpoints_with_a_config_are_listed_with_their_stems() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = include_str!("../tests/fixtures/roformer/viperx_1297.yaml");
        std::fs::write(dir.path().join("viperx.ckpt"), b"x").unwrap();
        std::fs::write(dir.path().join("viperx.yaml"), yaml).unwrap();
        // A checkpoint without its config, and one with a broken config, are not offered.
        std::fs::write(dir.path().join("lonely.ckpt"), b"x").unwrap();
        std::fs::write(dir.path().join("broken.safetensors"), b"x").unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "model: [").unwrap();
        let c = Catalog::scan(dir.path(), Some("viperx")).unwrap();
        assert_eq!(c.names(), vec!["viperx", BUILTIN_DSP]);
        let m = c.get("viperx").unwrap();
        assert_eq!(m.family, "bs-roformer");
        assert_eq!(m.stems, vec!["vocals", "instrumental"]);
        assert_eq!(m.params["chunk_size"], 352_800);
        assert_eq!(m.files[0], dir.path().join("viperx.ckpt"));
    }
}
