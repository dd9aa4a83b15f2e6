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
