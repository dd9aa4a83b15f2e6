#!/usr/bin/env python3
"""Reference side of uvr's BS-Roformer / Mel-Band Roformer engine.

This is a self-contained PyTorch description of the two band-split Roformer
networks as they are used by the Music-Source-Separation-Training ("MSST")
project and by the public checkpoints trained with it (viperx BS-Roformer 1297,
Mel-Band Roformer 3005, ...).  Module names and parameter shapes are chosen so
that ``state_dict()`` keys are identical to MSST's ``BSRoformer`` and
``MelBandRoformer`` classes; only the inference path is described (no dropout,
no losses, no gradient checkpointing).

It builds three tiny networks with seeded random weights, writes their MSST
style YAML configs, their weights in the formats uvr has to read, and reference
tensors (intermediate activations of one forward pass and a full chunked
demix of a synthetic clip) to ``tests/fixtures/roformer/``.

    python3 models/reference/roformer_reference.py [--out DIR]

Everything is seeded; two runs write byte-identical files.
"""

import argparse
import hashlib
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "roformer")

SAMPLE_RATE = 44100
CLIP_FRAMES = 66150
CHUNK = 4032

# --------------------------------------------------------------------------
# Slaney mel filterbank (librosa.filters.mel with its defaults), in numpy.
# The arithmetic follows the same sequence of float64 operations as librosa so
# that the positive/zero pattern of the bank (the only thing the network uses)
# is reproduced exactly, including tiny positive values at band edges.
# --------------------------------------------------------------------------

_MEL_LIN_STEP = 200.0 / 3  # Hz per mel below 1 kHz
_MEL_LOG_HZ = 1000.0  # start of the logarithmic region
_MEL_LOG_MEL = (_MEL_LOG_HZ - 0.0) / _MEL_LIN_STEP  # = 15 mel
_MEL_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel_slaney(hz):
    hz = np.asanyarray(hz, dtype=np.float64)
    mel = (hz - 0.0) / _MEL_LIN_STEP
    if hz.ndim:
        above = hz >= _MEL_LOG_HZ
        mel[above] = _MEL_LOG_MEL + np.log(hz[above] / _MEL_LOG_HZ) / _MEL_LOG_STEP
    elif hz >= _MEL_LOG_HZ:
        mel = _MEL_LOG_MEL + np.log(hz / _MEL_LOG_HZ) / _MEL_LOG_STEP
    return mel


def mel_to_hz_slaney(mel):
    mel = np.asanyarray(mel, dtype=np.float64)
    hz = 0.0 + _MEL_LIN_STEP * mel
    if mel.ndim:
        above = mel >= _MEL_LOG_MEL
        hz[above] = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mel[above] - _MEL_LOG_MEL))
    elif mel >= _MEL_LOG_MEL:
        hz = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mel - _MEL_LOG_MEL))
    return hz


def slaney_mel_filterbank(sr, n_fft, n_mels):
    """[n_mels, n_fft//2 + 1] float32, fmin 0, fmax sr/2, slaney scale and norm."""
    n_bins = 1 + n_fft // 2
    bin_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    edges_mel = np.linspace(hz_to_mel_slaney(0.0), hz_to_mel_slaney(float(sr) / 2), n_mels + 2)
    edges_hz = mel_to_hz_slaney(edges_mel)
    widths = np.diff(edges_hz)
    dist = np.subtract.outer(edges_hz, bin_hz)  # [n_mels+2, n_bins]
    bank = np.zeros((n_mels, n_bins), dtype=np.float32)
    for m in range(n_mels):
        rising = -dist[m] / widths[m]
        falling = dist[m + 2] / widths[m + 1]
        bank[m] = np.maximum(0, np.minimum(rising, falling))
    bank *= (2.0 / (edges_hz[2:n_mels + 2] - edges_hz[:n_mels]))[:, None]
    return bank


def mel_band_layout(sample_rate, n_fft, num_bands, stereo):
    """Band membership of MSST's Mel-Band Roformer.

    Returns (freq_indices, num_freqs_per_band, num_bands_per_freq) as int64
    numpy arrays.  freq_indices lists, band after band, every STFT bin the band
    covers; for stereo each bin f becomes the pair (2f, 2f+1), i.e. an index
    into the ((f s)) interleaved frequency axis.
    """
    bank = slaney_mel_filterbank(sample_rate, n_fft, num_bands)
    try:  # optional: compare with librosa itself
        import librosa

        ref = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=num_bands)
        assert ref.dtype == bank.dtype and ref.shape == bank.shape
        assert np.array_equal(ref, bank), "mel filterbank differs from librosa"
    except ImportError:
        pass
    bank = bank.copy()
    bank[0, 0] = 1.0  # MSST forces the DC bin into the first band
    bank[-1, -1] = 1.0  # and the Nyquist bin into the last one
    member = bank > 0  # [bands, freqs]
    assert member.any(axis=0).all(), "every frequency must belong to some band"
    n_freqs = member.shape[1]
    freq_indices = np.concatenate([np.nonzero(member[b])[0] for b in range(num_bands)]).astype(np.int64)
    if stereo:
        freq_indices = (freq_indices[:, None] * 2 + np.arange(2)[None, :]).reshape(-1)
    num_freqs_per_band = member.sum(axis=1).astype(np.int64)
    num_bands_per_freq = member.sum(axis=0).astype(np.int64)
    assert num_bands_per_freq.shape == (n_freqs,)
    return freq_indices, num_freqs_per_band, num_bands_per_freq


# --------------------------------------------------------------------------
# Building blocks.  Parameter-free layers (dropout, reshapes) occupy the same
# positions inside nn.Sequential containers as in MSST, so that the numbered
# keys (e.g. "net.4.weight", "to_out.1.weight") come out identical.
# --------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / ||x||_2 * sqrt(dim) * gamma (F.normalize clamps the norm at 1e-12)."""

    def __init__(self, dim):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with interleaved pairs (rotary_embedding_torch's default 'lang' mode).

    The inverse frequencies 1 / theta^(2i/dim) are held in a non-trainable
    nn.Parameter called ``freqs``; they are therefore part of the state_dict.
    Position p rotates the pair (x[2i], x[2i+1]) by the angle p * freqs[i].
    """

    def __init__(self, dim, theta=10000):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(inv, requires_grad=False)

    def angles(self, n, dtype):
        pos = torch.arange(n, dtype=dtype).to(self.freqs.dtype)
        ang = pos[:, None] * self.freqs[None, :]  # [n, dim/2]
        return ang.repeat_interleave(2, dim=-1)  # [n, dim]: each angle used for one pair

    def rotate(self, x):
        """x: [..., n, dim] with the sequence on axis -2."""
        ang = self.angles(x.shape[-2], x.dtype)
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(x.shape)
        return (x * ang.cos() + swapped * ang.sin()).to(x.dtype)


def audio_dtype(spec):
    """Real dtype matching a complex spectrum (the reference runs in float32; float64 is for checks)."""
    return torch.float64 if spec.dtype == torch.complex128 else torch.float32


def softmax_attention(q, k, v, scale):
    """softmax(q k^T * scale) v over the last two axes."""
    weights = (torch.matmul(q, k.transpose(-1, -2)) * scale).softmax(dim=-1)
    return torch.matmul(weights, v)


class Attention(nn.Module):
    """Multi-head self attention along axis -2 with rotary positions and per-head sigmoid gates."""

    def __init__(self, dim, heads, dim_head, rotary_embed):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        inner = heads * dim_head
        self.rotary_embed = rotary_embed  # shared between all layers of one axis
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.Identity())

    def forward(self, x):
        bsz, n, _ = x.shape
        x = self.norm(x)
        # feature layout of to_qkv's output: (qkv, head, d)
        qkv = self.to_qkv(x).reshape(bsz, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [b, h, n, d]
        q = self.rotary_embed.rotate(q)
        k = self.rotary_embed.rotate(k)
        out = softmax_attention(q, k, v, self.scale)
        gate = self.to_gates(x).sigmoid().permute(0, 2, 1).unsqueeze(-1)  # [b, h, n, 1]
        out = (out * gate).permute(0, 2, 1, 3).reshape(bsz, n, self.heads * self.dim_head)
        return self.to_out(out)


class SplitHeadsFeatureMajor(nn.Module):
    """[b, n, (3 h d)] -> [3, b, h, d, n] (no parameters)."""

    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, t):
        bsz, n, width = t.shape
        d = width // (3 * self.heads)
        return t.reshape(bsz, n, 3, self.heads, d).permute(2, 0, 3, 4, 1)


class MergeHeadsFeatureMajor(nn.Module):
    """[b, h, d, n] -> [b, n, (h d)] (no parameters)."""

    def forward(self, t):
        bsz, h, d, n = t.shape
        return t.permute(0, 3, 1, 2).reshape(bsz, n, h * d)


class LinearAttention(nn.Module):
    """Cross-covariance ("linear") attention: the attention matrix is d x d per head.

    q and k are l2-normalised along the sequence axis, q is multiplied by
    exp(temperature[h]), and softmax(q k^T * 8) mixes the feature channels.
    """

    def __init__(self, dim, heads, dim_head, scale=8):
        super().__init__()
        inner = heads * dim_head
        self.attn_scale = scale
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, inner * 3, bias=False), SplitHeadsFeatureMajor(heads))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(MergeHeadsFeatureMajor(), nn.Linear(inner, dim, bias=False))

    def forward(self, x):
        x = self.norm(x)
        qkv = self.to_qkv(x)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [b, h, d, n]
        q = F.normalize(q, dim=-1, p=2)
        k = F.normalize(k, dim=-1, p=2)
        q = q * self.temperature.exp()
        out = softmax_attention(q, k, v, self.attn_scale)  # [b, h, d, n]
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Identity(), nn.Linear(inner, dim), nn.Identity()
        )

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm residual stack over axis -2; output RMSNorm only if norm_output."""

    def __init__(self, dim, depth, heads, dim_head, norm_output, rotary_embed=None, linear_attn=False):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            if linear_attn:
                attn = LinearAttention(dim, heads, dim_head)
            else:
                attn = Attention(dim, heads, dim_head, rotary_embed)
            self.layers.append(nn.ModuleList([attn, FeedForward(dim)]))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x):
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


class BandSplit(nn.Module):
    """Splits the last axis into consecutive bands; each band: RMSNorm then Linear(width -> dim)."""

    def __init__(self, dim, dim_inputs):
        super().__init__()
        self.dim_inputs = tuple(dim_inputs)
        self.to_features = nn.ModuleList([nn.Sequential(RMSNorm(w), nn.Linear(w, dim)) for w in dim_inputs])

    def forward(self, x):
        parts = torch.split(x, self.dim_inputs, dim=-1)
        return torch.stack([proj(p) for p, proj in zip(parts, self.to_features)], dim=-2)


def band_mlp(dim_in, dim_out, dim_hidden, n_linear):
    """Linear layers separated by Tanh (none after the last one)."""
    widths = [dim_in] + [dim_hidden] * (n_linear - 1) + [dim_out]
    seq = []
    for i in range(n_linear):
        seq.append(nn.Linear(widths[i], widths[i + 1]))
        if i + 1 < n_linear:
            seq.append(nn.Tanh())
    return nn.Sequential(*seq)


class MaskEstimator(nn.Module):
    """One MLP + GLU per band, mapping [.., dim] to that band's 2*width mask values."""

    def __init__(self, dim, dim_inputs, n_linear, mlp_expansion_factor):
        super().__init__()
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList(
            [nn.Sequential(band_mlp(dim, w * 2, hidden, n_linear), nn.GLU(dim=-1)) for w in dim_inputs]
        )

    def forward(self, x):
        bands = x.unbind(dim=-2)
        return torch.cat([mlp(b) for b, mlp in zip(bands, self.to_freqs)], dim=-1)


# --------------------------------------------------------------------------
# The two networks
# --------------------------------------------------------------------------


class _RoformerBase(nn.Module):
    is_mel = False

    def _build(self, cfg, transformer_norm_output):
        if cfg.get("use_pope", False):
            raise NotImplementedError("use_pope is not described by this reference")
        dim = cfg["dim"]
        heads = cfg.get("heads", 8)
        dim_head = cfg.get("dim_head", 64)
        self.stereo = bool(cfg.get("stereo", False))
        self.audio_channels = 2 if self.stereo else 1
        self.num_stems = cfg.get("num_stems", 1)
        self.skip_connection = bool(cfg.get("skip_connection", False))
        self.zero_dc = bool(cfg.get("zero_dc", True))
        self.n_fft = cfg.get("stft_n_fft", 2048)
        self.hop = cfg.get("stft_hop_length", 512)
        self.win = cfg.get("stft_win_length", 2048)
        self.stft_normalized = bool(cfg.get("stft_normalized", False))
        linear_depth = cfg.get("linear_transformer_depth", 0)

        # rotary tables are shared by every time (resp. frequency) attention layer
        time_rotary = RotaryEmbedding(dim_head)
        freq_rotary = RotaryEmbedding(dim_head)
        common = dict(dim=dim, heads=heads, dim_head=dim_head, norm_output=transformer_norm_output)
        self.layers = nn.ModuleList()
        for _ in range(cfg["depth"]):
            block = []
            if linear_depth > 0:
                block.append(Transformer(depth=linear_depth, linear_attn=True, **common))
            block.append(Transformer(depth=cfg.get("time_transformer_depth", 2), rotary_embed=time_rotary, **common))
            block.append(Transformer(depth=cfg.get("freq_transformer_depth", 2), rotary_embed=freq_rotary, **common))
            self.layers.append(nn.ModuleList(block))
        return dim

    # --- spectral helpers ---------------------------------------------------

    def _window(self, dtype):
        return torch.hann_window(self.win, dtype=dtype)

    def _stft(self, audio):
        """audio [b, s, T] -> real spectrum [b, (f s), t, 2]."""
        b, s, T = audio.shape
        spec = torch.stft(
            audio.reshape(b * s, T), n_fft=self.n_fft, hop_length=self.hop, win_length=self.win,
            normalized=self.stft_normalized, window=self._window(audio.dtype), return_complex=True,
        )
        spec = torch.view_as_real(spec)  # [(b s), f, t, 2]
        nf, nt = spec.shape[1], spec.shape[2]
        return spec.reshape(b, s, nf, nt, 2).permute(0, 2, 1, 3, 4).reshape(b, nf * s, nt, 2)

    def _istft(self, spec, length):
        """spec complex [b, n, (f s), t] -> audio [b, n, s, T]."""
        b, n, fs, t = spec.shape
        s = self.audio_channels
        spec = spec.reshape(b, n, fs // s, s, t).permute(0, 1, 3, 2, 4).reshape(b * n * s, fs // s, t)
        if self.zero_dc:
            spec = spec.index_fill(1, torch.tensor(0), 0.0)
        audio = torch.istft(
            spec, n_fft=self.n_fft, hop_length=self.hop, win_length=self.win, normalized=self.stft_normalized,
            window=self._window(audio_dtype(spec)), return_complex=False, length=length,
        )
        return audio.reshape(b, n, s, audio.shape[-1])

    # --- forward --------------------------------------------------------------

    def forward(self, audio, capture=None):
        """audio [b, s, T] (or [b, T] for mono) -> separated stems [b, num_stems, s, T'].

        If ``capture`` is a dict, intermediate tensors are stored in it.
        """
        if audio.ndim == 2:
            audio = audio[:, None, :]
        b, s, T = audio.shape
        assert s == self.audio_channels, "channel count does not match the 'stereo' setting"
        spec = self._stft(audio)  # [b, (f s), t, 2]
        nt = spec.shape[2]

        sel = spec[:, self.freq_indices] if self.is_mel else spec  # [b, F', t, 2]
        x = sel.permute(0, 2, 1, 3).reshape(b, nt, -1)  # [b, t, (F' c)]
        if capture is not None:
            capture["bandsplit_input"] = x
        x = self.band_split(x)  # [b, t, k, d]
        if capture is not None:
            capture["bandsplit"] = x
        _, _, k, d = x.shape

        kept = []
        for i, block in enumerate(self.layers):
            if len(block) == 3:
                linear_tf, time_tf, freq_tf = block
                x = linear_tf(x.reshape(b, nt * k, d)).reshape(b, nt, k, d)
            else:
                time_tf, freq_tf = block
            if self.skip_connection:
                for prev in kept:
                    x = x + prev
            x = time_tf(x.permute(0, 2, 1, 3).reshape(b * k, nt, d))  # attend along time
            x = x.reshape(b, k, nt, d).permute(0, 2, 1, 3)
            x = freq_tf(x.reshape(b * nt, k, d)).reshape(b, nt, k, d)  # attend along bands
            kept.append(x)
            if capture is not None:
                capture["layer%d" % i] = x
        if not self.is_mel:
            x = self.final_norm(x)

        mask = torch.stack([est(x) for est in self.mask_estimators], dim=1)  # [b, n, t, (F' c)]
        n = mask.shape[1]
        mask = mask.reshape(b, n, nt, -1, 2).permute(0, 1, 3, 2, 4)  # [b, n, F', t, 2]
        if capture is not None:
            capture["mask"] = mask
        mask_c = torch.view_as_complex(mask.contiguous())
        spec_c = torch.view_as_complex(spec.contiguous())[:, None]  # [b, 1, (f s), t]

        if self.is_mel:
            # overlapping bands: sum every band's estimate per bin, divide by the number of bands
            idx = self.freq_indices.view(1, 1, -1, 1).expand(b, n, -1, nt)
            summed = torch.zeros(b, n, spec_c.shape[2], nt, dtype=spec_c.dtype).scatter_add_(2, idx, mask_c)
            denom = self.num_bands_per_freq.repeat_interleave(s).view(-1, 1).clamp(min=1e-8)
            mask_c = summed / denom
            if capture is not None:
                capture["mask_averaged"] = torch.view_as_real(mask_c)
            length = None
        else:
            length = T
        return self._istft(spec_c * mask_c, length)


class BSRoformer(_RoformerBase):
    """MSST BSRoformer: fixed contiguous bands, final RMSNorm, Transformers without output norm."""

    is_mel = False

    def __init__(self, **cfg):
        super().__init__()
        dim = self._build(cfg, transformer_norm_output=False)
        self.final_norm = RMSNorm(dim)
        freqs_per_bands = tuple(cfg["freqs_per_bands"])
        n_freqs = self.n_fft // 2 + 1
        assert len(freqs_per_bands) > 1 and sum(freqs_per_bands) == n_freqs
        self.freqs_per_bands = freqs_per_bands
        dim_inputs = tuple(2 * f * self.audio_channels for f in freqs_per_bands)
        self.band_split = BandSplit(dim, dim_inputs)
        n_linear = cfg.get("mask_estimator_depth", 2)  # MSST BS: depth Linear layers
        mult = cfg.get("mlp_expansion_factor", 4)
        self.mask_estimators = nn.ModuleList(
            [MaskEstimator(dim, dim_inputs, n_linear, mult) for _ in range(self.num_stems)]
        )


class MelBandRoformer(_RoformerBase):
    """MSST MelBandRoformer: overlapping mel bands, Transformers with output RMSNorm, no final norm."""

    is_mel = True

    def __init__(self, **cfg):
        super().__init__()
        dim = self._build(cfg, transformer_norm_output=True)
        fi, nfpb, nbpf = mel_band_layout(
            cfg.get("sample_rate", 44100), self.n_fft, cfg.get("num_bands", 60), self.stereo
        )
        self.register_buffer("freq_indices", torch.from_numpy(fi), persistent=False)
        self.register_buffer("num_bands_per_freq", torch.from_numpy(nbpf), persistent=False)
        self.num_freqs_per_band = nfpb.tolist()
        dim_inputs = tuple(2 * f * self.audio_channels for f in self.num_freqs_per_band)
        self.band_split = BandSplit(dim, dim_inputs)
        n_linear = cfg.get("mask_estimator_depth", 1) + 1  # MSST Mel: depth + 1 Linear layers
        mult = cfg.get("mlp_expansion_factor", 4)
        self.mask_estimators = nn.ModuleList(
            [MaskEstimator(dim, dim_inputs, n_linear, mult) for _ in range(self.num_stems)]
        )


CLASSES = {"bs_roformer": BSRoformer, "mel_band_roformer": MelBandRoformer}

# --------------------------------------------------------------------------
# Chunked inference, as MSST's demix() in its generic (non-demucs) mode
# --------------------------------------------------------------------------


def target_instruments(config):
    tr = config["training"]
    if tr.get("target_instrument"):
        return [tr["target_instrument"]]
    return list(tr["instruments"])


def linear_fade_window(size, fade):
    w = torch.ones(size)
    w[-fade:] = torch.linspace(1, 0, fade)
    w[:fade] = torch.linspace(0, 1, fade)
    return w


def demix(config, model, mix, plan=None):
    """mix: float32 [channels, T] -> {instrument: float32 numpy [channels, T]}.

    chunk = inference.chunk_size if present else audio.chunk_size; hop between
    chunks step = chunk // num_overlap; every chunk's output is weighted with a
    linear fade window (fade = chunk // 10) and the weighted sum is divided by
    the sum of weights.  The fade window is chosen once per *batch*: if the
    batch's last chunk is the first chunk of the signal, the fade-in is
    removed; otherwise, if the batch contains the end of the signal, the
    fade-out is removed (for every chunk of that batch).
    """
    inf = config["inference"]
    chunk = inf["chunk_size"] if "chunk_size" in inf else config["audio"]["chunk_size"]
    num_overlap = inf["num_overlap"]
    batch_size = inf["batch_size"]
    names = target_instruments(config)
    fade = chunk // 10
    step = chunk // num_overlap
    border = chunk - step
    mix = torch.tensor(mix, dtype=torch.float32)
    length_init = mix.shape[-1]
    window_base = linear_fade_window(chunk, fade)
    padded = length_init > 2 * border and border > 0
    if padded:
        mix = F.pad(mix, (border, border), mode="reflect")
    total = mix.shape[1]
    if plan is not None:
        plan.update(chunk_size=chunk, step=step, fade_size=fade, border=border, reflect_padded=padded,
                    padded_length=total, batch_size=batch_size, chunks=[], batches=[])

    result = torch.zeros((len(names),) + tuple(mix.shape), dtype=torch.float32)
    counter = torch.zeros_like(result)
    pos = 0
    parts, where = [], []
    with torch.inference_mode():
        while pos < total:
            part = mix[:, pos:pos + chunk]
            n = part.shape[-1]
            mode = "reflect" if n > chunk // 2 else "constant"
            part = F.pad(part, (0, chunk - n), mode=mode, value=0)
            parts.append(part)
            where.append((pos, n))
            if plan is not None:
                plan["chunks"].append([pos, n, mode if n < chunk else "none"])
            pos += step
            if len(parts) >= batch_size or pos >= total:
                out = model(torch.stack(parts, dim=0))  # [B, n, s, chunk]
                window = window_base.clone()
                first = pos - step == 0
                last = (not first) and pos >= total
                if first:
                    window[:fade] = 1
                elif last:
                    window[-fade:] = 1
                if plan is not None:
                    plan["batches"].append({"starts": [w[0] for w in where], "fade_in_removed": first,
                                            "fade_out_removed": last})
                for j, (start, n) in enumerate(where):
                    result[..., start:start + n] += out[j, ..., :n] * window[..., :n]
                    counter[..., start:start + n] += window[..., :n]
                parts.clear()
                where.clear()
        est = (result / counter).numpy()
        np.nan_to_num(est, copy=False, nan=0.0)
        if padded:
            est = est[..., border:-border]
    return {name: np.ascontiguousarray(est[i]) for i, name in enumerate(names)}


# --------------------------------------------------------------------------
# Fixture configurations
# --------------------------------------------------------------------------

BS_BANDS = (2, 2, 4, 4, 8, 8, 16, 16, 32, 37)

CONFIGS = OrderedDict()
CONFIGS["bs"] = {
    "model_type": "bs_roformer",
    "seed": 1001,
    "audio": OrderedDict(chunk_size=CHUNK, hop_length=64, n_fft=256, num_channels=2, sample_rate=SAMPLE_RATE,
                         min_mean_abs=0.0),
    "model": OrderedDict(
        dim=16, depth=2, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
        linear_transformer_depth=0, freqs_per_bands=BS_BANDS, dim_head=8, heads=2, attn_dropout=0.1,
        ff_dropout=0.1, flash_attn=True, dim_freqs_in=129, stft_n_fft=256, stft_hop_length=64,
        stft_win_length=256, stft_normalized=False, zero_dc=True, mask_estimator_depth=2,
        mlp_expansion_factor=2, skip_connection=False, multi_stft_resolution_loss_weight=1.0,
        multi_stft_resolutions_window_sizes=(4096, 2048, 1024, 512, 256), multi_stft_hop_size=147,
        multi_stft_normalized=False,
    ),
    "training": OrderedDict(batch_size=2, instruments=["vocals", "other"], target_instrument="vocals",
                            use_amp=True),
    "inference": OrderedDict(batch_size=3, num_overlap=4),
}
CONFIGS["bs_multi"] = {
    "model_type": "bs_roformer",
    "seed": 1002,
    "audio": OrderedDict(chunk_size=CHUNK, hop_length=64, n_fft=256, num_channels=2, sample_rate=SAMPLE_RATE,
                         min_mean_abs=0.0),
    "model": OrderedDict(
        dim=16, depth=1, stereo=True, num_stems=2, time_transformer_depth=2, freq_transformer_depth=2,
        linear_transformer_depth=1, freqs_per_bands=BS_BANDS, dim_head=8, heads=2, attn_dropout=0.1,
        ff_dropout=0.1, flash_attn=True, dim_freqs_in=129, stft_n_fft=256, stft_hop_length=64,
        stft_win_length=256, stft_normalized=False, zero_dc=False, mask_estimator_depth=2,
        mlp_expansion_factor=1, skip_connection=True, multi_stft_resolution_loss_weight=1.0,
        multi_stft_resolutions_window_sizes=(4096, 2048, 1024, 512, 256), multi_stft_hop_size=147,
        multi_stft_normalized=False,
    ),
    "training": OrderedDict(batch_size=2, instruments=["vocals", "drums"], use_amp=True),
    "inference": OrderedDict(batch_size=2, num_overlap=2),
}
CONFIGS["mel"] = {
    "model_type": "mel_band_roformer",
    "seed": 1003,
    "audio": OrderedDict(chunk_size=CHUNK, hop_length=64, n_fft=256, num_channels=2, sample_rate=SAMPLE_RATE,
                         min_mean_abs=0.0),
    "model": OrderedDict(
        dim=16, depth=2, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
        linear_transformer_depth=0, num_bands=8, dim_head=8, heads=2, attn_dropout=0.1, ff_dropout=0.1,
        flash_attn=True, dim_freqs_in=129, sample_rate=SAMPLE_RATE, stft_n_fft=256, stft_hop_length=64,
        stft_win_length=256, stft_normalized=False, zero_dc=True, mask_estimator_depth=2, mlp_expansion_factor=2,
        multi_stft_resolution_loss_weight=1.0, multi_stft_resolutions_window_sizes=(4096, 2048, 1024, 512, 256),
        multi_stft_hop_size=147, multi_stft_normalized=False,
    ),
    "training": OrderedDict(batch_size=2, instruments=["vocals", "other"], target_instrument="vocals",
                            use_amp=True),
    "inference": OrderedDict(batch_size=3, num_overlap=4),
}

REAL_CONFIGS = OrderedDict([
    ("viperx_1297", ("bs_roformer", "BSRoformer")),
    ("mel_3005", ("mel_band_roformer", "MelBandRoformer")),
])


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def config_yaml(cfg):
    """MSST layout; tuples carry the !!python/tuple tag (MSST loads with yaml.FullLoader)."""
    lines = []
    for section in ("audio", "model", "training", "inference"):
        lines.append(section + ":")
        for key, val in cfg[section].items():
            if isinstance(val, tuple):
                lines.append("  %s: !!python/tuple" % key)
                lines.extend("  - %s" % _yaml_scalar(x) for x in val)
            elif isinstance(val, list):
                lines.append("  %s:" % key)
                lines.extend("  - %s" % _yaml_scalar(x) for x in val)
            else:
                lines.append("  %s: %s" % (key, _yaml_scalar(val)))
        lines.append("")
    return "\n".join(lines)


def build(model_type, model_cfg):
    return CLASSES[model_type](**model_cfg)


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def randomise(model, seed):
    """Overwrite every parameter with seeded values; rotary ``freqs`` keep their computed values."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():  # shared rotary tables appear once here
        if name.endswith("rotary_embed.freqs"):
            continue
        shape = tuple(p.shape)
        if name.endswith(".gamma"):
            val = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith(".temperature"):
            val = 0.3 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            val = 0.1 * rng.standard_normal(shape)
        elif name.endswith(".weight"):
            val = rng.standard_normal(shape) / math.sqrt(shape[1])
        else:
            raise AssertionError("unexpected parameter " + name)
        with torch.no_grad():
            p.copy_(torch.from_numpy(val.astype(np.float32)))


def key_list(state_dict):
    return [[k, list(v.shape)] for k, v in state_dict.items()]


def keys_json(cls_name, config_name, state_dict):
    keys = key_list(state_dict)
    head = OrderedDict([
        ("class", cls_name),
        ("config", config_name),
        ("num_tensors", len(keys)),
        ("num_elements", int(sum(int(np.prod(s)) for _, s in keys))),
    ])
    text = json.dumps(head, indent=2)[:-2] + ',\n  "keys": [\n'
    text += ",\n".join("    " + json.dumps(k) for k in keys)
    return text + "\n  ]\n}\n"


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------


def smooth_noise(rng, n, taps):
    k = np.hanning(taps + 2)[1:-1]
    k /= k.sum()
    return np.convolve(rng.standard_normal(n + taps), k, mode="same")[:n]


def forward_input(seed):
    """[2, 2, CHUNK] tones, smooth noise and broadband noise, peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(CHUNK) / SAMPLE_RATE
    x = np.zeros((2, 2, CHUNK))
    for b in range(2):
        base = np.zeros((2, CHUNK))
        for _ in range(7):
            f = float(np.exp(rng.uniform(np.log(60.0), np.log(9000.0))))
            a = rng.uniform(0.2, 1.0)
            ph = rng.uniform(0, 2 * np.pi, size=2)
            gain = rng.uniform(0.5, 1.0, size=2)
            base += (gain * a)[:, None] * np.sin(2 * np.pi * f * t[None, :] + ph[:, None])
        for s in range(2):
            base[s] += 1.5 * smooth_noise(rng, CHUNK, 12)
            # Broadband noise: every band carries energy, so no band's RMSNorm divides
            # rounding noise by a near-zero norm (an ill-conditioned comparison, not a test).
            base[s] += 0.4 * rng.standard_normal(CHUNK)
        x[b] = base
    x *= 0.5 / np.abs(x).max()
    return x.astype(np.float32)


def music_clip(seed):
    """[2, CLIP_FRAMES] synthetic stereo music: harmonic notes, noise bursts, a little hiss; peak 0.8."""
    rng = np.random.default_rng(seed)
    n = CLIP_FRAMES
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros((2, n))
    notes = [(220.0, 0.00, 0.70, 0.3), (277.18, 0.35, 1.10, 0.7), (329.63, 0.60, 1.50, 0.5),
             (164.81, 0.90, 1.50, 0.2), (440.0, 1.05, 1.40, 0.8)]
    for f0, on, off, pan in notes:
        env = np.clip((t - on) / 0.02, 0, 1) * np.clip((off - t) / 0.05, 0, 1) * np.exp(-1.5 * np.clip(t - on, 0, None))
        tone = np.zeros(n)
        for h in range(1, 7):
            tone += (0.6 ** (h - 1)) * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
        tone *= env * (1.0 + 0.003 * np.sin(2 * np.pi * 5.0 * t))
        out[0] += np.cos(pan * np.pi / 2) * tone
        out[1] += np.sin(pan * np.pi / 2) * tone
    for start in np.arange(0.05, 1.5, 0.25):
        i0 = int(start * SAMPLE_RATE)
        m = n - i0
        burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.03 * SAMPLE_RATE))
        out[0, i0:] += 0.8 * burst
        out[1, i0:] += 0.8 * np.roll(burst, 7)
    out += 0.02 * rng.standard_normal((2, n))
    out *= 0.8 / np.abs(out).max()
    return out.astype(np.float32)


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


class Writer:
    def __init__(self, out):
        self.out = out
        self.files = OrderedDict()

    def path(self, name):
        return os.path.join(self.out, name)

    def _record(self, name, **info):
        with open(self.path(name), "rb") as fh:
            data = fh.read()
        info["bytes"] = len(data)
        info["sha256"] = hashlib.sha256(data).hexdigest()
        self.files[name] = info

    def f32(self, name, array, what):
        a = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
        assert np.isfinite(a).all(), name
        with open(self.path(name), "wb") as fh:
            fh.write(a.tobytes(order="C"))
        self._record(name, kind="f32", shape=list(a.shape), what=what)

    def text(self, name, text, kind, what):
        with open(self.path(name), "w", newline="\n") as fh:
            fh.write(text)
        self._record(name, kind=kind, what=what)

    def torch_file(self, name, obj, what):
        torch.save(obj, self.path(name))
        self._record(name, kind="torch_zip", what=what)

    def safetensors_file(self, name, tensors, what):
        from safetensors.torch import save_file

        save_file(tensors, self.path(name), metadata={"format": "pt"})
        os.chmod(self.path(name), 0o644)
        self._record(name, kind="safetensors", what=what)

    def noted(self, name, kind, what):
        self._record(name, kind=kind, what=what)


def dump_json(obj, level=0):
    """JSON with one entry per line, short lists of scalars kept on one line."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [inner + json.dumps(str(k)) + ": " + dump_json(v, level + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        flat = json.dumps(list(obj))
        if not any(isinstance(v, dict) for v in obj) and (len(flat) <= 100 or
                                                          not any(isinstance(v, (list, tuple)) for v in obj)):
            return flat
        return "[\n" + ",\n".join(inner + dump_json(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def t2n(x):
    return x.detach().contiguous().numpy()


def check_real_configs(w):
    """Key names/shapes of the real viperx BS 1297 and Mel 3005 networks, built by this implementation.

    The committed ``<name>.keys.json`` files were taken from MSST's own classes; this
    implementation must reproduce them exactly (names, order and shapes).
    """
    out = OrderedDict()
    for name, (model_type, cls_name) in REAL_CONFIGS.items():
        cfg_file = os.path.join(DEFAULT_OUT, name + ".yaml")
        with open(cfg_file) as fh:
            cfg = yaml.load(fh, Loader=yaml.FullLoader)
        with torch.device("meta"):  # shapes only, no memory
            model = build(model_type, dict(cfg["model"]))
        text = keys_json(cls_name, name + ".yaml", model.state_dict())
        mine = json.loads(text)
        committed = os.path.join(DEFAULT_OUT, name + ".keys.json")
        if os.path.exists(committed):
            with open(committed) as fh:
                expected = json.load(fh)
            assert mine["keys"] == expected["keys"], "%s: state_dict keys/shapes differ from %s" % (name, committed)
            assert mine == expected, name
        else:
            print("warning: %s missing, nothing to compare with" % committed, file=sys.stderr)
        if os.path.abspath(w.out) != os.path.abspath(DEFAULT_OUT):
            with open(cfg_file, "rb") as src, open(w.path(name + ".yaml"), "wb") as dst:
                dst.write(src.read())
        w.noted(name + ".yaml", "yaml", "MSST config of the published checkpoint, verbatim")
        w.text(name + ".keys.json", text, "json",
               "state_dict key names and shapes of %s built from %s.yaml" % (cls_name, name))
        out[name] = OrderedDict(config=name + ".yaml", keys=name + ".keys.json", model_type=model_type,
                                num_tensors=mine["num_tensors"], num_elements=mine["num_elements"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    w = Writer(args.out)

    index = OrderedDict()
    index["format"] = "raw little-endian float32, C (row-major) order, no header"
    index["generator"] = "models/reference/roformer_reference.py"
    index["torch"] = torch.__version__.split("+")[0]
    index["notes"] = [
        "complex values are stored as a trailing axis of 2 (re, im)",
        "(f s) means frequency-major, channel-minor: index = f * channels + s",
        "forward outputs keep the stem axis even for one stem: [b, num_stems, channels, samples]",
    ]
    index["real_configs"] = check_real_configs(w)
    index["models"] = OrderedDict()

    x_in = forward_input(2001)
    clip = music_clip(3001)
    w.f32("clip.f32", clip, "synthetic stereo clip [channels, samples], 44.1 kHz")

    for name, spec in CONFIGS.items():
        cfg = {k: spec[k] for k in ("audio", "model", "training", "inference")}
        ytext = config_yaml(cfg)
        parsed = yaml.load(ytext, Loader=yaml.FullLoader)
        assert parsed == {k: dict(v) for k, v in cfg.items()}, name
        w.text(name + ".yaml", ytext, "yaml", "MSST-style config")

        model = build(spec["model_type"], dict(cfg["model"])).eval()
        randomise(model, spec["seed"])
        sd = model.state_dict()
        assert all(v.dtype == torch.float32 for v in sd.values())
        w.torch_file(name + ".ckpt", sd, "torch.save(state_dict)")
        if name == "bs":
            w.torch_file("bs.nested.ckpt",
                         {"epoch": 3, "global_step": 1500, "pytorch-lightning_version": "2.1.0", "state_dict": sd},
                         "checkpoint dict with the state_dict under 'state_dict'")
            fp16 = OrderedDict((k, v.half()) for k, v in sd.items())
            w.torch_file("bs.fp16.ckpt", fp16, "state_dict cast to float16")
        if name in ("bs", "mel"):
            w.safetensors_file(name + ".safetensors", OrderedDict((k, v.clone()) for k, v in sd.items()),
                               "safetensors, every key stored (shared rotary tables duplicated)")

        # forward
        x = torch.from_numpy(x_in)
        cap = {}
        with torch.no_grad():
            y = model(x, capture=cap)
        assert y.shape == (2, model.num_stems, 2, CHUNK), y.shape
        p = name + ".forward."
        w.f32(p + "input.f32", x_in, "input audio [b, channels, samples]")
        w.f32(p + "bandsplit_input.f32", t2n(cap["bandsplit_input"]),
              "band split input [b, t, F*2]; F axis = " + ("gathered mel-band bins (freq_indices)" if model.is_mel
                                                          else "(f s)") + ", then (re, im)")
        w.f32(p + "bandsplit.f32", t2n(cap["bandsplit"]), "band split output [b, t, bands, dim]")
        for i in range(len(model.layers)):
            w.f32(p + "layer%d.f32" % i, t2n(cap["layer%d" % i]), "x after block %d [b, t, bands, dim]" % i)
        w.f32(p + "mask.f32", t2n(cap["mask"]), "mask estimator output [b, n, F, t, 2]")
        if model.is_mel:
            w.f32(p + "mask_averaged.f32", t2n(cap["mask_averaged"]),
                  "band-averaged mask [b, n, (f s), t, 2]")
        w.f32(p + "output.f32", t2n(y), "separated audio [b, n, channels, samples]")

        if name == "bs":
            half = build(spec["model_type"], dict(cfg["model"])).eval()
            half.load_state_dict(OrderedDict((k, v.half().float()) for k, v in sd.items()))
            with torch.no_grad():
                yh = half(x)
            w.f32("bs.fp16.forward.output.f32", t2n(yh),
                  "output with the float16-rounded weights (rotary freqs rounded too) [b, n, channels, samples]")

        # demix
        plan = OrderedDict()
        stems = demix(cfg, model, clip, plan)
        for inst, wave in stems.items():
            assert wave.shape == clip.shape
            w.f32("%s.demix.%s.f32" % (name, inst), wave, "demix of clip.f32 [channels, samples]")

        info = OrderedDict()
        info["class"] = type(model).__name__
        info["model_type"] = spec["model_type"]
        info["config"] = name + ".yaml"
        info["seed"] = spec["seed"]
        info["instruments"] = target_instruments(cfg)
        info["num_stems"] = model.num_stems
        info["stft"] = OrderedDict(n_fft=model.n_fft, hop=model.hop, win=model.win, window="hann periodic",
                                   center=True, pad_mode="reflect", onesided=True, normalized=False,
                                   frames=int(cap["bandsplit"].shape[1]),
                                   istft_length="input length" if not model.is_mel else "none (hop*(frames-1))")
        info["band_split_dim_inputs"] = list(model.band_split.dim_inputs)
        if model.is_mel:
            info["num_freqs_per_band"] = model.num_freqs_per_band
            info["num_bands_per_freq"] = model.num_bands_per_freq.tolist()
            info["freq_indices"] = model.freq_indices.tolist()
        else:
            info["freqs_per_bands"] = list(model.freqs_per_bands)
        info["demix"] = plan
        info["keys"] = key_list(sd)
        index["models"][name] = info

    index["tolerances"] = OrderedDict(
        forward_intermediates_abs=1e-4, forward_output_abs=1e-4, demix_abs=1e-4,
        comment="float32 references from torch on CPU with one thread; compare with tolerances, not hashes",
    )
    files = OrderedDict((k, v) for k, v in w.files.items() if k != "reference.json")
    index["files"] = files
    with open(w.path("reference.json"), "w", newline="\n") as fh:
        fh.write(dump_json(index) + "\n")
    total = sum(v["bytes"] for v in files.values()) + os.path.getsize(w.path("reference.json"))
    print("wrote %d files, %.2f MB, to %s" % (len(files) + 1, total / 1e6, args.out))


if __name__ == "__main__":
    main()
