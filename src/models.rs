//! The catalogue of separation models a deployment offers: the built-in DSP separator
//! (no weights) and every UVR MDX-Net `.onnx` file found in `MODELS_DIR`.
//!
//! The API validates the `model`, `stems` and `output_format` request fields against it.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The built-in separator's name.
pub const BUILTIN_DSP: &str = "dsp-centre";

/// Stems every model produces.
pub const STEMS: &[&str] = &["vocals", "instrumental"];

/// Output formats the stem writer supports.
pub const OUTPUT_FORMATS: &[&str] = &["wav", "wav16", "wav24", "wav32f"];

/// One model.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients pass as `model`.
    pub name: String,
    /// "dsp" or "mdx-net".
    pub kind: &'static str,
    /// The stems it produces.
    pub stems: Vec<&'static str>,
    /// The weights file, for models that have one (not shown by the API).
    #[serde(skip)]
    pub file: Option<PathBuf>,
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
    /// Scans `dir` for `.onnx` files (a missing directory offers only the built-in model) and
    /// picks `default` (the built-in separator when unset).
    pub fn scan(dir: &Path, default: Option<&str>) -> Result<Self, CatalogError> {
        let mut neural: Vec<ModelInfo> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
            })
            .filter_map(|p| {
                let name = p.file_stem()?.to_str()?.to_string();
                Some(ModelInfo {
                    name,
                    kind: "mdx-net",
                    stems: STEMS.to_vec(),
                    file: Some(p),
                })
            })
            .collect();
        neural.sort_by(|a, b| a.name.cmp(&b.name));
        let mut models = vec![ModelInfo {
            name: BUILTIN_DSP.into(),
            kind: "dsp",
            stems: STEMS.to_vec(),
            file: None,
        }];
        models.extend(neural);
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
}
