//! The model families the engine knows, and the one place that lists them.
//!
//! A family finds its models among the files of `MODELS_DIR` (the catalogue lists them with
//! their stems and parameters) and loads one onto a device, giving a model that builds
//! separators. Adding a family is a module implementing [`Family`] and a line in
//! [`FAMILIES`].

use std::path::{Path, PathBuf};
#[cfg(feature = "mdx")]
use std::sync::Arc;

use crate::models::ModelInfo;
#[cfg(feature = "mdx")]
use crate::separation::{SeparateError, Separator};

/// The families, in the order their models are listed.
pub static FAMILIES: &[&dyn Family] = &[&crate::mdx::MdxFamily, &crate::roformer::RoformerFamily];

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
        opts: &RunOptions,
    ) -> Result<Arc<dyn LoadedModel>, SeparateError>;
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
