//! Model parameters and run-time options of the MDX demix: plain data, read from sidecar
//! files and the environment, available with or without the `mdx` feature.

/// Parameters of one model (from UVR's table or a sidecar file).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MdxParams {
    /// FFT size (5120, 6144 or 7680 for UVR's models).
    pub n_fft: usize,
    /// Hop size (1024 for UVR's models).
    #[serde(default = "default_hop")]
    pub hop: usize,
    /// Gain applied to the model's output.
    #[serde(default = "one")]
    pub compensate: f32,
    /// What the model outputs: "Vocals" or "Instrumental" (others count as vocals).
    #[serde(default = "vocals")]
    pub primary_stem: String,
}

fn default_hop() -> usize {
    1024
}
fn one() -> f32 {
    1.0
}
fn vocals() -> String {
    "Vocals".into()
}

/// Run-time options of the demix.
#[derive(Debug, Clone)]
pub struct DemixOptions {
    /// Chunk overlap, 0 ≤ overlap < 1 (`MDX_OVERLAP`, default 0.25).
    pub overlap: f32,
    /// Average `f(x)` and `-f(-x)` (`MDX_DENOISE`, default off; doubles the work).
    pub denoise: bool,
    /// Chunks per forward pass (`MDX_BATCH`); `None`: the device's own, see
    /// [`batch_for`](Self::batch_for).
    pub batch: Option<usize>,
}

impl DemixOptions {
    /// Chunks per forward pass on a device: `MDX_BATCH` when set; otherwise 4 on a GPU (fuller
    /// kernels) and 1 on the CPU, where a larger batch only adds memory traffic (Kim_Vocal_2
    /// geometry, 2 threads: batch 1 took 194.5 s per minute of audio, batch 4 215.8 s).
    pub fn batch_for(&self, gpu: bool) -> usize {
        self.batch.unwrap_or(if gpu { 4 } else { 1 }).max(1)
    }
}

impl Default for DemixOptions {
    fn default() -> Self {
        Self {
            overlap: 0.25,
            denoise: false,
            batch: None,
        }
    }
}
