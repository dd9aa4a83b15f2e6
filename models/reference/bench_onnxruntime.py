#!/usr/bin/env python3
"""onnxruntime side of `cargo bench --bench mdx`: runs UVR's demix of SECONDS of the benchmark
clip through MODEL.onnx with THREADS intra-op threads and BATCH chunks per forward pass (the
same chunking as generate_reference.demix, the chunks' STFTs stacked into one batch as UVR's
batched demix and the Rust engine do), and prints the seconds it took (the last line of
stdout). It warms up at the batch shape it then times.

    bench_onnxruntime.py MODEL.onnx SECONDS THREADS [BATCH]

The model's STFT parameters come from MODEL.json (written by --real-geometry)."""
import json
import sys
import time
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

import generate_reference as ref


def demix_batched(mix: np.ndarray, geo, run, batch: int, overlap: float = 0.25) -> np.ndarray:
    """generate_reference.demix (denoise off) with `batch` chunks per forward pass."""
    n = mix.shape[-1]
    plan = ref.demix_plan(n, geo, overlap)
    trim, chunk, pad, step, total = (
        plan["trim"], plan["chunk_size"], plan["pad"], plan["step"], plan["padded_len"],
    )
    mixture = np.concatenate(
        (np.zeros((2, trim), np.float32), mix, np.zeros((2, pad), np.float32)), 1
    )
    result = np.zeros((2, total))
    divider = np.zeros((2, total))
    starts = list(range(0, total, step))
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        parts = []
        for start in group:
            part = mixture[:, start : start + chunk]
            if part.shape[-1] != chunk:
                part = np.concatenate((part, np.zeros((2, chunk - part.shape[-1]), np.float32)), -1)
            parts.append(part)
        spek = ref.stft(np.stack(parts), geo).astype(np.float32)
        spek[:, :, :3, :] = 0.0
        waves = ref.istft(run(spek).astype(np.float64), geo)
        for start, wave in zip(group, waves):
            end = min(start + chunk, total)
            actual = end - start
            window = np.hanning(actual)
            result[:, start:end] += wave[:, :actual] * window
            divider[:, start:end] += window
    with np.errstate(divide="ignore", invalid="ignore"):
        out = result / divider
    return (out[:, trim:-trim][:, :n] * geo.compensate).astype(np.float32)


def main() -> int:
    model, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    side = json.load(open(model[: -len(".onnx")] + ".json"))
    geo = SimpleNamespace(
        n_fft=side["n_fft"], hop=side["hop"], dim_f=side["dim_f"], dim_t=side["dim_t"],
        compensate=side.get("compensate", 1.0),
        chunk_size=side["hop"] * (side["dim_t"] - 1),
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    run = ref.ort_runner(sess)
    # The same clip as the Rust benchmark: a 220 Hz tone plus decorrelated noise.
    n = int(seconds * ref.SAMPLE_RATE)
    t = np.arange(n) / ref.SAMPLE_RATE
    rng = np.random.default_rng(7)
    v = 0.3 * np.sin(2 * np.pi * 220 * t)
    noise = 0.05 * rng.standard_normal(n)
    mix = np.stack([v + noise, v - noise]).astype(np.float32)
    run(np.zeros((batch, 4, geo.dim_f, geo.dim_t), np.float32))  # warm-up at the timed shape
    start = time.time()
    demix_batched(mix, geo, run, batch)
    print(f"{time.time() - start:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
