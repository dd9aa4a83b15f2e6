//! BS-Roformer and Mel-Band Roformer models on Burn, loaded at run time from a checkpoint
//! (`.ckpt`/`.pth` written by `torch.save`, or `.safetensors`) and the YAML config published
//! beside it (Music-Source-Separation-Training's layout).
//!
//! - [`config`]: the YAML, checked; unsupported variants refused by name.
//! - [`weights`]: the checkpoint's tensors by state-dict name.
//! - [`bands`]: which spectrogram rows each band reads (BS: contiguous; Mel: a Slaney mel
//!   filterbank, recomputed since it is not in the state dict).
//! - [`spectral`]: `torch.stft`/`torch.istft` on the CPU; band inputs and masks.
//! - `net`: the network on a Burn device.
//! - [`demix`]: MSST's chunked demix, streamed.
//!
//! A model is a pair `NAME.ckpt` (or `.pth`, `.safetensors`) + `NAME.yaml` in `MODELS_DIR`.

pub mod bands;
pub mod config;
pub mod demix;
#[cfg(feature = "mdx")]
pub mod net;
pub mod spectral;
pub mod weights;

use std::path::{Path, PathBuf};
#[cfg(feature = "mdx")]
use std::sync::Arc;

pub use config::{RoformerConfig, Variant};
#[cfg(feature = "mdx")]
pub use net::RoformerNet;
pub use weights::Weights;

#[cfg(feature = "mdx")]
use crate::separation::{FrameSource, Listener, SeparateError, Separator, StemSink};

/// Why a Roformer model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RoformerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML config is malformed or inconsistent.
    #[error("bad Roformer config: {0}")]
    Config(String),
    /// A variant this engine does not implement.
    #[error("unsupported Roformer variant: {0}")]
    Unsupported(String),
    /// The checkpoint file cannot be read.
    #[error("unreadable checkpoint {0}")]
    Checkpoint(String),
    /// A tensor the config calls for is not in the checkpoint.
    #[error("checkpoint has no tensor {0:?} (does the config match the checkpoint?)")]
    MissingTensor(String),
    /// A tensor has another shape than the config implies.
    #[error("tensor {name:?} has shape {found:?}, the config implies {expected:?}")]
    TensorShape {
        /// The tensor.
        name: String,
        /// Its shape per the config.
        expected: Vec<usize>,
        /// Its shape in the file.
        found: Vec<usize>,
    },
    /// The checkpoint holds tensors a model of the configured variant does not have.
    #[error("checkpoint has {} tensor(s) a {family} of this config does not: {}", names.len(), names.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    UnexpectedTensors {
        /// The configured family.
        family: &'static str,
        /// The unexpected names.
        names: Vec<String>,
    },
}

/// Checkpoint extensions, in order of preference when several share a name.
pub const CHECKPOINT_EXTENSIONS: &[&str] = &["ckpt", "pth", "pt", "safetensors"];

/// The config beside a checkpoint: `NAME.yaml` (or `.yml`).
pub fn config_path(checkpoint: &Path) -> Option<PathBuf> {
    ["yaml", "yml"]
        .iter()
        .map(|e| checkpoint.with_extension(e))
        .find(|p| p.is_file())
}

/// Demix overrides from the environment (`ROFORMER_NUM_OVERLAP`, `ROFORMER_BATCH_SIZE`);
/// unset values keep the model's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoformerOptions {
    /// Chunks overlapping each sample.
    pub num_overlap: Option<usize>,
    /// Chunks per forward pass.
    pub batch_size: Option<usize>,
}

impl RoformerOptions {
    /// The demix schedule of `config` with these overrides.
    pub fn plan(&self, config: &RoformerConfig) -> demix::Plan {
        let overlap = self.num_overlap.unwrap_or(config.num_overlap).max(1);
        demix::Plan {
            chunk: config.chunk_size,
            step: (config.chunk_size / overlap).max(1),
            batch: self.batch_size.unwrap_or(config.batch_size).max(1),
        }
    }
}

/// A loaded Roformer, ready on its device.
#[cfg(feature = "mdx")]
#[derive(Debug)]
pub struct RoformerModel {
    /// The name (file stem).
    pub name: String,
    /// The network.
    pub net: RoformerNet,
    stft: spectral::Stft,
}

#[cfg(feature = "mdx")]
impl RoformerModel {
    /// Loads the checkpoint at `path` with its config onto `device`.
    pub fn load(path: &Path, device: &burn::tensor::Device) -> Result<Self, RoformerError> {
        let yaml = config_path(path).ok_or_else(|| {
            RoformerError::Config(format!(
                "no config beside {}: expected {}",
                path.display(),
                path.with_extension("yaml").display()
            ))
        })?;
        let config = RoformerConfig::read(&yaml)?;
        let weights = Weights::read(path)?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        Self::new(&name, config, weights, device)
    }

    /// A model from a config and weights already read.
    pub fn new(
        name: &str,
        config: RoformerConfig,
        weights: Weights,
        device: &burn::tensor::Device,
    ) -> Result<Self, RoformerError> {
        let stft = spectral::Stft::new(config.n_fft, config.hop, config.stft_normalized);
        Ok(Self {
            name: name.to_string(),
            net: RoformerNet::new(config, weights, device)?,
            stft,
        })
    }

    /// The config.
    pub fn config(&self) -> &RoformerConfig {
        &self.net.config
    }

    /// Runs the network on `chunks` (`[channel][sample]`, each a full chunk): per chunk, per
    /// output, the two channels.
    pub fn run(&self, chunks: &[[Vec<f32>; 2]]) -> Vec<Vec<[Vec<f32>; 2]>> {
        use rayon::prelude::*;
        let net = &self.net;
        let frames = net.frames;
        let len = net.config.chunk_size;
        let specs: Vec<Vec<spectral::Spectrum>> = chunks
            .par_iter()
            .map(|c| c.par_iter().map(|ch| self.stft.forward(ch)).collect())
            .collect();
        let inputs = spectral::band_inputs(&net.layout, &specs, frames);
        let tensors = inputs
            .into_iter()
            .enumerate()
            .map(|(g, data)| net.upload(g, data, chunks.len() * frames))
            .collect();
        let masks: Vec<Vec<Vec<f32>>> = net
            .forward(tensors, chunks.len())
            .into_iter()
            .map(|groups| {
                groups
                    .into_iter()
                    .map(|t| t.into_data().try_to_vec::<f32>().expect("float masks"))
                    .collect()
            })
            .collect();
        let per_stem: Vec<Vec<Vec<spectral::Spectrum>>> = masks
            .par_iter()
            .map(|m| spectral::apply_masks(&net.layout, m, &specs, frames, net.config.zero_dc))
            .collect();
        (0..chunks.len())
            .into_par_iter()
            .map(|i| {
                per_stem
                    .iter()
                    .map(|stem| {
                        [
                            self.stft.inverse(&stem[i][0], len),
                            self.stft.inverse(&stem[i][1], len),
                        ]
                    })
                    .collect()
            })
            .collect()
    }

    /// One forward pass at the batch jobs run, so kernels are compiled (and on a GPU tuned)
    /// before the first job.
    pub fn warm_up(&self, opts: &RoformerOptions) {
        let plan = opts.plan(self.config());
        let chunk: Vec<f32> = (0..plan.chunk)
            .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
            .collect();
        let chunks = vec![[chunk.clone(), chunk]; plan.batch];
        let _ = self.run(&chunks);
    }
}

/// A [`Separator`] over a loaded Roformer.
#[cfg(feature = "mdx")]
#[derive(Debug, Clone)]
pub struct RoformerSeparator {
    model: Arc<RoformerModel>,
    opts: RoformerOptions,
}

#[cfg(feature = "mdx")]
impl RoformerSeparator {
    /// A separator running `model` with `opts`.
    pub fn new(model: Arc<RoformerModel>, opts: RoformerOptions) -> Self {
        Self { model, opts }
    }
}

#[cfg(feature = "mdx")]
impl Separator for RoformerSeparator {
    fn name(&self) -> &str {
        &self.model.name
    }

    fn family(&self) -> &'static str {
        self.model.config().variant.family()
    }

    fn stems(&self) -> Vec<String> {
        self.model.config().stems()
    }

    fn separate(
        &mut self,
        input: &mut dyn FrameSource,
        output: &mut dyn StemSink,
        listener: &mut dyn Listener,
    ) -> Result<u64, SeparateError> {
        let config = self.model.config();
        let plan = self.opts.plan(config);
        let model = self.model.clone();
        let mut forward = move |chunks: &[[Vec<f32>; 2]]| Ok::<_, SeparateError>(model.run(chunks));
        demix::demix(
            plan,
            config.num_stems,
            config.target_instrument.is_some(),
            &mut forward,
            input,
            output,
            listener,
        )
    }
}
