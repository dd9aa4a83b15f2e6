#!/usr/bin/env python3
"""onnxruntime side of `cargo bench --bench mdx`: runs the reference demix (UVR's procedure,
generate_reference.demix) of SECONDS of the benchmark clip through MODEL.onnx with THREADS
intra-op threads, and prints the seconds it took (the last line of stdout).

    bench_onnxruntime.py MODEL.onnx SECONDS THREADS

The model's STFT parameters come from MODEL.json (written by --real-geometry)."""
import json
import sys
import time
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

import generate_reference as ref


def main() -> int:
    model, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
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
    run(np.zeros((1, 4, geo.dim_f, geo.dim_t), np.float32))  # warm-up
    start = time.time()
    ref.demix(mix, geo, run, overlap=0.25, denoise=False)
    print(f"{time.time() - start:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
