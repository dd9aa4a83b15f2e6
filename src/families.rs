//! The model families the engine knows, and the one place that lists them.
//!
//! A family finds its models among the files of `MODELS_DIR` (the catalogue lists them with
//! their stems and parameters) and loads one onto a device, giving a model that builds
//! separators. Adding a family is its module (the network and its loader), a [`Family`] here and a line in
//! [`FAMILIES`].

use std::path::{Path, PathBuf};
#[cfg(feature = "mdx")]
use std::sync::Arc;

#[cfg(feature = "mdx")]
use crate::separation::{SeparateError, Separator};

/// One model.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct ModelInfo {
    /// The name clients pass as `model`.
    pub name: String,
    /// "dsp", "mdx-net", "bs-roformer" or "mel-band-roformer".
    pub family: &'static str,
    /// The stems it produces.
    pub stems: Vec<String>,
    /// The model's parameters (geometry, demix settings), as far as they are known without
    /// loading it.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
    /// The model's files (weights first; none for the built-in separator; not shown by the
    /// API).
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// The families, in the order their models are listed.
pub static FAMILIES: &[&dyn Family] = &[&MdxFamily, &RoformerFamily];

/// The family whose models are called `name` in the catalogue.
pub fn family(name: &str) -> Option<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.names().contains(&name))
}

/// What a family needs to run its models.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// MDX-Net demix options (`MDX_OVERLAP`, `MDX_DENOISE`, `MDX_BATCH`).
    pub mdx: crate::mdx::DemixOptions,
    /// Roformer demix overrides (`ROFORMER_NUM_OVERLAP`, `ROFORMER_BATCH_SIZE`).
    pub roformer: crate::roformer::RoformerOptions,
}

/// A model family.
pub trait Family: Sync {
    /// The names its models have in the catalogue (`GET /models`'s `family`).
    fn names(&self) -> &'static [&'static str];

    /// The family's models among `files` (the regular files of the models directory, sorted).
    /// A file that looks like the family's but cannot be used is logged and skipped.
    fn discover(&self, files: &[PathBuf]) -> Vec<ModelInfo>;

    /// Loads `model` (one this family discovered) onto `device`.
    #[cfg(feature = "mdx")]
    fn load(
        &self,
        model: &ModelInfo,
        device: &burn::tensor::Device,
    ) -> Result<Arc<dyn LoadedModel>, SeparateError>;
}

/// A family's load result as the engine keeps it.
#[cfg(feature = "mdx")]
fn loaded<M: LoadedModel + 'static>(
    model: Result<M, impl std::fmt::Display>,
) -> Result<Arc<dyn LoadedModel>, SeparateError> {
    match model {
        Ok(m) => Ok(Arc::new(m)),
        Err(e) => Err(SeparateError::Model(e.to_string())),
    }
}

/// A model on its device.
#[cfg(feature = "mdx")]
pub trait LoadedModel: Send + Sync + std::fmt::Debug {
    /// Runs one forward pass at the shape jobs use, so kernels are compiled and tuned before
    /// the first job.
    fn warm_up(&self, opts: &RunOptions);
    /// A separator over this model.
    fn separator(self: Arc<Self>, opts: &RunOptions) -> Box<dyn Separator>;
    /// Geometry for the "model loaded" log line.
    fn describe(&self) -> String;
}

/// The model's name: the file name without its extension.
pub fn stem_of(path: &Path) -> Option<String> {
    Some(path.file_stem()?.to_str()?.to_string())
}

/// Whether `path` has one of `extensions` (case-insensitive).
pub fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The MDX-Net family: UVR's `.onnx` models, with their parameters from a sidecar or UVR's
/// `model_data.json`.
#[derive(Debug)]
pub struct MdxFamily;

impl Family for MdxFamily {
    fn names(&self) -> &'static [&'static str] {
        &["mdx-net"]
    }

    fn discover(&self, files: &[PathBuf]) -> Vec<ModelInfo> {
        files
            .iter()
            .filter(|p| has_extension(p, &["onnx"]))
            .filter_map(|p| {
                // Known without loading only when a sidecar or UVR's table has them; with
                // neither there is nothing to look up (and no file to hash).
                let known = p.with_extension("json").is_file()
                    || p.with_file_name("model_data.json").is_file();
                let params = known.then(|| crate::mdx::parameters(p).ok()).flatten();
                Some(ModelInfo {
                    name: stem_of(p)?,
                    family: "mdx-net",
                    stems: params.as_ref().map_or_else(
                        || {
                            crate::separation::STEMS
                                .iter()
                                .map(|s| s.to_string())
                                .collect()
                        },
                        crate::mdx::stems_of,
                    ),
                    params: params
                        .map(|m| {
                            serde_json::json!({
                                "n_fft": m.n_fft,
                                "hop": m.hop,
                                "compensate": m.compensate,
                                "primary_stem": m.primary_stem,
                            })
                        })
                        .unwrap_or_default(),
                    files: vec![p.clone()],
                })
            })
            .collect()
    }

    #[cfg(feature = "mdx")]
    fn load(
        &self,
        model: &ModelInfo,
        device: &burn::tensor::Device,
    ) -> Result<Arc<dyn LoadedModel>, SeparateError> {
        loaded(crate::mdx::MdxModel::load(&model.files[0], device))
    }
}

#[cfg(feature = "mdx")]
impl LoadedModel for crate::mdx::MdxModel {
    fn warm_up(&self, opts: &RunOptions) {
        crate::mdx::MdxModel::warm_up(self, &opts.mdx);
    }

    fn separator(self: Arc<Self>, opts: &RunOptions) -> Box<dyn Separator> {
        Box::new(crate::mdx::MdxSeparator::new(self, opts.mdx.clone()))
    }

    fn describe(&self) -> String {
        format!(
            "dim_f {} dim_t {} n_fft {}",
            self.net.dim_f, self.net.dim_t, self.params.n_fft
        )
    }
}

/// The Roformer family: a checkpoint with its YAML config beside it.
#[derive(Debug)]
pub struct RoformerFamily;

impl Family for RoformerFamily {
    fn names(&self) -> &'static [&'static str] {
        &["bs-roformer", "mel-band-roformer"]
    }

    fn discover(&self, files: &[PathBuf]) -> Vec<ModelInfo> {
        let mut out: Vec<ModelInfo> = Vec::new();
        for ext in crate::roformer::CHECKPOINT_EXTENSIONS {
            for p in files.iter().filter(|p| has_extension(p, &[ext])) {
                let Some(name) = stem_of(p) else {
                    continue;
                };
                let Some(yaml) = crate::roformer::config_path(p) else {
                    continue;
                };
                if out.iter().any(|m| m.name == name) {
                    continue;
                }
                match crate::roformer::RoformerConfig::read(&yaml) {
                    Ok(c) => out.push(ModelInfo {
                        name,
                        family: c.variant.family(),
                        stems: c.stems(),
                        params: serde_json::json!({
                            "dim": c.dim,
                            "depth": c.depth,
                            "n_fft": c.n_fft,
                            "hop": c.hop,
                            "chunk_size": c.chunk_size,
                            "num_overlap": c.num_overlap,
                            "batch_size": c.batch_size,
                            "sample_rate": c.sample_rate,
                        }),
                        files: vec![p.clone(), yaml],
                    }),
                    Err(e) => tracing::warn!(
                        checkpoint = %p.display(),
                        error = %e,
                        "Roformer checkpoint skipped: its config cannot be used"
                    ),
                }
            }
        }
        out
    }

    #[cfg(feature = "mdx")]
    fn load(
        &self,
        model: &ModelInfo,
        device: &burn::tensor::Device,
    ) -> Result<Arc<dyn LoadedModel>, SeparateError> {
        loaded(crate::roformer::RoformerModel::load(
            &model.files[0],
            device,
        ))
    }
}

#[cfg(feature = "mdx")]
impl LoadedModel for crate::roformer::RoformerModel {
    fn warm_up(&self, opts: &RunOptions) {
        crate::roformer::RoformerModel::warm_up(self, &opts.roformer);
    }

    fn separator(self: Arc<Self>, opts: &RunOptions) -> Box<dyn Separator> {
        Box::new(crate::roformer::RoformerSeparator::new(self, opts.roformer))
    }

    fn describe(&self) -> String {
        let c = self.config();
        format!(
            "{} dim {} depth {} bands {} chunk {}",
            c.variant.family(),
            c.dim,
            c.depth,
            self.net.layout.bands.len(),
            c.chunk_size
        )
    }
}
