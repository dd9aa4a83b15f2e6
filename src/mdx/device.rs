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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separator_device_values_parse() {
        for (raw, want) in [
            ("auto", DeviceChoice::Auto),
            ("", DeviceChoice::Auto),
            ("  Auto ", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("CPU", DeviceChoice::Cpu),
            ("gpu", DeviceChoice::Gpu(0)),
            ("gpu:0", DeviceChoice::Gpu(0)),
            ("gpu:3", DeviceChoice::Gpu(3)),
            ("GPU:12", DeviceChoice::Gpu(12)),
            ("software", DeviceChoice::Software),
            ("lavapipe", DeviceChoice::Software),
            ("LavaPipe", DeviceChoice::Software),
        ] {
            assert_eq!(raw.parse::<DeviceChoice>(), Ok(want), "{raw:?}");
        }
        for raw in [
            "tpu",
            "cuda",
            "gpu:",
            "gpu:-1",
            "gpu:x",
            "gpu:1:2",
            "gpu 1",
            "gpu1",
            "gpu:+",
            "cpu:0",
            "software:0",
            "vulkan",
            "auto,cpu",
            "gpugpu:1",
        ] {
            let err = raw.parse::<DeviceChoice>().unwrap_err();
            assert_eq!(err, "expected auto, cpu, gpu, gpu:N or software", "{raw:?}");
        }
    }

    #[test]
    fn separator_autotune_values_parse() {
        for (raw, want) in [
            ("minimal", TuneLevel::Minimal),
            ("balanced", TuneLevel::Balanced),
            ("extensive", TuneLevel::Extensive),
            ("full", TuneLevel::Full),
            (" Minimal ", TuneLevel::Minimal),
            ("FULL", TuneLevel::Full),
        ] {
            assert_eq!(raw.parse::<TuneLevel>(), Ok(want), "{raw:?}");
        }
        for raw in ["", "max", "fast", "none", "minimal,full", "0"] {
            let err = raw.parse::<TuneLevel>().unwrap_err();
            assert_eq!(
                err, "expected minimal, balanced, extensive or full",
                "{raw:?}"
            );
        }
        assert_eq!(
            TuneLevel::default(),
            TuneLevel::Balanced,
            "cubecl's default"
        );
    }

    /// Whether wgpu reaches a hardware GPU here (the development machine has none; Mesa's
    /// llvmpipe, which it does have, is a software adapter).
    #[cfg(feature = "mdx")]
    fn hardware_gpu() -> bool {
        [DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0)]
            .into_iter()
            .any(|k| probe(&Device::wgpu(k)))
    }

    /// `auto` takes a hardware GPU or the CPU, never the software adapter; without a
    /// hardware GPU, `gpu`/`gpu:N` fail with a message saying so instead of falling back.
    #[cfg(feature = "mdx")]
    #[test]
    fn auto_falls_back_to_the_cpu_and_gpu_fails_without_a_hardware_gpu() {
        let auto = select(DeviceChoice::Auto).expect("auto always finds a device");
        assert_ne!(
            auto.kind, "software-gpu",
            "auto took a software adapter: {auto:?}"
        );
        if hardware_gpu() {
            assert_eq!(auto.kind, "gpu", "{auto:?}");
            assert_eq!(select(DeviceChoice::Gpu(0)).unwrap().kind, "gpu");
        } else {
            assert_eq!(auto.kind, "cpu", "{auto:?}");
            assert!(auto.name.starts_with("burn-flex ("), "{auto:?}");
            for i in [0, 1, 7] {
                let err = select(DeviceChoice::Gpu(i)).unwrap_err();
                assert_eq!(
                    err,
                    format!("no hardware GPU with index {i} reachable through wgpu")
                );
            }
        }
        assert_eq!(select(DeviceChoice::Cpu).unwrap().kind, "cpu");
    }

    /// `software` runs the wgpu code path on Mesa's llvmpipe: lavapipe through Vulkan
    /// (`make test` installs it) or, where only Mesa's OpenGL driver is present, through GL;
    /// both name themselves llvmpipe.
    #[cfg(feature = "mdx")]
    #[test]
    fn software_selects_mesa_llvmpipe() {
        let d = select(DeviceChoice::Software)
            .expect("a software wgpu adapter (apt install mesa-vulkan-drivers)");
        assert_eq!(d.kind, "software-gpu");
        assert!(
            d.name.to_ascii_lowercase().contains("llvmpipe"),
            "not Mesa's software adapter: {d:?}"
        );
        assert!(probe(&d.device), "it computes");
    }
}
