#!/usr/bin/env python3
"""PyTorch side of the BS-Roformer / Mel-Band Roformer benchmarks.

Uses the networks and MSST's generic-mode demix from roformer_reference.py.

    bench_roformer_torch.py make-checkpoint CONFIG.yaml OUT.ckpt [--seed N]
    bench_roformer_torch.py time CHECKPOINT.ckpt SECONDS THREADS [--batch B] [--overlap N]
                                 [--device cpu|cuda] [--repeat R] [--attention explicit|sdpa]

make-checkpoint builds the network of an MSST config (Mel-Band Roformer when the model section
has ``num_bands``, BS-Roformer otherwise) with torch's default initialisation under
``torch.manual_seed(N)``, so the weights are deterministic and of the usual scale. The rotary
``freqs`` keep their computed values. It writes ``torch.save(state_dict)`` to OUT.ckpt and
copies the config, unchanged, to OUT.yaml.

time loads CHECKPOINT.ckpt and CHECKPOINT.yaml, does one warm-up forward of [B, 2, chunk_size],
then demixes a synthetic stereo clip of SECONDS seconds at 44.1 kHz R times in float32 under
torch.inference_mode() and prints one JSON line with the best wall time to stdout. Progress goes
to stderr. On cuda, TF32 is disabled for matmul and cuDNN. ``--attention sdpa`` replaces the
reference's explicit softmax attention by F.scaled_dot_product_attention (MSST's flash_attn path).
"""

import argparse
import copy
import json
import os
import resource
import shutil
import sys
import time

import numpy as np
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import roformer_reference as ref  # noqa: E402  (model classes, build(), demix())

SAMPLE_RATE = ref.SAMPLE_RATE


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_config(path):
    """MSST config; tuples carry !!python/tuple, so it needs FullLoader like MSST itself."""
    with open(path) as fh:
        return yaml.load(fh, Loader=yaml.FullLoader)


def model_type_of(config):
    return "mel_band_roformer" if "num_bands" in config["model"] else "bs_roformer"


def sidecar_yaml(ckpt_path):
    return os.path.splitext(ckpt_path)[0] + ".yaml"


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# --------------------------------------------------------------------------
# make-checkpoint
# --------------------------------------------------------------------------


def make_checkpoint(args):
    config = load_config(args.config)
    mtype = model_type_of(config)
    torch.manual_seed(args.seed)
    t0 = time.time()
    model = ref.build(mtype, dict(config["model"])).eval()
    log("built %s in %.1f s" % (type(model).__name__, time.time() - t0))
    sd = model.state_dict()
    assert all(v.dtype == torch.float32 for v in sd.values())
    for name, v in sd.items():
        assert torch.isfinite(v).all(), name
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    torch.save(sd, args.out)
    log("wrote %s in %.1f s" % (args.out, time.time() - t0))
    yaml_out = sidecar_yaml(args.out)
    if os.path.abspath(yaml_out) != os.path.abspath(args.config):
        shutil.copyfile(args.config, yaml_out)
    n_elements = sum(v.numel() for v in sd.values())  # every key, shared rotary tables included
    n_params = sum(p.numel() for p in model.parameters())  # shared tables counted once
    info = {
        "checkpoint": args.out,
        "config": yaml_out,
        "class": type(model).__name__,
        "seed": args.seed,
        "bytes": os.path.getsize(args.out),
        "tensors": len(sd),
        "state_dict_elements": n_elements,
        "parameters": n_params,
    }
    print(json.dumps(info))
    return 0


# --------------------------------------------------------------------------
# time
# --------------------------------------------------------------------------


def synthetic_clip(seconds, seed=1297):
    """[2, n] float32: a few panned sines plus small independent noise, peak about 0.5."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    mix = np.zeros((2, n))
    for f0, amp, pan in ((110.0, 0.25, 0.5), (220.0, 0.2, 0.3), (440.0, 0.12, 0.7),
                         (1318.5, 0.06, 0.4), (3520.0, 0.03, 0.6)):
        tone = amp * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
        mix[0] += np.cos(pan * np.pi / 2) * tone
        mix[1] += np.sin(pan * np.pi / 2) * tone
    mix += 0.02 * rng.standard_normal((2, n))
    mix *= 0.5 / max(np.abs(mix).max(), 1e-9)
    return mix.astype(np.float32)


def read_wav(path):
    """[2, n] float32 from a stereo WAV (float32 or 16-bit PCM), as the benchmark scripts write."""
    import struct
    data = open(path, "rb").read()
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            tag, ch, _, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE:
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, ch, bits)
        elif cid == b"data":
            pcm = body
        pos += 8 + size + (size & 1)
    tag, ch, bits = fmt
    if tag == 3 and bits == 32:
        x = np.frombuffer(pcm[: len(pcm) // 4 * 4], "<f4")
    elif tag == 1 and bits == 16:
        x = np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2") / 32768.0
    else:
        raise SystemExit("unsupported WAV %s" % (fmt,))
    x = x.reshape(-1, ch).T
    if ch == 1:
        x = np.repeat(x, 2, axis=0)
    return np.ascontiguousarray(x[:2], dtype=np.float32)


def load_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj


class OnDevice(torch.nn.Module):
    """Runs the reference model on ``device``. The reference creates its STFT window, rotary
    positions and index tensors with factory functions and no device argument, so the forward runs
    inside ``with torch.device(device)``. Input and output stay on the CPU for demix()."""

    def __init__(self, model, device):
        super().__init__()
        self.model = model
        self.device = torch.device(device)

    def forward(self, audio):
        if self.device.type == "cpu":
            return self.model(audio)
        with torch.device(self.device):
            out = self.model(audio.to(self.device))
        return out.cpu()


def sdpa_attention(q, k, v, scale):
    """softmax(q k^T * scale) v through F.scaled_dot_product_attention (MSST's flash_attn: true path)."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_demix(args):
    ckpt = args.checkpoint
    config = load_config(sidecar_yaml(ckpt))
    mtype = model_type_of(config)
    inf = config.setdefault("inference", {})
    batch = args.batch if args.batch is not None else inf.get("batch_size")
    overlap = args.overlap if args.overlap is not None else inf.get("num_overlap")
    if batch is None or overlap is None:
        raise SystemExit("config has no inference.batch_size / num_overlap; pass --batch / --overlap")
    cfg = copy.deepcopy(config)
    cfg["inference"]["batch_size"] = int(batch)
    cfg["inference"]["num_overlap"] = int(overlap)
    chunk = cfg["inference"].get("chunk_size", cfg["audio"]["chunk_size"])

    torch.set_num_threads(args.threads)
    if args.attention == "sdpa":
        ref.softmax_attention = sdpa_attention  # looked up at call time by Attention and LinearAttention
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    t0 = time.time()
    model = ref.build(mtype, dict(cfg["model"])).eval()
    model.load_state_dict(load_state_dict(ckpt), strict=True)
    model.to(args.device)
    runner = OnDevice(model, args.device).eval()
    log("loaded %s (%s) in %.1f s; chunk %d, batch %d, num_overlap %d, threads %d, device %s"
        % (ckpt, type(model).__name__, time.time() - t0, chunk, batch, overlap, args.threads, args.device))

    mix = read_wav(args.input) if args.input else synthetic_clip(args.seconds)
    log("load average before timing: %.2f (other processes on the CPU distort the result)" % os.getloadavg()[0])
    plan = {}
    with torch.inference_mode():
        gen = torch.Generator().manual_seed(7)
        warm = 0.1 * torch.randn(int(batch), 2, chunk, generator=gen)
        sync(args.device)
        t0 = time.time()
        out = runner(warm)
        sync(args.device)
        if not torch.isfinite(out).all():
            raise SystemExit("warm-up output is not finite")
        log("warm-up forward %s: %.2f s" % (list(warm.shape), time.time() - t0))
        del out, warm

        best = None
        for r in range(args.repeat):
            plan = {}
            sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            stems = ref.demix(cfg, runner, mix, plan)
            sync(args.device)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            for name, wave in stems.items():
                if wave.shape != mix.shape or not np.isfinite(wave).all():
                    raise SystemExit("demix output %r is not finite or has shape %s" % (name, wave.shape))
            if args.save:
                np.save(args.save, next(iter(stems.values())).astype(np.float32))
            del stems
            best = dt if best is None else min(best, dt)
            log("demix %d/%d: %.2f s wall, %.2f s CPU (%d chunks in %d batches), peak RSS %.0f MB, load %.2f"
                % (r + 1, args.repeat, dt, cpu, len(plan["chunks"]), len(plan["batches"]), peak_rss_mb(),
                   os.getloadavg()[0]))

    result = {
        "seconds": round(best, 4),
        "seconds_per_minute": round(best / args.seconds * 60.0, 4),
        "threads": args.threads,
        "batch": int(batch),
        "num_overlap": int(overlap),
        "device": args.device,
        "torch": torch.__version__,
        "chunks": len(plan["chunks"]),
        "attention": args.attention,
    }
    if args.device == "cuda":
        result["tf32"] = False
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result), flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-checkpoint", help="random-weight checkpoint of an MSST config")
    mk.add_argument("config")
    mk.add_argument("out")
    mk.add_argument("--seed", type=int, default=0)
    tm = sub.add_parser("time", help="time the reference demix of a synthetic clip")
    tm.add_argument("checkpoint")
    tm.add_argument("seconds", type=float)
    tm.add_argument("threads", type=int)
    tm.add_argument("--batch", type=int)
    tm.add_argument("--overlap", type=int)
    tm.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    tm.add_argument("--repeat", type=int, default=1)
    tm.add_argument("--input", help="a stereo WAV to demix instead of the synthetic clip")
    tm.add_argument("--save", help="write the first stem as a [2, n] float32 .npy")
    tm.add_argument("--attention", choices=("explicit", "sdpa"), default="explicit",
                    help="explicit: the reference's matmul-softmax-matmul (default); sdpa: "
                         "F.scaled_dot_product_attention, as MSST with flash_attn: true")
    args = ap.parse_args()
    if args.cmd == "make-checkpoint":
        return make_checkpoint(args)
    if args.seconds <= 0 or args.threads < 1 or args.repeat < 1:
        ap.error("SECONDS must be > 0, THREADS and --repeat >= 1")
    return time_demix(args)


if __name__ == "__main__":
    sys.exit(main())
