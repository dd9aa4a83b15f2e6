//! MDX-Net on Burn against the reference: fixtures made by
//! `models/reference/generate_reference.py` (random-weight ConvTDFNet graphs exported the way
//! UVR's are, onnxruntime forward passes, and a numpy + onnxruntime re-implementation of
//! UVR's demix). Checked on the CPU backend, and on wgpu through a software Vulkan adapter
//! (lavapipe), which runs the GPU code path on any machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use serde_json::Value;
use uvr::mdx::device::{DeviceChoice, select};
use uvr::mdx::{DemixOptions, MdxModel, MdxSeparator};
use uvr::separation::{NoListener, Separator, SliceSource, VecSink};

#[path = "common/audio_compare.rs"]
mod audio_compare;
use audio_compare::{assert_stereo_matches, read_f32, snr_db, write_wav_f32};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

fn load(entry: &Value) -> (Vec<f32>, Vec<usize>) {
    let data = read_f32(&dir().join(entry["file"].as_str().unwrap()));
    let shape = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    (data, shape)
}

fn planar_to_frames(data: &[f32], n: usize) -> Vec<[f32; 2]> {
    (0..n).map(|i| [data[i], data[n + i]]).collect()
}

fn check_device(choice: DeviceChoice, models: &[&str]) {
    let device = select(choice).expect("device available").device;
    let reference = reference();
    let (clip, clip_shape) = load(&reference["clip"]);
    let n = clip_shape[1];
    let frames = planar_to_frames(&clip, n);
    let fixtures = reference["models"].as_object().unwrap();
    for name in models {
        let entry = fixtures
            .get(*name)
            .unwrap_or_else(|| panic!("no reference fixtures for the model {name}"));
        assert!(
            !entry["forward"].as_array().unwrap().is_empty()
                && !entry["demix"].as_array().unwrap().is_empty(),
            "{name}: the fixtures hold forward passes and demixes"
        );
        let model = Arc::new(MdxModel::load(&dir().join(format!("{name}.onnx")), &device).unwrap());
        // 1. Forward passes: max abs error < 1e-4.
        for fe in entry["forward"].as_array().unwrap() {
            let (x, shape) = load(&fe["input"]);
            let (want, _) = load(&fe["output"]);
            let t = Tensor::<4>::from_data(
                TensorData::new(x, [shape[0], shape[1], shape[2], shape[3]]),
                &device,
            );
            let got: Vec<f32> = model.net.forward(t).into_data().try_to_vec().unwrap();
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{name} {choice:?}: forward max abs error {worst}"
            );
        }
        // 2. Full demix: SNR > 60 dB against the reference procedure.
        for de in entry["demix"].as_array().unwrap() {
            let opts = DemixOptions {
                overlap: de["overlap"].as_f64().unwrap() as f32,
                denoise: de["denoise"].as_bool().unwrap(),
                batch: Some(3),
            };
            let mut sep = MdxSeparator::new(model.clone(), opts);
            let mut sink = VecSink::default();
            let written = sep
                .separate(&mut SliceSource::new(&frames), &mut sink, &mut NoListener)
                .unwrap();
            assert_eq!(written as usize, n);
            // Primary is "Vocals" for the fixtures: stem 0; secondary: stem 1.
            for (stem, key) in [(0, "primary"), (1, "secondary")] {
                let (want, _) = load(&de[key]);
                let got: Vec<f32> = (0..2)
                    .flat_map(|c| sink.stems[stem].iter().map(move |f| f[c]))
                    .collect();
                assert_stereo_matches(
                    &format!("{name} {choice:?} denoise={}: {key}", de["denoise"]),
                    &want,
                    &got,
                    n,
                    (60.0, 50.0, 1000),
                );
            }
        }
    }
}

#[test]
fn forward_and_demix_match_the_reference_on_the_cpu() {
    check_device(DeviceChoice::Cpu, &["tiny", "small5"]);
}

/// The GPU code path (WGSL kernels through wgpu) on Mesa's software Vulkan driver. Kernel
/// compilation dominates its time there, so it covers the tiny geometry (every operator, both
/// demix modes); `make test` sets `CUBECL_AUTOTUNE_LEVEL=minimal` to keep autotuning short.
#[test]
fn forward_and_demix_match_the_reference_on_wgpu_software_vulkan() {
    check_device(DeviceChoice::Software, &["tiny"]);
}

#[test]
fn bad_files_are_refused_with_typed_errors() {
    let device = select(DeviceChoice::Cpu).unwrap().device;
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\x0a\xff\xff\xff\xff\xff not protobuf").unwrap();
    let err = MdxModel::load(&garbage, &device).unwrap_err().to_string();
    assert!(err.contains("not a valid ONNX file"), "{err}");
    // A real graph without its parameters: no sidecar, no table entry.
    let onnx = tmp.path().join("orphan.onnx");
    std::fs::copy(dir().join("tiny.onnx"), &onnx).unwrap();
    let err = MdxModel::load(&onnx, &device).unwrap_err().to_string();
    assert!(err.contains("no parameters for orphan"), "{err}");
    // UVR's table, keyed by the hash of the file, supplies them.
    let hash = uvr::mdx::uvr_hash(&onnx).unwrap();
    let sidecar: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("tiny.json")).unwrap()).unwrap();
    let n_fft = sidecar["n_fft"].as_u64().unwrap();
    let table = serde_json::json!({ hash: {"compensate": 1.035, "mdx_dim_f_set": sidecar["dim_f"],
        "mdx_dim_t_set": 4, "mdx_n_fft_scale_set": n_fft, "primary_stem": "Instrumental"} });
    std::fs::write(tmp.path().join("model_data.json"), table.to_string()).unwrap();
    let m = MdxModel::load(&onnx, &device).unwrap();
    assert_eq!(m.params.n_fft as u64, n_fft);
    assert_eq!(m.params.primary_stem, "Instrumental");
    assert!((m.params.compensate - 1.035).abs() < 1e-6);
    // A graph with an operator outside the MDX-Net set.
    let bytes = std::fs::read(dir().join("tiny.onnx")).unwrap();
    let mut g = uvr::mdx::onnx::parse(&bytes).unwrap();
    g.nodes[3].op_type = "Softmax".into();
    let err = uvr::mdx::MdxNet::compile(&g, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported operator Softmax"), "{err}");
    // Missing weights.
    let mut g = uvr::mdx::onnx::parse(&bytes).unwrap();
    let first_weight = g.nodes[0].inputs[1].clone();
    g.initializers.remove(&first_weight);
    let err = uvr::mdx::MdxNet::compile(&g, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing parameter"), "{err}");
}

/// Runs `uvr separate` on `input` with the tiny model on lavapipe, kernel tuning cached in
/// `cache`; returns everything the process printed.
fn separate_with_cache(models: &Path, cache: &Path, input: &Path, out: &Path) -> String {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_uvr"))
        .arg("separate")
        .arg(input)
        .args(["--model", "tiny", "--format", "wav32f", "--json", "-o"])
        .arg(out)
        .env("MODELS_DIR", models)
        .env("SEPARATOR_DEVICE", "software")
        .env("SEPARATOR_CACHE_DIR", cache)
        .env("SEPARATOR_AUTOTUNE", "minimal")
        .env("MDX_BATCH", "2")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "uvr separate failed:\n{text}");
    text
}

/// The autotune cache entries a process reported loading (cubecl's log line, one per tuner).
fn cached_entries_loaded(log: &str) -> usize {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("Loaded ").nth(1)?;
            let (n, tail) = rest.split_once(' ')?;
            tail.starts_with("autotune cached entries")
                .then(|| n.parse::<usize>().ok())
                .flatten()
        })
        .sum()
}

/// Kernel tuning outlives the process: the first start tunes at the jobs' shapes and fills
/// `SEPARATOR_CACHE_DIR`; a second process loads those results instead of tuning again, and
/// separates to the same stems. The real binary, the GPU code path (lavapipe).
#[test]
fn a_new_process_loads_the_tuning_results_of_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for ext in ["onnx", "json"] {
        std::fs::copy(
            dir().join(format!("tiny.{ext}")),
            models.join(format!("tiny.{ext}")),
        )
        .unwrap();
    }
    let (clip, shape) = load(&reference()["clip"]);
    let input = tmp.path().join("mix.wav");
    write_wav_f32(&input, &clip, shape[1]);
    let cache = tmp.path().join("cache");

    let first = separate_with_cache(&models, &cache, &input, &tmp.path().join("first"));
    assert!(first.contains("kernel tuning cache is empty"), "{first}");
    assert_eq!(cached_entries_loaded(&first), 0, "{first}");
    assert!(
        std::fs::read_dir(&cache).unwrap().count() > 0,
        "the first start left nothing in the cache directory"
    );

    let second = separate_with_cache(&models, &cache, &input, &tmp.path().join("second"));
    assert!(second.contains("kernel tuning cache found"), "{second}");
    let loaded = cached_entries_loaded(&second);
    assert!(loaded > 0, "no cached tuning results loaded:\n{second}");

    let read = |run: &str| {
        let mut r =
            hound::WavReader::open(tmp.path().join(run).join("mix_(Vocals)_tiny.wav")).unwrap();
        r.samples::<f32>().map(Result::unwrap).collect::<Vec<f32>>()
    };
    let (a, b) = (read("first"), read("second"));
    assert_eq!(a.len(), b.len());
    let snr = snr_db(&a, &b);
    assert!(snr > 100.0, "the two runs disagree: {snr:.1} dB");
}
