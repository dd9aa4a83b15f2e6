//! Neural separation with UVR's MDX-Net models on Burn.
//!
//! - [`onnx`]: reads the `.onnx` file (protobuf) without protoc or a generated schema.
//! - [`plan`]: checks the graph (ConvTDFNet of any geometry) and resolves it into
//!   operations; unsupported graphs are refused with a typed error.
//! - `graph`: compiles the plan into Burn operations on a device.
//! - `direct`: the CPU's direct convolution kernel for the stride-1 convolutions; `winograd`:
//!   its Winograd F(2×2, 3×3) kernel for the 3×3 ones.
//! - `demix`: UVR's chunked STFT → model → iSTFT → overlap-add procedure, streamed.
//! - [`device`]: `SEPARATOR_DEVICE` (auto, gpu, gpu:N, software, cpu).
//! - [`params`]: model parameters and demix options.
//! - [`synth`]: a ConvTDFNet graph with random weights built in memory (the benchmark's
//!   Kim_Vocal_2 geometry on machines without the Python reference script).
//!
//! Everything that needs Burn (`graph`, `demix`, device selection, `MdxModel`,
//! `MdxSeparator`) is behind the default `mdx` cargo feature; the ONNX reader, the graph
//! checks and the parameter lookup are always available.
//!
//! Model parameters the graph does not carry (`n_fft`, `hop`, `compensate`, primary stem)
//! come from a sidecar `<model>.json` beside the file, or from UVR's `model_data.json` in
//! `MODELS_DIR`, keyed by the MD5 of the file's last 10,240,000 bytes, as UVR does.

#[cfg(feature = "mdx")]
pub mod demix;
pub mod device;
#[cfg(feature = "mdx")]
mod direct;
#[cfg_attr(not(feature = "mdx"), allow(dead_code))]
mod fold;
#[cfg(feature = "mdx")]
pub mod graph;
pub mod onnx;
pub mod params;
pub mod plan;
#[cfg(feature = "mdx")]
mod simd;
pub mod synth;
#[cfg(feature = "mdx")]
mod winograd;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
#[cfg(feature = "mdx")]
use std::sync::Arc;

#[cfg(feature = "mdx")]
use burn::tensor::Device;
use md5::{Digest, Md5};

#[cfg(feature = "mdx")]
pub use graph::MdxNet;
pub use params::{DemixOptions, MdxParams};
pub use plan::GraphError;

#[cfg(feature = "mdx")]
use crate::separation::{FrameSource, Listener, SeparateError, Separator, StemSink};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid or supported ONNX file.
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    /// A graph that is not MDX-Net.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Neither a sidecar nor UVR's table knows the model's STFT parameters.
    #[error(
        "no parameters for {model}: add {sidecar} (n_fft, hop, compensate, primary_stem) or UVR's model_data.json to the models directory (file hash {hash})"
    )]
    NoParameters {
        /// The model name.
        model: String,
        /// The sidecar path expected.
        sidecar: PathBuf,
        /// The UVR hash of the file.
        hash: String,
    },
    /// The sidecar or table entry is malformed.
    #[error("bad parameters for {0}: {1}")]
    BadParameters(String, String),
}

/// UVR's model hash: MD5 of the last 10,240,000 bytes (the whole file when smaller).
pub fn uvr_hash(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let skip = len.saturating_sub(10_240_000);
    f.seek(SeekFrom::Start(skip))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The stems of a model with `params`: its primary stem, then the rest of the mix.
pub fn stems_of(params: &MdxParams) -> Vec<String> {
    let primary = crate::separation::stem_name(&params.primary_stem);
    let secondary = crate::separation::complement(&primary);
    vec![primary, secondary]
}

/// Finds a model's parameters: `<model>.json` beside it, else UVR's `model_data.json`.
pub fn parameters(path: &Path) -> Result<MdxParams, ModelError> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let sidecar = path.with_extension("json");
    if sidecar.exists() {
        let text = std::fs::read_to_string(&sidecar).map_err(|source| ModelError::Io {
            path: sidecar.clone(),
            source,
        })?;
        return serde_json::from_str(&text)
            .map_err(|e| ModelError::BadParameters(name, e.to_string()));
    }
    let hash = uvr_hash(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let table = path.with_file_name("model_data.json");
    if let Ok(text) = std::fs::read_to_string(&table) {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::BadParameters("model_data.json".into(), e.to_string()))?;
        if let Some(entry) = v.get(&hash) {
            let n_fft = entry["mdx_n_fft_scale_set"].as_u64();
            if let Some(n_fft) = n_fft {
                return Ok(MdxParams {
                    n_fft: n_fft as usize,
                    hop: 1024,
                    compensate: entry["compensate"].as_f64().unwrap_or(1.0) as f32,
                    primary_stem: entry["primary_stem"]
                        .as_str()
                        .unwrap_or("Vocals")
                        .to_string(),
                });
            }
        }
    }
    Err(ModelError::NoParameters {
        model: name,
        sidecar,
        hash,
    })
}

/// A loaded MDX-Net model, ready on its device.
#[cfg(feature = "mdx")]
#[derive(Debug)]
pub struct MdxModel {
    /// The name (file stem).
    pub name: String,
    /// The compiled network.
    pub net: MdxNet,
    /// STFT parameters.
    pub params: MdxParams,
}

#[cfg(feature = "mdx")]
impl MdxModel {
    /// Loads `path` onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let graph = onnx::parse(&bytes)?;
        let net = MdxNet::compile(&graph, device)?;
        let params = parameters(path)?;
        if params.n_fft / 2 + 1 < net.dim_f || params.hop == 0 {
            return Err(ModelError::BadParameters(
                path.display().to_string(),
                format!(
                    "n_fft {} gives fewer bins than dim_f {}",
                    params.n_fft, net.dim_f
                ),
            ));
        }
        Ok(Self {
            name: path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .to_string(),
            net,
            params,
        })
    }

    /// A model from an in-memory graph (benchmarks, tests).
    pub fn from_graph(
        name: &str,
        graph: &onnx::Graph,
        params: MdxParams,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            name: name.to_string(),
            net: MdxNet::compile(graph, device)?,
            params,
        })
    }

    /// Runs the forward pass a job with `opts` runs, at exactly its shape
    /// (`[batch, 4, dim_f, dim_t]`, denoised or not), so kernels are compiled and autotuned
    /// before the first job; on a GPU a job pads its last batch to that shape. The input is a
    /// low-level signal, not silence, so nothing is tuned on a degenerate all-zero case.
    pub fn warm_up(&self, opts: &DemixOptions) {
        let b = opts.batch_for(self.net.fixed_shapes());
        let spec: Vec<f32> = (0..b * 4 * self.net.dim_f * self.net.dim_t)
            .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
            .collect();
        let _ = demix::submit(&self.net, spec, b, opts.denoise).into_data();
    }
}

/// A [`Separator`] over a loaded model.
#[cfg(feature = "mdx")]
#[derive(Debug, Clone)]
pub struct MdxSeparator {
    model: Arc<MdxModel>,
    opts: DemixOptions,
    phases: demix::Phases,
}

#[cfg(feature = "mdx")]
impl MdxSeparator {
    /// A separator running `model` with `opts`.
    pub fn new(model: Arc<MdxModel>, opts: DemixOptions) -> Self {
        Self {
            model,
            opts,
            phases: demix::Phases::default(),
        }
    }

    /// Where the time went, summed over every input separated so far.
    pub fn phases(&self) -> &demix::Phases {
        &self.phases
    }
}

#[cfg(feature = "mdx")]
impl Separator for MdxSeparator {
    fn name(&self) -> &str {
        &self.model.name
    }

    fn family(&self) -> &'static str {
        "mdx-net"
    }

    /// The model's primary stem (`primary_stem` of its parameters, e.g. `vocals`,
    /// `instrumental`, `reverb`), then the rest of the mix (`instrumental`, `vocals`,
    /// `no_reverb`).
    fn stems(&self) -> Vec<String> {
        stems_of(&self.model.params)
    }

    fn separate(
        &mut self,
        input: &mut dyn FrameSource,
        output: &mut dyn StemSink,
        listener: &mut dyn Listener,
    ) -> Result<u64, SeparateError> {
        demix::demix(
            &self.model.net,
            &self.model.params,
            &self.opts,
            input,
            output,
            0,
            1,
            listener,
            &mut self.phases,
        )
    }
}
