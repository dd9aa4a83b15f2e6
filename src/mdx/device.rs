//! Where models run, chosen in one place: `SEPARATOR_DEVICE`.
//!
//! - `auto` (default): the first hardware GPU wgpu finds (Vulkan, Metal or DX12), else the CPU.
//! - `gpu` or `gpu:N`: the N-th hardware GPU (0 first); start-up fails if there is none.
//! - `software`: wgpu on a software adapter (Mesa's lavapipe): the GPU code path on the CPU,
//!   slowly — for testing machines without a GPU.
//! - `cpu`: Burn's flex CPU backend.
//!
//! A GPU is only taken once a small computation has run on it, so a broken driver falls back
//! (for `auto`) or fails start-up (for `gpu`) instead of failing the first job.
//!
//! Without the `mdx` feature only the choice is parsed (a bad value is still a configuration
//! error); nothing is selected, since no model can run.

#[cfg(feature = "mdx")]
use std::fmt;

#[cfg(feature = "mdx")]
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};

/// The requested device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// First hardware GPU, else CPU.
    Auto,
    /// A hardware GPU by index.
    Gpu(usize),
    /// wgpu on a software adapter.
    Software,
    /// The CPU backend.
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "auto" | "" => Self::Auto,
            "cpu" => Self::Cpu,
            "gpu" => Self::Gpu(0),
            "software" | "lavapipe" => Self::Software,
            other => match other.strip_prefix("gpu:").map(str::parse::<usize>) {
                Some(Ok(i)) => Self::Gpu(i),
                _ => return Err("expected auto, cpu, gpu, gpu:N or software".into()),
            },
        })
    }
}

/// How hard cubecl searches for the fastest kernels of each new shape on a GPU
/// (`SEPARATOR_AUTOTUNE`); the CPU backend does not tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TuneLevel {
    /// Few candidates: the shortest first start, kernels a little slower.
    Minimal,
    /// cubecl's default.
    #[default]
    Balanced,
    /// More candidates.
    Extensive,
    /// Every candidate: the longest first start.
    Full,
}

impl std::str::FromStr for TuneLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "minimal" => Self::Minimal,
            "balanced" => Self::Balanced,
            "extensive" => Self::Extensive,
            "full" => Self::Full,
            _ => return Err("expected minimal, balanced, extensive or full".into()),
        })
    }
}

/// Kernel tuning settings of the GPU runtime, applied once per process before the first
/// device is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Where autotune results (and compiled kernels, where the backend caches them) persist
    /// across processes (`SEPARATOR_CACHE_DIR`); `None` (`off`): tuned anew by every process.
    pub cache_dir: Option<std::path::PathBuf>,
    /// The autotune level; `None` keeps cubecl's own (`CUBECL_AUTOTUNE_LEVEL` or balanced).
    pub level: Option<TuneLevel>,
}

/// What [`configure`] found in the cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// No persistent cache: every process tunes anew.
    Disabled,
    /// An empty cache directory: this process tunes and writes its results there.
    Empty(std::path::PathBuf),
    /// A cache directory an earlier process filled (its size in bytes): its results are
    /// reused.
    Existing(std::path::PathBuf, u64),
    /// The runtime was configured earlier in this process (or read its configuration before
    /// it could be set); these settings were not applied.
    AlreadyConfigured,
}

/// Applies `tuning` to the GPU runtime (cubecl): the cache directory (created if missing)
/// and the autotune level, over cubecl's own configuration file and `CUBECL_*` variables.
/// Must run before the first device is used; later calls change nothing.
#[cfg(feature = "mdx")]
pub fn configure(tuning: &Tuning) -> Result<CacheState, String> {
    use cubecl_runtime::config::autotune::AutotuneLevel;
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if let Some(level) = tuning.level {
        config.autotune.level = match level {
            TuneLevel::Minimal => AutotuneLevel::Minimal,
            TuneLevel::Balanced => AutotuneLevel::Balanced,
            TuneLevel::Extensive => AutotuneLevel::Extensive,
            TuneLevel::Full => AutotuneLevel::Full,
        };
    }
    let state = match &tuning.cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the cache directory {}: {e}", dir.display()))?;
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            config.environment.path = CacheConfig::Directory(dir.clone());
            config.autotune.disable_cache = false;
            config.compilation.cache = true;
            // The runtime keeps one database (and its journal) per environment in the directory.
            let bytes: u64 = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            if bytes > 0 {
                CacheState::Existing(dir, bytes)
            } else {
                CacheState::Empty(dir)
            }
        }
        None => {
            config.autotune.disable_cache = true;
            config.compilation.cache = false;
            CacheState::Disabled
        }
    };
    if CubeClRuntimeConfig::try_set(config) {
        Ok(state)
    } else {
        Ok(CacheState::AlreadyConfigured)
    }
}

/// A device that has run a computation.
#[cfg(feature = "mdx")]
#[derive(Clone)]
pub struct SelectedDevice {
    /// The Burn device.
    pub device: Device,
    /// "gpu", "software-gpu" or "cpu".
    pub kind: &'static str,
    /// The adapter's name, when the backend reports one.
    pub name: String,
}

#[cfg(feature = "mdx")]
impl fmt::Debug for SelectedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.name)
    }
}

#[cfg(feature = "mdx")]
fn probe(device: &Device) -> bool {
    let d = device.clone();
    std::panic::catch_unwind(move || {
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), &d);
        let y = x.clone().matmul(x).into_data();
        y.try_to_vec::<f32>()
            .map(|v| v == vec![7.0, 10.0, 15.0, 22.0])
            .unwrap_or(false)
    })
    .unwrap_or(false)
}

#[cfg(feature = "mdx")]
fn describe(device: &Device, kind: &'static str) -> SelectedDevice {
    let name = device
        .identity()
        .map(|i| i.name.to_string())
        .unwrap_or_else(|| kind.to_string());
    SelectedDevice {
        device: device.clone(),
        kind,
        name,
    }
}

#[cfg(feature = "mdx")]
fn cpu() -> SelectedDevice {
    SelectedDevice {
        device: Device::flex(),
        kind: "cpu",
        name: format!(
            "burn-flex ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    }
}

/// Resolves the choice to a working device.
#[cfg(feature = "mdx")]
pub fn select(choice: DeviceChoice) -> Result<SelectedDevice, String> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Software => {
            let d = Device::wgpu(DeviceKind::Cpu);
            if probe(&d) {
                Ok(describe(&d, "software-gpu"))
            } else {
                Err(
                    "no software wgpu adapter (install Mesa's lavapipe: mesa-vulkan-drivers)"
                        .into(),
                )
            }
        }
        DeviceChoice::Gpu(i) => {
            for kind in [DeviceKind::DiscreteGpu(i), DeviceKind::IntegratedGpu(i)] {
                let d = Device::wgpu(kind);
                if probe(&d) {
                    return Ok(describe(&d, "gpu"));
                }
            }
            Err(format!(
                "no hardware GPU with index {i} reachable through wgpu"
            ))
        }
        DeviceChoice::Auto => {
            for kind in [DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0)] {
                let d = Device::wgpu(kind);
                if probe(&d) {
                    return Ok(describe(&d, "gpu"));
                }
            }
            Ok(cpu())
        }
    }
}
