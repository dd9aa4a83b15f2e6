//! Roformer speed, in seconds per minute of audio, at the geometry of viperx 1297
//! (`model_bs_roformer_ep_317_sdr_12.9755`: dim 512, depth 12, 62 bands, 8 s chunks; random
//! weights from `models/reference/bench_roformer_torch.py make-checkpoint`), for:
//! (a) Burn on the CPU (flex), (b) PyTorch on the CPU with the same thread count, the same
//! checkpoint, batch and overlap, in the same run (`bench_roformer_torch.py time`, MSST's
//! demix, `scaled_dot_product_attention` as MSST's `flash_attn: true` runs it), and (c) Burn on wgpu (a hardware GPU if there is one). Each side is warmed up with
//! one forward pass at exactly the batch it then times.
//!
//! `cargo bench --bench roformer` (`BENCH_SECONDS` of audio, default 10; `BENCH_DEVICES`,
//! default `cpu,torch,gpu`; `BENCH_CONFIG`, default viperx 1297's YAML; `BENCH_BATCH` and
//! `BENCH_OVERLAP` override the config's). Under `cargo test` it runs a smoke version on the
//! tiny fixture.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use uvr::mdx::device::{DeviceChoice, select};
use uvr::roformer::{RoformerModel, RoformerOptions, RoformerSeparator};
use uvr::separation::{NoListener, Separator, SliceSource, VecSink};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The clip `bench_roformer_torch.py` times is its own; both are music-like and of the same
/// length, and the work does not depend on the content.
fn clip(seconds: f64) -> Vec<[f32; 2]> {
    let n = (seconds * 44_100.0) as usize;
    let mut s: u32 = 11;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let t = i as f32 / 44_100.0;
            let v = (2.0 * std::f32::consts::PI * 220.0 * t).sin() * 0.3
                + (2.0 * std::f32::consts::PI * 331.0 * t).sin() * 0.2;
            let noise = (s as f32 / u32::MAX as f32 - 0.5) * 0.05;
            [v + noise, v - noise]
        })
        .collect()
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_burn(
    checkpoint: &Path,
    choice: DeviceChoice,
    audio: &[[f32; 2]],
    opts: RoformerOptions,
) -> Option<(f64, String)> {
    let device = match select(choice) {
        Ok(d) => d,
        Err(e) => {
            println!("  {choice:?}: unavailable ({e})");
            return None;
        }
    };
    if choice == DeviceChoice::Auto && device.kind == "cpu" {
        println!("  gpu: no hardware GPU");
        return None;
    }
    let started = Instant::now();
    let model = Arc::new(RoformerModel::load(checkpoint, &device.device).unwrap());
    let load = started.elapsed().as_secs_f64();
    let started = Instant::now();
    model.warm_up(&opts);
    let warm = started.elapsed().as_secs_f64();
    let plan = opts.plan(model.config());
    let mut sep = RoformerSeparator::new(model, opts);
    let started = Instant::now();
    let mut sink = VecSink::default();
    sep.separate(&mut SliceSource::new(audio), &mut sink, &mut NoListener)
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(
        sink.stems[0]
            .iter()
            .all(|f| f[0].is_finite() && f[1].is_finite()),
        "non-finite output"
    );
    Some((
        secs,
        format!(
            "{} ({}) batch {} overlap {}: load {load:.1} s, warm-up {warm:.1} s",
            device.kind,
            device.name,
            plan.batch,
            plan.chunk / plan.step
        ),
    ))
}

fn run_torch(
    checkpoint: &Path,
    seconds: f64,
    threads: usize,
    opts: RoformerOptions,
) -> Option<f64> {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("models/reference/bench_roformer_torch.py"))
        .arg("time")
        .arg(checkpoint)
        .arg(seconds.to_string())
        .arg(threads.to_string())
        // MSST's configs set `flash_attn: true`: PyTorch's fused attention.
        .args(["--attention", "sdpa"]);
    if let Some(b) = opts.batch_size {
        cmd.args(["--batch", &b.to_string()]);
    }
    if let Some(o) = opts.num_overlap {
        cmd.args(["--overlap", &o.to_string()]);
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        println!(
            "  torch: failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()?
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    v["seconds"].as_f64()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (checkpoint, seconds) = if quick {
        (root().join("tests/fixtures/roformer/bs.ckpt"), 1.0)
    } else {
        let config = std::env::var("BENCH_CONFIG").map_or_else(
            |_| root().join("tests/fixtures/roformer/viperx_1297.yaml"),
            PathBuf::from,
        );
        let dir = std::env::temp_dir().join("uvr-bench-roformer");
        std::fs::create_dir_all(&dir).unwrap();
        let checkpoint = dir.join(config.file_stem().unwrap()).with_extension("ckpt");
        if !checkpoint.exists() {
            let ok = Command::new("python3")
                .arg(root().join("models/reference/bench_roformer_torch.py"))
                .arg("make-checkpoint")
                .arg(&config)
                .arg(&checkpoint)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "making the benchmark checkpoint needs models/reference/requirements-roformer.txt"
            );
        }
        let secs = std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10.0);
        (checkpoint, secs)
    };
    let opts = RoformerOptions {
        num_overlap: env_usize("BENCH_OVERLAP"),
        batch_size: env_usize("BENCH_BATCH"),
    };
    let devices = std::env::var("BENCH_DEVICES").unwrap_or_else(|_| {
        if quick {
            "cpu".into()
        } else {
            "cpu,torch,gpu".into()
        }
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let audio = clip(seconds);
    println!(
        "Roformer demix of {seconds} s of audio, checkpoint {} ({threads} threads available)",
        checkpoint.file_name().unwrap().to_string_lossy()
    );
    let per_minute = |secs: f64| secs / seconds * 60.0;
    let (mut cpu, mut torch) = (None, None);
    for d in devices.split(',') {
        match d.trim() {
            "cpu" | "gpu" | "software" => {
                let choice = match d.trim() {
                    "cpu" => DeviceChoice::Cpu,
                    "gpu" => DeviceChoice::Auto,
                    _ => DeviceChoice::Software,
                };
                if let Some((s, what)) = run_burn(&checkpoint, choice, &audio, opts) {
                    println!("  burn {what}: {:.2} s per minute of audio", per_minute(s));
                    if choice == DeviceChoice::Cpu {
                        cpu = Some(per_minute(s));
                    }
                }
            }
            "torch" => {
                if let Some(s) = run_torch(&checkpoint, seconds, threads, opts) {
                    println!(
                        "  torch CPU ({threads} threads): {:.2} s per minute of audio",
                        per_minute(s)
                    );
                    torch = Some(per_minute(s));
                }
            }
            other => println!("  unknown device {other}"),
        }
    }
    if let (Some(c), Some(t)) = (cpu, torch) {
        println!("  burn CPU / torch CPU = {:.2}x", c / t);
    }
}
