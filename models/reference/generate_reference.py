#!/usr/bin/env python3
"""Reference side of uvr's MDX-Net (ConvTDFNet) engine.

Builds KUIELab's ConvTDFNet -- the network behind UVR's MDX-Net ``.onnx`` models
(Kim_Vocal_2, UVR-MDX-NET-Voc_FT, Inst_HQ_*, ...) -- at small geometries with
seeded random weights, writes it as ONNX in the form UVR's public models have
(opset 13, batch axis dynamic, BatchNormalization folded into the plain
convolutions but kept after every MatMul and ConvTranspose), and writes the
reference outputs the Rust tests compare against:

* model forward passes (onnxruntime output, cross-checked against an
  independent float64 NumPy forward with the batch norms *unfolded*);
* an STFT / iSTFT round trip with UVR's conventions;
* full demixes of a short synthetic stereo clip by a NumPy + onnxruntime
  re-implementation of UVR's MDX demix procedure (denoise off and on).

Everything is seeded: running the script twice writes byte-identical fixtures
(on the same machine and package versions; see README.md).

Usage:
    python3 models/reference/generate_reference.py            # fixtures -> tests/fixtures/mdx/
    python3 models/reference/generate_reference.py --out DIR  # fixtures elsewhere
    python3 models/reference/generate_reference.py --real-geometry /tmp/kim_like.onnx [--smoke]
        # Kim_Vocal_2 / Voc_FT geometry (dim_f 3072, dim_t 256, g 48, 5 stages,
        # n_fft 7680), random weights, ~67 MB: for benchmarks, never committed.

If PyTorch is importable the script also builds the network as a torch
``nn.Module`` (written independently of the NumPy/ONNX builder below), loads the
same weights, and checks (a) torch eval output against onnxruntime on the
hand-built graph and (b) that ``torch.onnx.export`` (TorchScript exporter,
opset 13, constant folding) yields the same op-type set and the same outputs.
The fixtures never depend on torch.  ``--no-torch`` skips that check.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-5
OPSET = 13
IR_VERSION = 7  # what torch's TorchScript exporter writes for opset 13
SAMPLE_RATE = 44100
EXPECTED_OPS = sorted(
    ["Conv", "ConvTranspose", "BatchNormalization", "MatMul", "Relu", "Add", "Mul", "Transpose"]
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures", "mdx"))


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    name: str
    dim_f: int  # frequency bins fed to the network (first dim_f of n_fft//2+1)
    dim_t: int  # STFT frames per chunk
    n_fft: int
    hop: int
    g: int  # channel growth per stage (first_conv outputs g channels)
    num_blocks: int  # KUIELab's "num_blocks"; stages = num_blocks // 2
    l: int  # conv layers per TFC
    bn: int  # TDF bottleneck factor: Linear(f, f // bn), Linear(f // bn, f); 0 = one Linear(f, f)
    k: int = 3  # TFC kernel size
    compensate: float = 1.0
    primary_stem: str = "Vocals"
    seed: int = 0

    @property
    def stages(self) -> int:
        return self.num_blocks // 2

    @property
    def chunk_size(self) -> int:
        return self.hop * (self.dim_t - 1)

    def validate(self) -> None:
        d = 2**self.stages
        assert self.dim_f % d == 0, f"{self.name}: dim_f must be divisible by 2^stages"
        assert self.dim_t % d == 0, f"{self.name}: dim_t must be divisible by 2^stages"
        assert self.n_fft % 2 == 0, f"{self.name}: n_fft must be even"
        assert self.n_fft // 2 + 1 >= self.dim_f, f"{self.name}: n_fft//2+1 must be >= dim_f"
        assert self.bn == 0 or (self.dim_f // d) // self.bn >= 1, f"{self.name}: TDF bottleneck < 1"
        assert self.chunk_size - self.n_fft > 0, f"{self.name}: gen_size must be > 0"
        assert self.k % 2 == 1

    def sidecar(self) -> dict:
        return {
            "dim_f": self.dim_f,
            "dim_t": self.dim_t,
            "n_fft": self.n_fft,
            "hop": self.hop,
            "compensate": self.compensate,
            "primary_stem": self.primary_stem,
            "stages": self.stages,
            "g": self.g,
            "l": self.l,
            "bn": self.bn,
            "k": self.k,
            "num_blocks": self.num_blocks,
        }


# Fixture geometries (see README.md for why they deviate from the brief where they do).
TINY = Geometry(
    name="tiny", dim_f=64, dim_t=16, n_fft=160, hop=32, g=8, num_blocks=5, l=3, bn=4,
    compensate=1.035, seed=101,
)
SMALL5 = Geometry(
    name="small5", dim_f=128, dim_t=64, n_fft=320, hop=64, g=8, num_blocks=11, l=3, bn=2,
    compensate=1.009, seed=202,
)
# Kim_Vocal_2 / UVR-MDX-NET-Voc_FT geometry (hop 1024 is UVR's fixed MDX hop).
REAL = Geometry(
    name="real", dim_f=3072, dim_t=256, n_fft=7680, hop=1024, g=48, num_blocks=11, l=3, bn=8,
    compensate=1.009, seed=303,
)


# --------------------------------------------------------------------------------------
# The architecture, written once, driven through a backend
# --------------------------------------------------------------------------------------


def tfc_tdf(B, prefix: str, x, c: int, f: int, geo: Geometry):
    """TFC_TDF as used by ConvTDFNet (dense=False): l x (Conv kxk + BN + ReLU), then
    TDF along the last (frequency) axis; returns tfc_out + tdf_out."""
    for j in range(geo.l):
        x = B.conv(x, f"{prefix}.tfc.H.{j}.0", f"{prefix}.tfc.H.{j}.1", c, geo.k, 1, geo.k // 2)
        x = B.relu(x)
    if geo.bn == 0:
        t = B.relu(B.linear_bn(x, f"{prefix}.tdf.0", f"{prefix}.tdf.1", f))
    else:
        t = B.relu(B.linear_bn(x, f"{prefix}.tdf.0", f"{prefix}.tdf.1", f // geo.bn))
        t = B.relu(B.linear_bn(t, f"{prefix}.tdf.3", f"{prefix}.tdf.4", f))
    return B.add(x, t)


def convtdfnet(B, x, geo: Geometry):
    """ConvTDFNet.forward. Input/output [B, 4, dim_f, dim_t]; inside, [B, c, t, f]."""
    g, n = geo.g, geo.stages
    x = B.relu(B.conv(x, "first_conv.0", "first_conv.1", g, 1, 1, 0))
    x = B.transpose(x)  # [B, g, dim_t, dim_f]
    f, c = geo.dim_f, g
    skips = []
    for i in range(n):
        x = tfc_tdf(B, f"encoding_blocks.{i}", x, c, f, geo)
        skips.append(x)
        x = B.relu(B.conv(x, f"ds.{i}.0", f"ds.{i}.1", c + g, 2, 2, 0))
        f //= 2
        c += g
    x = tfc_tdf(B, "bottleneck_block", x, c, f, geo)
    for i in range(n):
        x = B.relu(B.conv_transpose_bn(x, f"us.{i}.0", f"us.{i}.1", c - g))
        f *= 2
        c -= g
        x = B.mul(x, skips[-i - 1])
        x = tfc_tdf(B, f"decoding_blocks.{i}", x, c, f, geo)
    x = B.transpose(x)  # [B, c, dim_f, dim_t]
    return B.conv(x, "final_conv.0", None, 4, 1, 1, 0)


class NumpyBackend:
    """float64 NumPy evaluation with BatchNorm in eval form (unfolded).

    With ``rng`` set, missing parameters are created on first use (so creation order
    is execution order), and with ``calibrate`` set every BN's running statistics are
    set to the per-channel statistics of the tensor it sees (a deterministic stand-in
    for training that keeps activations O(1) through the multiplicative skips)."""

    def __init__(self, params: dict, rng: np.random.Generator | None = None, calibrate: bool = False):
        self.p = params
        self.rng = rng
        self.calibrate = calibrate

    # parameter creation -------------------------------------------------------------
    def _need(self, name: str, shape, kind: str, fan_in: int = 1):
        if name in self.p:
            assert self.p[name].shape == tuple(shape), (name, self.p[name].shape, shape)
            return self.p[name]
        assert self.rng is not None, f"missing parameter {name}"
        if kind == "he":
            v = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif kind == "lecun":
            v = self.rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
        elif kind == "bias":
            v = self.rng.uniform(-0.1, 0.1, shape)
        elif kind == "gamma":
            v = self.rng.uniform(0.75, 1.25, shape)
        elif kind == "beta":
            v = self.rng.uniform(0.25, 0.75, shape)
        else:
            raise ValueError(kind)
        self.p[name] = v.astype(np.float64)
        return self.p[name]

    def _bn(self, x, prefix: str):
        c = x.shape[1]
        gamma = self._need(f"{prefix}.weight", (c,), "gamma")
        beta = self._need(f"{prefix}.bias", (c,), "beta")
        if self.calibrate:
            self.p[f"{prefix}.running_mean"] = x.mean(axis=(0, 2, 3))
            self.p[f"{prefix}.running_var"] = np.maximum(x.var(axis=(0, 2, 3)), 1e-3)
        mean = self.p[f"{prefix}.running_mean"]
        var = self.p[f"{prefix}.running_var"]
        s = gamma / np.sqrt(var + BN_EPS)
        return (x - mean[None, :, None, None]) * s[None, :, None, None] + beta[None, :, None, None]

    # ops ------------------------------------------------------------------------------
    def conv(self, x, prefix, bn_prefix, cout, k, stride, pad):
        cin = x.shape[1]
        kind = "he" if bn_prefix is not None else "lecun"
        w = self._need(f"{prefix}.weight", (cout, cin, k, k), kind, cin * k * k)
        b = self._need(f"{prefix}.bias", (cout,), "bias")
        bsz, _, h, wd = x.shape
        if stride == 1:
            xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
            ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
            y = np.zeros((cout, bsz, ho, wo))
            for i in range(k):
                for j in range(k):
                    y += np.tensordot(w[:, :, i, j], xp[:, :, i:i + ho, j:j + wo], axes=([1], [1]))
            y = y.transpose(1, 0, 2, 3)
        else:
            assert stride == k == 2 and pad == 0 and h % 2 == 0 and wd % 2 == 0
            xr = x.reshape(bsz, cin, h // 2, 2, wd // 2, 2)
            y = np.tensordot(xr, w, axes=([1, 3, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
        y = y + b[None, :, None, None]
        return self._bn(y, bn_prefix) if bn_prefix is not None else y

    def conv_transpose_bn(self, x, prefix, bn_prefix, cout):
        cin = x.shape[1]
        w = self._need(f"{prefix}.weight", (cin, cout, 2, 2), "he", cin)  # torch/ONNX layout [in, out, kh, kw]
        b = self._need(f"{prefix}.bias", (cout,), "bias")
        bsz, _, h, wd = x.shape
        y = np.tensordot(x, w, axes=([1], [0]))  # [B, h, w, cout, 2, 2]
        y = y.transpose(0, 3, 1, 4, 2, 5).reshape(bsz, cout, 2 * h, 2 * wd)
        return self._bn(y + b[None, :, None, None], bn_prefix)

    def linear_bn(self, x, prefix, bn_prefix, fout):
        fin = x.shape[-1]
        w = self._need(f"{prefix}.weight", (fout, fin), "he", fin)  # torch layout [out, in], bias=False
        return self._bn(x @ w.T, bn_prefix)

    def relu(self, x):
        return np.maximum(x, 0.0)

    def add(self, a, b):
        return a + b

    def mul(self, a, b):
        return a * b

    def transpose(self, x):
        return x.swapaxes(-1, -2)


class OnnxBackend:
    """Emits the graph UVR's exported models have: Conv (+ folded BN) / ConvTranspose +
    BatchNormalization / MatMul ([in, out] initializer) + BatchNormalization / Relu /
    Add / Mul / Transpose, float32 initializers."""

    def __init__(self, params: dict):
        self.p = params
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def _out(self, op: str) -> str:
        self.n += 1
        return f"/{op}_{self.n}_output_0"

    def _init(self, name: str, arr) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def _node(self, op, inputs, name_hint, **attrs) -> str:
        out = self._out(op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{name_hint}/{op}_{self.n}", **attrs))
        return out

    def _bn(self, x, prefix):
        ins = [x]
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            ins.append(self._init(f"{prefix}.{suffix}", self.p[f"{prefix}.{suffix}"]))
        return self._node("BatchNormalization", ins, prefix, epsilon=BN_EPS, momentum=0.9)

    def conv(self, x, prefix, bn_prefix, cout, k, stride, pad):
        w = self.p[f"{prefix}.weight"]
        b = self.p[f"{prefix}.bias"]
        if bn_prefix is not None:  # fold eval-mode BN into the conv (as torch's exporter does)
            s = self.p[f"{bn_prefix}.weight"] / np.sqrt(self.p[f"{bn_prefix}.running_var"] + BN_EPS)
            w = w * s[:, None, None, None]
            b = (b - self.p[f"{bn_prefix}.running_mean"]) * s + self.p[f"{bn_prefix}.bias"]
        ins = [x, self._init(f"{prefix}.weight", w), self._init(f"{prefix}.bias", b)]
        return self._node(
            "Conv", ins, prefix, dilations=[1, 1], group=1, kernel_shape=[k, k],
            pads=[pad, pad, pad, pad], strides=[stride, stride],
        )

    def conv_transpose_bn(self, x, prefix, bn_prefix, cout):
        ins = [x, self._init(f"{prefix}.weight", self.p[f"{prefix}.weight"]),
               self._init(f"{prefix}.bias", self.p[f"{prefix}.bias"])]
        y = self._node(
            "ConvTranspose", ins, prefix, dilations=[1, 1], group=1, kernel_shape=[2, 2],
            output_padding=[0, 0], pads=[0, 0, 0, 0], strides=[2, 2],
        )
        return self._bn(y, bn_prefix)

    def linear_bn(self, x, prefix, bn_prefix, fout):
        wt = self.p[f"{prefix}.weight"].T  # [in, out]
        y = self._node("MatMul", [x, self._init(f"{prefix}.weight_T", wt)], prefix)
        return self._bn(y, bn_prefix)

    def relu(self, x):
        return self._node("Relu", [x], "relu")

    def add(self, a, b):
        return self._node("Add", [a, b], "add")

    def mul(self, a, b):
        return self._node("Mul", [a, b], "mul")

    def transpose(self, x):
        return self._node("Transpose", [x], "transpose", perm=[0, 1, 3, 2])


def build_onnx(params: dict, geo: Geometry) -> onnx.ModelProto:
    B = OnnxBackend(params)
    out = convtdfnet(B, "input", geo)
    # rename the last tensor to "output"
    last = B.nodes[-1]
    assert last.output[0] == out
    last.output[0] = "output"
    shape = ["batch_size", 4, geo.dim_f, geo.dim_t]
    graph = helper.make_graph(
        B.nodes,
        f"ConvTDFNet_{geo.name}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=B.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="uvr-models-reference",
        producer_version="1",
        ir_version=IR_VERSION,
    )
    model.doc_string = json.dumps(geo.sidecar(), sort_keys=True)
    onnx.checker.check_model(model)
    return model


def op_types(model: onnx.ModelProto) -> list:
    return sorted({n.op_type for n in model.graph.node})


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def make_params(geo: Geometry, calib_input: np.ndarray) -> dict:
    """Seeded random weights; BN running stats calibrated on ``calib_input``; the final
    conv rescaled so the output's std is half the input's (on the calibration batch)."""
    params: dict = {}
    rng = np.random.default_rng(geo.seed)
    y = convtdfnet(NumpyBackend(params, rng, calibrate=True), calib_input.astype(np.float64), geo)
    scale = 0.5 * calib_input.std() / y.std()
    params["final_conv.0.weight"] = params["final_conv.0.weight"] * scale
    params["final_conv.0.bias"] = params["final_conv.0.bias"] * scale
    return params


def numpy_forward(params: dict, geo: Geometry, x: np.ndarray) -> np.ndarray:
    return convtdfnet(NumpyBackend(params), x.astype(np.float64), geo)


# --------------------------------------------------------------------------------------
# Signal processing (UVR conventions)
# --------------------------------------------------------------------------------------


def hann_periodic(n: int) -> np.ndarray:
    """torch.hann_window(n, periodic=True)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft(wave: np.ndarray, geo: Geometry) -> np.ndarray:
    """UVR STFT.__call__: torch.stft(center=True, pad_mode='reflect', periodic Hann,
    onesided, not normalised) of each channel; channels stacked (L.re, L.im, R.re, R.im);
    first dim_f bins kept.  wave [B, 2, L] -> [B, 4, dim_f, 1 + L // hop] (float64)."""
    n_fft, hop = geo.n_fft, geo.hop
    bsz, ch, length = wave.shape
    xp = np.pad(wave.astype(np.float64), ((0, 0), (0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    frames_n = 1 + length // hop
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft, axis=-1)[:, :, ::hop][:, :, :frames_n]
    spec = np.fft.rfft(frames * hann_periodic(n_fft), axis=-1)  # [B, ch, T, n_bins]
    spec = spec[..., : geo.dim_f].transpose(0, 1, 3, 2)  # [B, ch, dim_f, T]
    out = np.stack([spec.real, spec.imag], axis=2)  # [B, ch, 2, dim_f, T]
    return out.reshape(bsz, ch * 2, geo.dim_f, frames_n)


def istft(spec: np.ndarray, geo: Geometry) -> np.ndarray:
    """UVR STFT.inverse: zero-pad bins dim_f..n_fft//2 back, (re, im) pairs -> complex,
    torch.istft(center=True, periodic Hann, length=None): irfft (imaginary parts of the
    DC and Nyquist bins ignored), window, overlap-add, divide by the summed squared
    window, drop n_fft//2 samples at each end.  [B, 4, dim_f, T] -> [B, 2, hop*(T-1)]."""
    n_fft, hop = geo.n_fft, geo.hop
    bsz, c4, f, t = spec.shape
    n_bins = n_fft // 2 + 1
    full = np.zeros((bsz, c4, n_bins, t))
    full[:, :, :f] = spec
    full = full.reshape(bsz, c4 // 2, 2, n_bins, t)
    z = (full[:, :, 0] + 1j * full[:, :, 1]).transpose(0, 1, 3, 2)  # [B, ch, T, n_bins]
    win = hann_periodic(n_fft)
    frames = np.fft.irfft(z, n=n_fft, axis=-1) * win  # [B, ch, T, n_fft]
    total = n_fft + hop * (t - 1)
    y = np.zeros((bsz, c4 // 2, total))
    env = np.zeros(total)
    for i in range(t):
        y[:, :, i * hop: i * hop + n_fft] += frames[:, :, i]
        env[i * hop: i * hop + n_fft] += win**2
    lo, hi = n_fft // 2, total - n_fft // 2
    assert np.all(env[lo:hi] > 1e-11)
    return y[:, :, lo:hi] / env[lo:hi]


def demix_plan(n: int, geo: Geometry, overlap=0.25) -> dict:
    """The integers of UVR's chunking for an n-sample mix."""
    trim = geo.n_fft // 2
    chunk = geo.chunk_size
    gen = chunk - 2 * trim
    pad = gen + trim - (n % gen)
    total = trim + n + pad
    step = chunk - geo.n_fft if overlap == "default" else int((1 - overlap) * chunk)
    return {
        "trim": trim, "chunk_size": chunk, "gen_size": gen, "pad": pad, "padded_len": total,
        "step": step, "chunks": len(range(0, total, step)),
    }


def demix(mix: np.ndarray, geo: Geometry, run, overlap=0.25, denoise: bool = False):
    """UVR SeperateMDX.demix / audio-separator MDXSeparator.demix (segment size = dim_t,
    no pitch shift, no normalisation), followed by compensate and the secondary stem.
    mix: float32 [2, N].  Returns (primary, secondary) float32 [2, N]."""
    n = mix.shape[-1]
    plan = demix_plan(n, geo, overlap)
    trim, chunk, pad, step, total = plan["trim"], plan["chunk_size"], plan["pad"], plan["step"], plan["padded_len"]
    mixture = np.concatenate(
        (np.zeros((2, trim), np.float32), mix.astype(np.float32), np.zeros((2, pad), np.float32)), 1
    )
    assert mixture.shape[-1] == total
    result = np.zeros((2, total))
    divider = np.zeros((2, total))
    for start in range(0, total, step):
        end = min(start + chunk, total)
        actual = end - start
        part = mixture[:, start:end]
        if actual != chunk:
            part = np.concatenate((part, np.zeros((2, chunk - actual), np.float32)), -1)
        spek = stft(part[None], geo).astype(np.float32)  # [1, 4, dim_f, dim_t]
        spek[:, :, :3, :] = 0.0
        if denoise:
            pred = -run(-spek).astype(np.float64) * 0.5 + run(spek).astype(np.float64) * 0.5
        else:
            pred = run(spek).astype(np.float64)
        wave = istft(pred, geo)[0]  # [2, chunk]
        if overlap == 0:
            divider[:, start:end] += 1.0
        else:
            window = np.hanning(actual)  # symmetric Hann, np.hanning(1) == [1.]
            wave[:, :actual] *= window
            divider[:, start:end] += window
        result[:, start:end] += wave[:, :actual]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = result / divider
    out = out[:, trim:-trim][:, :n]
    assert np.all(np.isfinite(out))
    primary = (out * geo.compensate).astype(np.float32)
    secondary = (mix.astype(np.float32) - primary).astype(np.float32)
    return primary, secondary


def synth_clip(seconds: float = 0.8, seed: int = 4242) -> np.ndarray:
    """A centred harmonic 'voice' (identical in L and R: f0 glide 196->247 Hz with 5 Hz
    vibrato, 12 harmonics with 1/h roll-off and seeded phases, syllable envelope) over
    wide (independent per channel) white noise.  float32 [2, N], peak < 0.9."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = (196.0 + 51.0 * t / seconds) * (1.0 + 0.012 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    phases = rng.uniform(0, 2 * np.pi, 12)
    voice = sum(np.sin((h + 1) * phase + phases[h]) / (h + 1) for h in range(12))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * t - np.pi / 2) ** 2
    voice = 0.35 * voice * env / np.max(np.abs(voice))
    noise = 0.06 * rng.standard_normal((2, n))
    mix = (voice[None, :] + noise).astype(np.float32)
    assert np.max(np.abs(mix)) < 0.9
    return mix


# --------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------


def ort_session(model_bytes: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def ort_runner(sess: ort.InferenceSession):
    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(["output"], {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


# --------------------------------------------------------------------------------------
# Optional torch cross-check (independent nn.Module definition)
# --------------------------------------------------------------------------------------


def torch_check(params: dict, geo: Geometry, x: np.ndarray, ort_out: np.ndarray, report: dict) -> None:
    try:
        import torch
        from torch import nn
    except ImportError:
        print(f"  [{geo.name}] torch not importable: torch cross-check skipped")
        return

    def conv_bn_relu(cin, cout, k, s, p):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU())

    class Block(nn.Module):  # TFC_TDF with dense=False
        def __init__(self, c, f):
            super().__init__()
            self.tfc = nn.Module()
            self.tfc.H = nn.ModuleList(conv_bn_relu(c, c, geo.k, 1, geo.k // 2) for _ in range(geo.l))
            if geo.bn == 0:
                self.tdf = nn.Sequential(nn.Linear(f, f, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            else:
                self.tdf = nn.Sequential(
                    nn.Linear(f, f // geo.bn, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                    nn.Linear(f // geo.bn, f, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                )

        def forward(self, x):
            for h in self.tfc.H:
                x = h(x)
            return x + self.tdf(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g, n = geo.g, geo.stages
            self.first_conv = conv_bn_relu(4, g, 1, 1, 0)
            f, c = geo.dim_f, g
            self.encoding_blocks, self.ds = nn.ModuleList(), nn.ModuleList()
            for _ in range(n):
                self.encoding_blocks.append(Block(c, f))
                self.ds.append(conv_bn_relu(c, c + g, 2, 2, 0))
                f, c = f // 2, c + g
            self.bottleneck_block = Block(c, f)
            self.decoding_blocks, self.us = nn.ModuleList(), nn.ModuleList()
            for _ in range(n):
                self.us.append(nn.Sequential(nn.ConvTranspose2d(c, c - g, 2, 2), nn.BatchNorm2d(c - g), nn.ReLU()))
                f, c = f * 2, c - g
                self.decoding_blocks.append(Block(c, f))
            self.final_conv = nn.Sequential(nn.Conv2d(c, 4, 1))

        def forward(self, x):
            x = self.first_conv(x).transpose(-1, -2)
            skips = []
            for enc, ds in zip(self.encoding_blocks, self.ds):
                x = enc(x)
                skips.append(x)
                x = ds(x)
            x = self.bottleneck_block(x)
            for i, (us, dec) in enumerate(zip(self.us, self.decoding_blocks)):
                x = us(x)
                x = x * skips[-i - 1]
                x = dec(x)
            return self.final_conv(x.transpose(-1, -2))

    torch.manual_seed(0)
    net = Net()
    sd = {k: torch.tensor(v.astype(np.float32)) for k, v in params.items()}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    net.eval()
    with torch.no_grad():
        t_out = net(torch.tensor(x)).numpy()
    d_torch_ort = float(np.max(np.abs(t_out - ort_out)))
    print(f"  [{geo.name}] torch eval vs onnxruntime (hand-built graph): max|diff| = {d_torch_ort:.3e}")
    report["max_abs_diff_torch_eval_vs_onnxruntime"] = d_torch_ort

    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net, (torch.tensor(x),), buf, opset_version=OPSET, dynamo=False, do_constant_folding=True,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
            )
        except Exception as e:  # the TorchScript exporter may be gone in later torch releases
            print(f"  [{geo.name}] torch.onnx.export (TorchScript) failed: {e!r}")
            return
    tm = onnx.load_from_string(buf.getvalue())
    t_ops = op_types(tm)
    counts = {}
    for nd in tm.graph.node:
        counts[nd.op_type] = counts.get(nd.op_type, 0) + 1
    print(f"  [{geo.name}] torch.onnx.export op types: {t_ops} counts {dict(sorted(counts.items()))}")
    t_run = ort_runner(ort_session(buf.getvalue()))(x)
    d_exp = float(np.max(np.abs(t_run - ort_out)))
    print(f"  [{geo.name}] torch-exported graph vs hand-built graph (onnxruntime): max|diff| = {d_exp:.3e}")
    report["torch_export_op_types"] = t_ops
    report["torch_export_op_counts"] = dict(sorted(counts.items()))
    report["max_abs_diff_torch_export_vs_handbuilt"] = d_exp
    # initializer layouts of the torch export, for the record
    init_shapes = {i.name: list(i.dims) for i in tm.graph.initializer}
    mm = [init_shapes.get(nd.input[1]) for nd in tm.graph.node if nd.op_type == "MatMul"]
    report["torch_export_matmul_weight_shapes"] = mm


def torch_dsp_check(geo: Geometry, wave: np.ndarray, model_out: np.ndarray) -> None:
    """Compare stft()/istft() with UVR's torch.stft/torch.istft calls."""
    try:
        import torch
    except ImportError:
        print(f"  [{geo.name}] torch not importable: torch STFT cross-check skipped")
        return
    win = torch.hann_window(geo.n_fft, periodic=True, dtype=torch.float64)
    x = torch.tensor(wave[None], dtype=torch.float64)  # [1, 2, L]
    s = torch.stft(x.reshape(-1, x.shape[-1]), n_fft=geo.n_fft, hop_length=geo.hop, window=win,
                   center=True, return_complex=True)
    s = torch.view_as_real(s).permute(0, 3, 1, 2).reshape(1, 4, -1, s.shape[-1])[:, :, : geo.dim_f]
    d1 = float(np.max(np.abs(s.numpy() - stft(wave[None], geo))))
    y = torch.tensor(model_out, dtype=torch.float64)
    n_bins = geo.n_fft // 2 + 1
    y = torch.cat([y, torch.zeros(1, 4, n_bins - geo.dim_f, y.shape[-1], dtype=torch.float64)], -2)
    y = y.reshape(1, 2, 2, n_bins, -1).reshape(-1, 2, n_bins, y.shape[-1]).permute(0, 2, 3, 1)
    z = torch.istft(torch.complex(y[..., 0], y[..., 1]), n_fft=geo.n_fft, hop_length=geo.hop, window=win,
                    center=True).reshape(1, 2, -1)
    d2 = float(np.max(np.abs(z.numpy() - istft(model_out.astype(np.float64), geo))))
    print(f"  [{geo.name}] numpy vs torch (float64): stft max|diff| = {d1:.3e}, "
          f"istft (model output, non-zero DC imag) max|diff| = {d2:.3e}")
    assert d1 < 1e-9 and d2 < 1e-9, (d1, d2)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


class Writer:
    def __init__(self, out_dir: str):
        self.dir = out_dir
        os.makedirs(out_dir, exist_ok=True)

    def raw(self, name: str, arr: np.ndarray) -> dict:
        a = np.ascontiguousarray(arr, dtype="<f4")
        data = a.tobytes()
        with open(os.path.join(self.dir, name), "wb") as fh:
            fh.write(data)
        return {"file": name, "shape": list(a.shape), "sha256": hashlib.sha256(data).hexdigest()}

    def bytes(self, name: str, data: bytes) -> dict:
        with open(os.path.join(self.dir, name), "wb") as fh:
            fh.write(data)
        return {"file": name, "sha256": hashlib.sha256(data).hexdigest()}

    def json(self, name: str, obj) -> None:
        with open(os.path.join(self.dir, name), "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")


def calib_input(geo: Geometry, clip: np.ndarray, frames: int) -> np.ndarray:
    """Batch of 2: N(0, 1) noise and the spectrogram of a slice of the clip (first three
    bins zeroed as in demix), [2, 4, dim_f, frames]."""
    rng = np.random.default_rng(geo.seed + 1)
    noise = rng.standard_normal((1, 4, geo.dim_f, frames))
    length = geo.hop * (frames - 1)
    reps = -(-length // clip.shape[-1]) + 1
    long = np.tile(clip, (1, reps))
    off = (long.shape[-1] - length) // 2
    spec = stft(long[None, :, off: off + length], geo)
    spec[:, :, :3, :] = 0.0
    return np.concatenate([noise, spec], 0)


def fmt(v: float) -> str:
    return f"{v:.3e}"


def generate_fixtures(out_dir: str, use_torch: bool) -> None:
    w = Writer(out_dir)
    clip = synth_clip()
    ref: dict = {
        "format": "Each .f32 file is raw little-endian IEEE-754 float32, C (row-major) order, no header; "
                  "shapes are listed here. Waveforms are [channels=2 (L, R), samples]; spectrogram "
                  "tensors are [batch, 4 (L.re, L.im, R.re, R.im), dim_f, dim_t].",
        "generator": "models/reference/generate_reference.py",
        "versions": {"numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "sample_rate": SAMPLE_RATE,
        "clip": w.raw("clip.f32", clip),
        "models": {},
    }
    ref["clip"]["description"] = synth_clip.__doc__.strip().replace("\n    ", " ")

    for geo in (TINY, SMALL5):
        geo.validate()
        print(f"== {geo.name}: {geo.sidecar()}")
        params = make_params(geo, calib_input(geo, clip, geo.dim_t))
        model = build_onnx(params, geo)
        ops = op_types(model)
        counts = {}
        for nd in model.graph.node:
            counts[nd.op_type] = counts.get(nd.op_type, 0) + 1
        print(f"  op types: {ops}  counts {dict(sorted(counts.items()))}")
        assert ops == EXPECTED_OPS, ops
        mbytes = model.SerializeToString()
        entry: dict = {
            "onnx": w.bytes(f"{geo.name}.onnx", mbytes),
            "sidecar": f"{geo.name}.json",
            "op_types": ops,
            "op_counts": dict(sorted(counts.items())),
            "forward": [],
        }
        w.json(f"{geo.name}.json", geo.sidecar())
        print(f"  {geo.name}.onnx: {len(mbytes)} bytes, {sum(np.prod(i.dims) for i in model.graph.initializer)} params")
        run = ort_runner(ort_session(mbytes))

        # 1. forward passes
        rng = np.random.default_rng(geo.seed + 2)
        batches = [1, 2] if geo is TINY else [1]
        for bsz in batches:
            x = rng.standard_normal((bsz, 4, geo.dim_f, geo.dim_t)).astype(np.float32)
            y = run(x)
            y64 = numpy_forward(params, geo, x)
            d = float(np.max(np.abs(y - y64)))
            print(f"  forward b={bsz}: onnxruntime vs numpy f64 (unfolded BN): max|diff| = {d:.3e} "
                  f"(|out| max {np.max(np.abs(y)):.3f}, std {y.std():.3f})")
            assert d < 1e-5 * np.max(np.abs(y)), d  # float32 rounding through ~100 ops
            tag = "forward" if bsz == 1 else f"forward_b{bsz}"
            fe = {
                "input": w.raw(f"{geo.name}.{tag}.input.f32", x),
                "output": w.raw(f"{geo.name}.{tag}.output.f32", y),
                "max_abs_diff_onnxruntime_vs_numpy_f64": fmt(d),
            }
            if use_torch and bsz == 1:  # printed only: fixtures must not depend on torch
                tr: dict = {}
                torch_check(params, geo, x, y, tr)
                assert tr.get("max_abs_diff_torch_eval_vs_onnxruntime", 0.0) < 1e-5 * np.max(np.abs(y)), tr
                assert tr.get("torch_export_op_types", ops) == ops, tr
            entry["forward"].append(fe)

        # 2. STFT / iSTFT conventions (tiny only: small files)
        if geo is TINY:
            chunk = geo.chunk_size
            wave = clip[:, 1000: 1000 + chunk]
            spec = stft(wave[None], geo)
            back = istft(spec, geo)
            fwd_out = np.fromfile(os.path.join(out_dir, f"{geo.name}.forward.output.f32"), "<f4")
            fwd_out = fwd_out.reshape(1, 4, geo.dim_f, geo.dim_t)
            entry["stft"] = {
                "description": "wave = clip[:, 1000:1000+chunk_size]; spec = STFT(wave) (no bin zeroing); "
                               "istft = iSTFT(spec) (bins >= dim_f dropped, so not exactly wave); "
                               "istft_of_forward = iSTFT(forward.output) (non-zero DC imaginary parts, ignored)",
                "wave": w.raw(f"{geo.name}.stft.wave.f32", wave),
                "spec": w.raw(f"{geo.name}.stft.spec.f32", spec),
                "istft": w.raw(f"{geo.name}.stft.istft.f32", istft(spec.astype(np.float32), geo)[0]),
                "istft_of_forward": w.raw(f"{geo.name}.stft.istft_of_forward.f32", istft(fwd_out, geo)[0]),
            }
            print(f"  stft round trip (dim_f of {geo.n_fft // 2 + 1} bins): max|wave - istft| = "
                  f"{np.max(np.abs(back[0] - wave)):.3e}")
            if use_torch:
                torch_dsp_check(geo, wave, fwd_out)

        # 3. demix
        entry["demix"] = []
        for denoise in (False, True):
            t0 = time.time()
            prim, sec = demix(clip, geo, run, overlap=0.25, denoise=denoise)
            tag = "demix_denoise" if denoise else "demix"
            entry["demix"].append({
                "overlap": 0.25,
                "denoise": denoise,
                "compensate": geo.compensate,
                "plan": demix_plan(clip.shape[-1], geo, 0.25),
                "primary": w.raw(f"{geo.name}.{tag}.primary.f32", prim),
                "secondary": w.raw(f"{geo.name}.{tag}.secondary.f32", sec),
            })
            print(f"  demix denoise={denoise}: {time.time() - t0:.1f}s, primary peak {np.max(np.abs(prim)):.3f} "
                  f"rms {np.sqrt(np.mean(prim ** 2)):.4f}")
        ref["models"][geo.name] = entry

    ref["tolerances"] = {
        "forward_abs": 1e-4,
        "stft_abs": 1e-4,
        "demix_abs": 1e-4,
        "note": "suggested; references are float32 onnxruntime output / float64 DSP rounded to float32",
    }
    w.json("reference.json", ref)
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"wrote {len(os.listdir(out_dir))} files, {total} bytes, to {out_dir}")


def generate_real(path: str, smoke: bool) -> None:
    geo = REAL
    geo.validate()
    frames = 64  # calibrate BN statistics on 64 frames (weights do not depend on dim_t)
    print(f"building {geo.sidecar()} (calibrating on {frames} frames) ...")
    t0 = time.time()
    params = make_params(geo, calib_input(geo, synth_clip(), frames))
    model = build_onnx(params, geo)
    data = model.SerializeToString()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    side = os.path.splitext(path)[0] + ".json"
    with open(side, "w") as fh:
        json.dump(geo.sidecar(), fh, indent=2, sort_keys=True)
        fh.write("\n")
    n_par = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    print(f"wrote {path} ({len(data)} bytes, {n_par} params, ops {op_types(model)}) and {side} "
          f"in {time.time() - t0:.1f}s")
    if smoke:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 4, geo.dim_f, geo.dim_t)).astype(np.float32)
        t0 = time.time()
        y = sess.run(["output"], {"input": x})[0]
        print(f"onnxruntime forward {list(x.shape)}: {time.time() - t0:.2f}s, out std {y.std():.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture directory (default tests/fixtures/mdx)")
    ap.add_argument("--real-geometry", metavar="OUT.onnx",
                    help="only write a Kim_Vocal_2-geometry model with random weights to OUT.onnx (+ OUT.json)")
    ap.add_argument("--smoke", action="store_true", help="with --real-geometry: time one onnxruntime forward")
    ap.add_argument("--no-torch", action="store_true", help="skip the optional torch cross-check")
    args = ap.parse_args()
    if args.real_geometry:
        generate_real(args.real_geometry, args.smoke)
    else:
        generate_fixtures(args.out, not args.no_torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
