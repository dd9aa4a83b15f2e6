//! BS-Roformer and Mel-Band Roformer on Burn against PyTorch: fixtures made by
//! `models/reference/roformer_reference.py` (tiny random-weight models with MSST's state-dict
//! layout, saved as `.ckpt` plain, nested and float16, and `.safetensors`; forward passes
//! traced layer by layer; full demixes by MSST's procedure). Each model is loaded through
//! the real loader and checked on the CPU backend and on wgpu through a software Vulkan
//! adapter (lavapipe), which runs the GPU code path on any machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Tensor;
use serde_json::Value;
use uvr::mdx::device::{DeviceChoice, select};
use uvr::roformer::weights::{Array, Weights};
use uvr::roformer::{RoformerConfig, RoformerModel, RoformerOptions, RoformerSeparator, spectral};
use uvr::separation::{NoListener, Separator, SliceSource, VecSink};

#[path = "common/audio_compare.rs"]
mod audio_compare;
use audio_compare::{assert_stereo_matches, read_f32, snr_db, write_wav_f32};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roformer")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

/// A fixture's values and shape.
fn load(reference: &Value, file: &str) -> (Vec<f32>, Vec<usize>) {
    let data = read_f32(&dir().join(file));
    let shape = reference["files"][file]["shape"]
        .as_array()
        .unwrap_or_else(|| panic!("{file} is not in reference.json"))
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    (data, shape)
}

/// Max abs error relative to the reference's largest magnitude.
fn relative_error(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len(), "lengths differ");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    worst / scale
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The band-split input in the reference's layout `[b, t, (rows c)]`, band after band.
fn concat_bands(model: &RoformerModel, groups: &[Vec<f32>], batch: usize) -> Vec<f32> {
    let (layout, t) = (&model.net.layout, model.net.frames);
    let n = batch * t;
    let total: usize = (0..layout.bands.len()).map(|b| layout.width(b)).sum();
    let mut out = vec![0.0f32; n * total];
    let mut offset = 0;
    for band in 0..layout.bands.len() {
        let (g, k) = layout
            .groups
            .iter()
            .enumerate()
            .find_map(|(g, grp)| grp.bands.iter().position(|&b| b == band).map(|k| (g, k)))
            .unwrap();
        let w = layout.groups[g].width;
        let bw = layout.width(band);
        for row in 0..n {
            let src = &groups[g][(k * n + row) * w..(k * n + row) * w + bw];
            out[row * total + offset..row * total + offset + bw].copy_from_slice(src);
        }
        offset += bw;
    }
    out
}

/// `[b, stems, rows·2 per band..., t]` masks in the reference's `[b, n, f, t, c]` layout.
fn masks_as_reference(model: &RoformerModel, masks: &[Vec<Vec<f32>>], batch: usize) -> Vec<f32> {
    let t = model.net.frames;
    let mut out = Vec::new();
    for item in 0..batch {
        for stem in masks {
            let flat = concat_bands(model, stem, batch);
            let total = flat.len() / (batch * t);
            for f in 0..total / 2 {
                for frame in 0..t {
                    let row = (item * t + frame) * total;
                    out.push(flat[row + 2 * f]);
                    out.push(flat[row + 2 * f + 1]);
                }
            }
        }
    }
    out
}

fn check_forward(choice: DeviceChoice, name: &str, checkpoint: &str, output: &str) {
    let reference = reference();
    let device = select(choice).expect("device available").device;
    // `NAME.ckpt` through the whole loader (config found beside it); the other checkpoint
    // forms of the same weights with `NAME.yaml`.
    let model = if checkpoint.split('.').count() == 2 {
        RoformerModel::load(&dir().join(checkpoint), &device)
    } else {
        let config = RoformerConfig::read(&dir().join(format!("{name}.yaml"))).unwrap();
        Weights::read(&dir().join(checkpoint))
            .and_then(|w| RoformerModel::new(name, config, w, &device))
    }
    .unwrap_or_else(|e| panic!("{checkpoint}: {e}"));
    let (x, shape) = load(&reference, &format!("{name}.forward.input.f32"));
    let (batch, samples) = (shape[0], shape[2]);
    let chunks: Vec<[Vec<f32>; 2]> = (0..batch)
        .map(|b| {
            let at = |c: usize| x[(b * 2 + c) * samples..(b * 2 + c + 1) * samples].to_vec();
            [at(0), at(1)]
        })
        .collect();
    let tolerance = 1e-4;
    let what = format!("{name} ({checkpoint}) on {choice:?}");
    let check = |stage: &str, want: &[f32], got: &[f32]| {
        let e = relative_error(want, got);
        assert!(e < tolerance, "{what}: {stage} relative error {e:.2e}");
    };

    if checkpoint.ends_with(".fp16.ckpt") {
        let got = flatten_run(&model.run(&chunks));
        let (want, _) = load(&reference, output);
        check("output", &want, &got);
        return;
    }

    // The STFT and the gather into bands.
    let net = &model.net;
    let stft = spectral::Stft::new(net.config.n_fft, net.config.hop, net.config.stft_normalized);
    let specs: Vec<Vec<spectral::Spectrum>> = chunks
        .iter()
        .map(|c| c.iter().map(|ch| stft.forward(ch)).collect())
        .collect();
    let inputs = spectral::band_inputs(&net.layout, &specs, net.frames);
    let (want, _) = load(&reference, &format!("{name}.forward.bandsplit_input.f32"));
    check(
        "band-split input",
        &want,
        &concat_bands(&model, &inputs, batch),
    );

    // The network, layer by layer.
    let tensors = inputs
        .into_iter()
        .enumerate()
        .map(|(g, d)| net.upload(g, d, batch * net.frames))
        .collect();
    let (masks, trace) = net.forward_traced(tensors, batch);
    let (want, _) = load(&reference, &format!("{name}.forward.bandsplit.f32"));
    check("band split", &want, &values(trace.band_split));
    for (i, layer) in trace.layers.into_iter().enumerate() {
        let (want, _) = load(&reference, &format!("{name}.forward.layer{i}.f32"));
        check(&format!("layer {i}"), &want, &values(layer));
    }
    let masks: Vec<Vec<Vec<f32>>> = masks
        .into_iter()
        .map(|g| {
            g.into_iter()
                .map(|t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap())
                .collect()
        })
        .collect();
    let (want, _) = load(&reference, &format!("{name}.forward.mask.f32"));
    check("mask", &want, &masks_as_reference(&model, &masks, batch));

    // The waveform.
    let got = flatten_run(&model.run(&chunks));
    let (want, _) = load(&reference, output);
    check("output", &want, &got);
}

/// `[b][stem][channel][sample]` as the reference's `[b, stems, 2, samples]`.
fn flatten_run(out: &[Vec<[Vec<f32>; 2]>]) -> Vec<f32> {
    out.iter()
        .flat_map(|stems| stems.iter().flat_map(|s| s.iter().flatten().copied()))
        .collect()
}

fn check_demix(choice: DeviceChoice, name: &str) {
    let reference = reference();
    let device = select(choice).expect("device available").device;
    let model =
        Arc::new(RoformerModel::load(&dir().join(format!("{name}.ckpt")), &device).unwrap());
    let (clip, shape) = load(&reference, "clip.f32");
    let n = shape[1];
    let frames: Vec<[f32; 2]> = (0..n).map(|i| [clip[i], clip[n + i]]).collect();
    let mut sep = RoformerSeparator::new(model.clone(), RoformerOptions::default());
    let mut sink = VecSink::default();
    let written = sep
        .separate(&mut SliceSource::new(&frames), &mut sink, &mut NoListener)
        .unwrap();
    assert_eq!(written as usize, n);
    let config = model.config();
    let stems = sep.stems();
    assert_eq!(sink.stems.len(), stems.len());
    for (i, instrument) in config.outputs().iter().enumerate() {
        let (want, _) = load(&reference, &format!("{name}.demix.{instrument}.f32"));
        let got: Vec<f32> = (0..2)
            .flat_map(|c| sink.stems[i].iter().map(move |f| f[c]))
            .collect();
        assert_demix_matches(&format!("{name} {choice:?} {instrument}"), &want, &got, n);
        if config.target_instrument.is_some() {
            // The rest of the mix, against the mix minus the reference's target.
            let want: Vec<f32> = clip.iter().zip(&want).map(|(m, t)| m - t).collect();
            let got: Vec<f32> = (0..2)
                .flat_map(|c| sink.stems[1].iter().map(move |f| f[c]))
                .collect();
            assert_demix_matches(&format!("{name} {choice:?} {}", stems[1]), &want, &got, n);
        }
    }
}

/// SNR over the whole clip > 60 dB, and > 50 dB in every 2,000-sample stretch.
fn assert_demix_matches(what: &str, want: &[f32], got: &[f32], n: usize) {
    assert_stereo_matches(what, want, got, n, (60.0, 50.0, 2000));
}

const CASES: &[(&str, &str, &str)] = &[
    ("bs", "bs.ckpt", "bs.forward.output.f32"),
    ("bs", "bs.nested.ckpt", "bs.forward.output.f32"),
    ("bs", "bs.safetensors", "bs.forward.output.f32"),
    ("bs", "bs.fp16.ckpt", "bs.fp16.forward.output.f32"),
    ("bs_multi", "bs_multi.ckpt", "bs_multi.forward.output.f32"),
    ("mel", "mel.ckpt", "mel.forward.output.f32"),
    ("mel", "mel.safetensors", "mel.forward.output.f32"),
];

#[test]
fn forward_passes_match_pytorch_on_the_cpu() {
    for (name, checkpoint, output) in CASES {
        check_forward(DeviceChoice::Cpu, name, checkpoint, output);
    }
}

#[test]
fn demixes_match_msst_on_the_cpu() {
    for name in ["bs", "bs_multi", "mel"] {
        check_demix(DeviceChoice::Cpu, name);
    }
}

/// The GPU code path (WGSL kernels through wgpu) on Mesa's software Vulkan driver.
#[test]
fn forward_passes_and_demixes_match_on_wgpu_software_vulkan() {
    for (name, checkpoint, output) in CASES
        .iter()
        .filter(|c| matches!(c.1, "bs.ckpt" | "bs_multi.ckpt" | "mel.ckpt"))
    {
        check_forward(DeviceChoice::Software, name, checkpoint, output);
    }
    for name in ["bs", "mel"] {
        check_demix(DeviceChoice::Software, name);
    }
}

/// The names and shapes the loader takes, against the state dicts of the published
/// viperx 1297 BS-Roformer and the viperx Mel-Band Roformer (listed from MSST's own classes
/// at those configs): zero weights of exactly those names and shapes load, with nothing
/// missing and nothing left over.
#[test]
fn the_loader_takes_exactly_the_published_state_dict_keys() {
    let device = select(DeviceChoice::Cpu).unwrap().device;
    for (yaml, keys) in [
        ("viperx_1297.yaml", "viperx_1297.keys.json"),
        ("mel_3005.yaml", "mel_3005.keys.json"),
    ] {
        let config = RoformerConfig::read(&dir().join(yaml)).unwrap();
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(dir().join(keys)).unwrap()).unwrap();
        let tensors = list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let shape: Vec<usize> = k[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let n = shape.iter().product();
                (
                    k[0].as_str().unwrap().to_string(),
                    Array {
                        shape,
                        data: vec![0.0; n],
                    },
                )
            })
            .collect();
        RoformerModel::new("published", config, Weights::from_map(tensors), &device)
            .unwrap_or_else(|e| panic!("{yaml}: {e}"));
    }
}

/// A checkpoint that does not fit its config, or is not a checkpoint, is refused with an
/// error naming what is wrong.
#[test]
fn mismatched_and_unreadable_checkpoints_are_refused_by_name() {
    let device = select(DeviceChoice::Cpu).unwrap().device;
    let tmp = tempfile::tempdir().unwrap();
    // The BS weights with the Mel config.
    std::fs::copy(dir().join("bs.ckpt"), tmp.path().join("x.ckpt")).unwrap();
    std::fs::copy(dir().join("mel.yaml"), tmp.path().join("x.yaml")).unwrap();
    let e = RoformerModel::load(&tmp.path().join("x.ckpt"), &device).unwrap_err();
    assert!(e.to_string().contains("band_split.to_features"), "{e}");
    // A wider model than the checkpoint.
    let wide = std::fs::read_to_string(dir().join("bs.yaml"))
        .unwrap()
        .replace("  dim: 16\n", "  dim: 32\n");
    std::fs::write(tmp.path().join("x.yaml"), wide).unwrap();
    let e = RoformerModel::load(&tmp.path().join("x.ckpt"), &device).unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
    // Not a checkpoint.
    std::fs::write(tmp.path().join("x.ckpt"), b"not a zip or a pickle").unwrap();
    std::fs::copy(dir().join("bs.yaml"), tmp.path().join("x.yaml")).unwrap();
    let e = RoformerModel::load(&tmp.path().join("x.ckpt"), &device).unwrap_err();
    assert!(e.to_string().contains("unreadable checkpoint"), "{e}");
    // No config.
    std::fs::remove_file(tmp.path().join("x.yaml")).unwrap();
    let e = RoformerModel::load(&tmp.path().join("x.ckpt"), &device).unwrap_err();
    assert!(e.to_string().contains("x.yaml"), "{e}");
}

/// The real binary: a Roformer checkpoint with its config in `MODELS_DIR` is found, chosen
/// with `--model`, and separates a file into its stems; the summary names model and family,
/// and the stems match MSST's demix.
#[test]
fn uvr_separate_runs_a_roformer_from_the_models_directory() {
    let reference = reference();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for ext in ["ckpt", "yaml"] {
        std::fs::copy(
            dir().join(format!("bs.{ext}")),
            models.join(format!("roformer-vocals.{ext}")),
        )
        .unwrap();
    }
    let (clip, shape) = load(&reference, "clip.f32");
    let n = shape[1];
    let input = tmp.path().join("mix.wav");
    write_wav_f32(&input, &clip, n);
    let out = tmp.path().join("out");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_uvr"))
        .arg("separate")
        .arg(&input)
        .args([
            "--model",
            "roformer-vocals",
            "--format",
            "wav32f",
            "--json",
            "-o",
        ])
        .arg(&out)
        .env("MODELS_DIR", &models)
        .env("SEPARATOR_DEVICE", "cpu")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "uvr separate failed:\n{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // `--json`: one summary object per input, nothing else on stdout.
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["input"], input.display().to_string());
    assert_eq!(summary["model"], "roformer-vocals");
    assert_eq!(summary["family"], "bs-roformer");
    assert!(
        summary["timings"]["model_seconds"].as_f64().unwrap() > 0.0,
        "loading the model is reported: {summary}"
    );
    let (vocals, _) = load(&reference, "bs.demix.vocals.f32");
    let instrumental: Vec<f32> = clip.iter().zip(&vocals).map(|(m, v)| m - v).collect();
    for (stem, want) in [("Vocals", vocals), ("Instrumental", instrumental)] {
        let file = out.join(format!("mix_({stem})_roformer-vocals.wav"));
        let mut r = hound::WavReader::open(&file).unwrap();
        let got: Vec<f32> = r.samples::<f32>().map(Result::unwrap).collect();
        assert_eq!(got.len(), 2 * n, "{stem}");
        // Interleaved on disk, channels first in the reference.
        let planar: Vec<f32> = (0..2)
            .flat_map(|c| got.iter().skip(c).step_by(2).copied())
            .collect();
        let snr = snr_db(&want, &planar);
        assert!(snr > 60.0, "{stem}: SNR {snr:.1} dB");
    }
}
