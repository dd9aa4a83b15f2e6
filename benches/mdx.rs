//! MDX-Net speed, in seconds per minute of audio, at the real geometry of Kim_Vocal_2 /
//! UVR-MDX-NET-Voc_FT (dim_f 3072, 48 channels, 5 stages, n_fft 7680, dim_t 256; random
//! weights from `models/reference/generate_reference.py --real-geometry`), for:
//! (a) Burn on the CPU (flex), (b) onnxruntime on the same ONNX file with the same thread
//! count and the same batch size, in the same run, and (c) Burn on wgpu (a hardware GPU if
//! there is one, else the software Vulkan adapter, for information). Each side is warmed up at
//! exactly the shapes it then times; Burn's lines carry the per-phase split of the demix.
//!
//! `cargo bench --bench mdx` (`BENCH_SECONDS` of audio, default 30; `BENCH_BATCHES`, default
//! `1,4`; `BENCH_DEVICES`, default `cpu,onnxruntime,gpu`; `BENCH_SYNTHETIC=1` builds the
//! real-geometry graph in memory instead of generating the ONNX file with Python). Under
//! `cargo test` it runs a smoke version on the tiny fixture. `BENCH_PROFILE=1` adds the forward
//! pass's split by operator. The GPU figures beside PyTorch's
//! come from `scripts/gpu_bench.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use uvr::mdx::device::{DeviceChoice, select};
use uvr::mdx::{DemixOptions, MdxModel, MdxSeparator};
use uvr::separation::{NoListener, Separator, SliceSource, VecSink};

/// Separation allocates and frees large tensor buffers all the time: mimalloc reuses their
/// pages instead of faulting them in anew for every operation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn clip(seconds: f64) -> Vec<[f32; 2]> {
    let n = (seconds * 44_100.0) as usize;
    let mut s: u32 = 7;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let t = i as f32 / 44_100.0;
            let v = (2.0 * std::f32::consts::PI * 220.0 * t).sin() * 0.3;
            let noise = (s as f32 / u32::MAX as f32 - 0.5) * 0.1;
            [v + noise, v - noise]
        })
        .collect()
}

/// The model under test: an ONNX file, or the synthetic real-geometry graph.
enum Source {
    File(PathBuf),
    Synthetic,
}

fn load(source: &Source, device: &burn::tensor::Device) -> MdxModel {
    match source {
        Source::File(p) => MdxModel::load(p, device).unwrap(),
        Source::Synthetic => {
            let g = uvr::mdx::synth::convtdfnet(&uvr::mdx::synth::Geometry::KIM_VOCAL_2, 303);
            let params = uvr::mdx::MdxParams {
                n_fft: 7680,
                hop: 1024,
                compensate: 1.009,
                primary_stem: "Vocals".into(),
            };
            MdxModel::from_graph("kim_vocal_geometry", &g, params, device).unwrap()
        }
    }
}

/// One timed demix on Burn at `batch`, after a warm-up at exactly the shapes it times; the
/// seconds and a description with the per-phase split.
fn run_burn(
    model: &Source,
    choice: DeviceChoice,
    audio: &[[f32; 2]],
    batch: usize,
) -> Option<(f64, String)> {
    let device = match select(choice) {
        Ok(d) => d,
        Err(e) => {
            println!("  {choice:?}: unavailable ({e})");
            return None;
        }
    };
    let m = Arc::new(load(model, &device.device));
    let opts = DemixOptions {
        batch: Some(batch),
        ..DemixOptions::default()
    };
    let warm = Instant::now();
    m.warm_up(&opts);
    let warm = warm.elapsed().as_secs_f64();
    if std::env::var("BENCH_PROFILE").is_ok_and(|v| v == "1") {
        // One more pass at the timed shape, each operation waited for: where the forward goes.
        let len = batch * 4 * m.net.dim_f * m.net.dim_t;
        let x = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(vec![0.01f32; len], [batch, 4, m.net.dim_f, m.net.dim_t]),
            m.net.device(),
        );
        let (_, ops) = m.net.forward_profiled(x);
        let total: f64 = ops.iter().map(|(_, t)| t).sum();
        let split: Vec<String> = ops
            .iter()
            .map(|(op, t)| format!("{op} {:.0}%", 100.0 * t / total))
            .collect();
        println!(
            "  {} batch {batch} forward {total:.2} s by operator: {}",
            device.kind,
            split.join(", ")
        );
    }
    let mut sep = MdxSeparator::new(m, opts);
    let start = Instant::now();
    let mut sink = VecSink::default();
    sep.separate(&mut SliceSource::new(audio), &mut sink, &mut NoListener)
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let p = sep.phases();
    let share = |d: std::time::Duration| 100.0 * d.as_secs_f64() / secs;
    Some((
        secs,
        format!(
            "{} [{}] batch {batch} (warm-up {warm:.1} s; {} chunks in {} passes: STFT+upload {:.0}%, forward {:.0}%, iSTFT {:.0}%, overlap-add {:.0}%)",
            device.kind,
            device.name,
            p.chunks,
            p.passes,
            share(p.stft),
            share(p.forward),
            share(p.istft),
            share(p.overlap_add),
        ),
    ))
}

fn run_onnxruntime(model: &Path, seconds: f64, threads: usize, batch: usize) -> Option<f64> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/reference/bench_onnxruntime.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model)
        .arg(seconds.to_string())
        .arg(threads.to_string())
        .arg(batch.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "  onnxruntime: failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()?
        .parse()
        .ok()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
    let synthetic = std::env::var("BENCH_SYNTHETIC").is_ok_and(|v| v == "1");
    let (model, seconds): (PathBuf, f64) = if quick {
        (fixtures.join("tiny.onnx"), 2.0)
    } else if synthetic {
        (
            PathBuf::from("synthetic"),
            std::env::var("BENCH_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(30.0),
        )
    } else {
        let dir = std::env::temp_dir().join("uvr-bench-mdx");
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("kim_vocal_geometry.onnx");
        if !model.exists() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/reference/generate_reference.py");
            let ok = Command::new("python3")
                .arg(script)
                .arg("--real-geometry")
                .arg(&model)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "generating the real-geometry model needs the reference script's requirements"
            );
        }
        let secs = std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30.0);
        (model, secs)
    };
    let devices = std::env::var("BENCH_DEVICES").unwrap_or_else(|_| {
        if quick {
            "cpu".into()
        } else {
            "cpu,onnxruntime,gpu".into()
        }
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let audio = clip(seconds);
    println!(
        "MDX-Net demix of {seconds} s of audio, model {} ({} threads available, MIMALLOC_PURGE_DELAY {})",
        model.file_name().unwrap().to_string_lossy(),
        threads,
        std::env::var("MIMALLOC_PURGE_DELAY").unwrap_or_else(|_| "unset".into()),
    );
    let per_minute = |secs: f64| secs / seconds * 60.0;
    let source = if synthetic {
        Source::Synthetic
    } else {
        Source::File(model.clone())
    };
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| if quick { "2".into() } else { "1,4".into() })
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    for &batch in &batches {
        let mut cpu = None;
        let mut ort = None;
        for d in devices.split(',') {
            match d.trim() {
                "cpu" => {
                    if let Some((s, what)) = run_burn(&source, DeviceChoice::Cpu, &audio, batch) {
                        println!("  burn {what}: {:.2} s per minute of audio", per_minute(s));
                        cpu = Some(per_minute(s));
                    }
                }
                "onnxruntime" if synthetic => {
                    println!("  onnxruntime: skipped (synthetic graph, no ONNX file)")
                }
                "onnxruntime" => {
                    if let Some(s) = run_onnxruntime(&model, seconds, threads, batch) {
                        println!(
                            "  onnxruntime CPU ({threads} threads) batch {batch}: {:.2} s per minute of audio",
                            per_minute(s)
                        );
                        ort = Some(per_minute(s));
                    }
                }
                "gpu" | "software" => {
                    let choice = if d.trim() == "gpu" {
                        DeviceChoice::Auto
                    } else {
                        DeviceChoice::Software
                    };
                    if let Some((s, what)) = run_burn(&source, choice, &audio, batch) {
                        println!("  burn {what}: {:.2} s per minute of audio", per_minute(s));
                    }
                }
                other => println!("  unknown device {other}"),
            }
        }
        if let (Some(c), Some(o)) = (cpu, ort) {
            println!("  batch {batch}: burn CPU / onnxruntime = {:.2}x", c / o);
        }
    }
}
