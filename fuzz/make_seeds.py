#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/seed-*: small valid inputs the
fuzzer mutates from. Standard library only; the output is deterministic.

    python3 fuzz/make_seeds.py
"""

import io
import json
import math
import struct
import wave
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# --- request: HTTP-like header block, blank line, JSON body -----------------------------


def request_seeds():
    bodies = {
        "full.json": {
            "audio": "https://example.com/song.mp3",
            "hook_url": "https://hooks.example.com/done?id=7",
            "priority": 5,
            "model": "dsp-centre",
            "stems": ["vocals"],
            "output_format": "wav24",
        },
        "minimal.json": {
            "audio": "http://93.184.215.14/a.flac",
            "hook_url": "http://localhost:9000/hook",
        },
        "mdx.json": {
            "audio": "https://a.example/x.wav",
            "hook_url": "https://[2606:4700::1111]:8443/h#frag",
            "model": "UVR-MDX-NET-Voc_FT",
            "stems": ["instrumental", "vocals", "vocals"],
            "output_format": "WAV32F",
            "priority": 1,
        },
        "wrong-types.json": {
            "audio": 1,
            "hook_url": None,
            "priority": "5",
            "stems": [],
            "model": 3.5,
        },
    }
    for name, body in bodies.items():
        write("request", name, json.dumps(body, separators=(",", ":")).encode())
    head = (
        b"Content-Type: application/vnd.uvr+json; charset=utf-8\n"
        b"Idempotency-Key: order-42\n\n"
    )
    body = {"audio": "http://0x7f.0.0.1/a.wav", "hook_url": "https://example.org/", "priority": 6}
    write("request", "headers.http", head + json.dumps(body).encode())


# --- decode: tiny audio files ------------------------------------------------------------


def tone(n, rate, channels, amp):
    for i in range(n):
        yield [amp * math.sin(2 * math.pi * 440 * (c + 1) * i / rate) for c in range(channels)]


def wav_pcm(rate, channels, width, n):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        frames = bytearray()
        top = (1 << (8 * width - 1)) - 1
        for f in tone(n, rate, channels, 0.5):
            for s in f:
                v = int(s * top)
                if width == 1:
                    frames += struct.pack("<B", v + 128)
                else:
                    frames += v.to_bytes(width, "little", signed=True)
        w.writeframes(bytes(frames))
    return buf.getvalue()


def wav_float(rate, channels, n):
    data = b"".join(struct.pack("<f", s) for f in tone(n, rate, channels, 0.25) for s in f)
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


class Bits:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value, bits):
        for i in reversed(range(bits)):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                self.acc, self.n = 0, 0

    def bytes(self):
        assert self.n == 0
        return bytes(self.out)


def crc8(data):
    c = 0
    for b in data:
        c ^= b
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


def crc16(data):
    c = 0
    for b in data:
        c ^= b << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x8005) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
    return c


def flac(rate, n, block):
    """16-bit stereo FLAC with verbatim subframes (valid, uncompressed)."""
    samples = [[int(s * 32767) for s in f] for f in tone(n, rate, 2, 0.5)]
    info = Bits()
    info.put(block, 16)
    info.put(block, 16)
    info.put(0, 24)
    info.put(0, 24)
    info.put(rate, 20)
    info.put(1, 3)  # channels - 1
    info.put(15, 5)  # bits per sample - 1
    info.put(n, 36)
    info.put(0, 64)
    info.put(0, 64)  # MD5 unknown
    out = b"fLaC" + bytes([0x80, 0, 0, 34]) + info.bytes()
    for k, start in enumerate(range(0, n, block)):
        part = samples[start : start + block]
        h = Bits()
        h.put(0x3FFE, 14)  # sync
        h.put(0, 1)
        h.put(0, 1)  # fixed block size
        h.put(0b0111, 4)  # block size: 16 bits follow
        h.put(0b0000, 4)  # sample rate: from STREAMINFO
        h.put(0b0001, 4)  # left, right
        h.put(0b100, 3)  # 16 bits per sample
        h.put(0, 1)
        assert k < 128
        h.put(k, 8)  # frame number, UTF-8 coded
        h.put(len(part) - 1, 16)
        head = h.bytes()
        frame = bytearray(head + bytes([crc8(head)]))
        for c in range(2):
            frame.append(0b00000010)  # verbatim, no wasted bits
            for f in part:
                frame += f[c].to_bytes(2, "big", signed=True)
        frame += struct.pack(">H", crc16(frame))
        out += bytes(frame)
    return out


def mp3_silence(frames):
    """MPEG-1 Layer III, 128 kb/s, 48 kHz, joint stereo: zeroed side info decodes as silence."""
    header = bytes([0xFF, 0xFB, 0x94, 0x44])
    size = 144 * 128000 // 48000
    return (header + bytes(size - 4)) * frames


def decode_seeds():
    write("decode", "u8-mono-8k.wav", wav_pcm(8000, 1, 1, 200))
    write("decode", "s16-stereo-44k1.wav", wav_pcm(44100, 2, 2, 300))
    write("decode", "s24-3ch-22k05.wav", wav_pcm(22050, 3, 3, 150))
    write("decode", "f32-stereo-96k.wav", wav_float(96000, 2, 200))
    write("decode", "s16-stereo-32k.flac", flac(32000, 300, 128))
    write("decode", "silence-48k.mp3", mp3_silence(3))


# --- onnx: a small graph with every operator the MDX-Net loader knows -------------------


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    if wire == 5:
        return key + payload
    raise ValueError(wire)


def s(num, text):
    return field(num, 2, text.encode())


def ints_attr(name, values):
    return s(1, name) + b"".join(field(8, 0, v & 0xFFFFFFFFFFFFFFFF) for v in values)


def node(op, inputs, outputs, name, attrs=()):
    body = b"".join(s(1, i) for i in inputs) + b"".join(s(2, o) for o in outputs)
    body += s(3, name) + s(4, op) + b"".join(field(5, 2, a) for a in attrs)
    return field(1, 2, body)


def tensor(name, dims, values=None, data_type=1):
    body = field(1, 2, b"".join(varint(d) for d in dims)) + field(2, 0, data_type)
    count = 1
    for d in dims:
        count *= d
    if data_type == 1:
        values = values if values is not None else [((i * 7) % 5 - 2) / 8 for i in range(count)]
        body += field(9, 2, struct.pack(f"<{count}f", *values))
    return field(5, 2, body + s(8, name))


def value_info(num, name, dims):
    shape = b"".join(
        field(1, 2, field(1, 0, d) if isinstance(d, int) else s(2, d)) for d in dims
    )
    tensor_type = field(1, 0, 1) + field(2, 2, shape)
    return field(num, 2, s(1, name) + field(2, 2, field(1, 2, tensor_type)))


def onnx_seed():
    c, f, t = 4, 8, 4
    nodes = [
        node("Conv", ["x", "conv.w", "conv.b"], ["a"], "conv",
             [ints_attr("kernel_shape", [1, 1]), ints_attr("strides", [1, 1]),
              ints_attr("pads", [0, 0, 0, 0]), ints_attr("dilations", [1, 1]),
              s(1, "group") + field(3, 0, 1)]),
        node("BatchNormalization", ["a", "bn.g", "bn.b", "bn.m", "bn.v"], ["b"], "bn",
             [s(1, "epsilon") + field(2, 5, struct.pack("<f", 1e-5))]),
        node("Relu", ["b"], ["c"], "relu"),
        node("Transpose", ["c"], ["d"], "tr", [ints_attr("perm", [0, 1, 3, 2])]),
        node("MatMul", ["d", "mm.w"], ["e"], "mm"),
        node("Add", ["e", "mm.b"], ["g"], "bias"),
        node("Transpose", ["g"], ["h"], "tr2", [ints_attr("perm", [0, 1, 3, 2])]),
        node("Add", ["h", "c"], ["i"], "skip"),
        node("Mul", ["i", "b"], ["j"], "gate"),
        node("ConvTranspose", ["j", "up.w"], ["y"], "up",
             [ints_attr("strides", [1, 1]), ints_attr("output_padding", [0, 0])]),
    ]
    inits = [
        tensor("conv.w", [c, c, 1, 1]),
        tensor("conv.b", [c]),
        tensor("bn.g", [c], [1.0] * c),
        tensor("bn.b", [c], [0.0] * c),
        tensor("bn.m", [c], [0.0] * c),
        tensor("bn.v", [c], [1.0] * c),
        tensor("mm.w", [f, f]),
        tensor("mm.b", [f]),
        tensor("up.w", [c, c, 1, 1]),
        tensor("shape", [4], data_type=7),
    ]
    graph = b"".join(nodes) + b"".join(inits) + s(2, "seed")
    graph += value_info(11, "x", ["batch", 4, f, t]) + value_info(12, "y", ["batch", 4, f, t])
    model = field(1, 0, 8) + s(2, "uvr-fuzz-seed") + field(7, 2, graph)
    model += field(8, 2, s(1, "") + field(2, 0, 17))  # opset_import
    write("onnx", "small-mdx.onnx", model)


if __name__ == "__main__":
    request_seeds()
    decode_seeds()
    onnx_seed()
