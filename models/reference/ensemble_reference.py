#!/usr/bin/env python3
"""Reference of UVR's ensemble algorithms (lib_v5/spec_utils.py: ensemble_inputs,
ensembling, wave_to_spectrogram_no_mp, spectrogram_to_wave_no_mp, average_audio), in numpy
float64, for src/separation/ensemble.rs.

librosa 0.9 semantics, written out: stft(n_fft=2048, hop_length=1024, window periodic
'hann', center=True, pad_mode='reflect'); istft(hop_length=1024) overlap-adds the windowed
inverse FFTs, divides by the summed squared window where it is not tiny, and trims n_fft/2 at
both ends (length hop * (frames - 1)); UVR then zero-pads to the longest input. max_spec /
min_spec fold the outputs in order: spec = where(|next| >= |spec|, next, spec) (<= for min).
average is the mean of the waveforms.

Writes two synthetic model outputs and the three combinations as raw little-endian float32
stereo frames into tests/fixtures/ensemble/:

    python3 models/reference/ensemble_reference.py tests/fixtures/ensemble
"""

import sys
from pathlib import Path

import numpy as np

N_FFT = 2048
HOP = 1024


def window():
    k = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * k / N_FFT)


def stft(x):
    """x: (len,) -> (frames, bins) complex."""
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    frames = 1 + len(x) // HOP
    w = window()
    return np.stack(
        [np.fft.rfft(padded[t * HOP : t * HOP + N_FFT] * w) for t in range(frames)]
    )


def istft(spec):
    frames = spec.shape[0]
    w = window()
    total = N_FFT + HOP * (frames - 1)
    y = np.zeros(total)
    wsum = np.zeros(total)
    for t in range(frames):
        y[t * HOP : t * HOP + N_FFT] += np.fft.irfft(spec[t], n=N_FFT) * w
        wsum[t * HOP : t * HOP + N_FFT] += w * w
    tiny = np.finfo(np.float32).tiny
    nz = wsum > tiny
    y[nz] /= wsum[nz]
    return y[N_FFT // 2 : total - N_FFT // 2]


def spectral(outputs, larger):
    result = np.zeros_like(outputs[0])
    for ch in range(2):
        specs = [stft(o[:, ch]) for o in outputs]
        spec = specs[0]
        for s in specs[1:]:
            pick = np.abs(s) >= np.abs(spec) if larger else np.abs(s) <= np.abs(spec)
            spec = np.where(pick, s, spec)
        y = istft(spec)
        result[: len(y), ch] = y
    return result


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    n = 30_000  # not a multiple of the hop: the zero tail is part of the check
    t = np.arange(n) / 44_100
    a = np.stack(
        [
            0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n),
            0.3 * np.sin(2 * np.pi * 660 * t) + 0.05 * rng.standard_normal(n),
        ],
        axis=1,
    ).astype(np.float32)
    b = np.stack(
        [
            0.4 * np.sin(2 * np.pi * 440 * t + 0.7) + 0.08 * rng.standard_normal(n),
            0.6 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(n),
        ],
        axis=1,
    ).astype(np.float32)
    outputs = [a.astype(np.float64), b.astype(np.float64)]
    results = {
        "average": (outputs[0] + outputs[1]) / 2,
        "max_spec": spectral(outputs, True),
        "min_spec": spectral(outputs, False),
    }
    a.tofile(out / "a.f32")
    b.tofile(out / "b.f32")
    for name, r in results.items():
        r.astype(np.float32).tofile(out / f"{name}.f32")
    print(f"wrote {n} frames per file to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/ensemble")
