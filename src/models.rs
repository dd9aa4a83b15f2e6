//! The catalogue of separation models a deployment offers: the built-in DSP separator
//! (no weights) and every model a family ([`crate::families`]) finds in `MODELS_DIR`:
//! UVR MDX-Net `.onnx` files, Roformer checkpoints with their YAML configs.
//!
//! The API validates the `model`, `stems` and `output_format` request fields against it.

use std::path::{Path, PathBuf};

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
