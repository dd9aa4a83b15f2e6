#!/usr/bin/env bash
# MDX-Net and BS-Roformer on a GPU, beside PyTorch, in one run: start-up (first start with an
# empty tuning cache, then a new process on the filled cache), steady-state speed at batch 1
# and 4, and fidelity (SNR of the stems against an exact fp32 CPU reference), at the
# Kim_Vocal_2 geometry with random weights; then BS-Roformer at viperx 1297's geometry
# (random weights): PyTorch CUDA fp32 beside uvr, and the SNR of uvr's stems against PyTorch's.
# Everything it measures goes to OUT (logs and summary.txt).
#
#   scripts/gpu_bench.sh prepare      # here: stripped release build, the PyTorch anchor and
#                                     # the Vulkan loader packages, into .gpu-bench/ and .gl/
#   scripts/gpu_bench.sh run [OUT]    # on the GPU machine (OUT defaults to $OUT, else ./gpu-bench-out)
#
# `prepare` needs the PyTorch anchor (UVR's demix in PyTorch: torch_demix.py, make_model.py,
# make_wav.py, compare.py) in GPU_ANCHOR_DIR (default ../shared/gpu-anchor). On the GPU machine
# the run needs python3 with numpy, torch and onnx; nothing is downloaded.
#
# GPU_BENCH_DEVICE=software rehearses the whole run on Mesa's lavapipe, without torch, on the
# tiny test model (tests/fixtures/mdx/tiny.onnx) and short clips: what `make gpu-bench-rehearsal`
# does before the script travels.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bundle=$root/.gpu-bench

prepare() {
  local anchor=${GPU_ANCHOR_DIR:-$root/../shared/gpu-anchor}
  [[ -f $anchor/torch_demix.py ]] || { echo "no PyTorch anchor in $anchor (set GPU_ANCHOR_DIR)" >&2; exit 1; }
  grep -qx '/.gpu-bench/' .git/info/exclude 2>/dev/null || echo '/.gpu-bench/' >>.git/info/exclude
  grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >>.git/info/exclude
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/uvr-target}
  cargo build --locked --release --bin uvr
  rm -rf "$bundle" && mkdir -p "$bundle/anchor"
  cp "$CARGO_TARGET_DIR/release/uvr" "$bundle/uvr"
  strip "$bundle/uvr"
  xz -T0 -6 "$bundle/uvr"
  cp "$anchor"/*.py "$bundle/anchor/"
  mkdir -p "$bundle/roformer"
  cp models/reference/roformer_reference.py models/reference/bench_roformer_torch.py \
    tests/fixtures/roformer/viperx_1297.yaml tests/fixtures/roformer/bs.ckpt \
    tests/fixtures/roformer/bs.yaml "$bundle/roformer/"
  if [[ ! -d .gl ]] || ! compgen -G ".gl/libvulkan1_*.deb" >/dev/null; then
    mkdir -p .gl /tmp/amd64/partial
    local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update >/dev/null
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  fi
  du -sh "$bundle" .gl
  echo "run there with: scripts/gpu_bench.sh run   (carry: .gpu-bench .gl)"
}

# Wall-clock seconds of a command, its output to a log.
timed() {
  local log=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$log" 2>&1 || { echo "FAILED: $* (see $log)" >&2; tail -20 "$log" >&2; return 1; }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}

# A field of the JSON summary `uvr separate` prints last.
summary_field() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
start = text.rindex("\n{") + 1 if "\n{" in text else text.index("{")
v = json.loads(text[start:])
for k in sys.argv[2].split("."):
    v = v[k]
print(v)
EOF
}

run() {
  local out=${1:-${OUT:-$root/gpu-bench-out}}
  mkdir -p "$out"
  local device=${GPU_BENCH_DEVICE:-gpu}
  local w
  w=$(mktemp -d)
  local summary=$out/summary.txt
  : >"$summary"
  say() { echo "$*" | tee -a "$summary"; }

  # Vulkan loader where the machine has none (the device README's recipe).
  if ! ldconfig -p | grep -q libvulkan && compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  if [[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json && -z ${VK_DRIVER_FILES:-} ]]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi

  local uvr=${GPU_BENCH_BIN:-}
  if [[ -z $uvr ]]; then
    if [[ -f $bundle/uvr.xz ]]; then
      xz -dkc "$bundle/uvr.xz" >"$w/uvr" && chmod +x "$w/uvr"
      uvr=$w/uvr
    else
      uvr=${CARGO_TARGET_DIR:-/var/tmp/uvr-target}/release/uvr
    fi
  fi
  local anchor=$bundle/anchor
  [[ -d $anchor ]] || anchor=${GPU_ANCHOR_DIR:-$root/../shared/gpu-anchor}
  mkdir -p "$w/models"
  say "uvr GPU benchmark, $(date -u +%FT%TZ), device choice: $device"
  if command -v nvidia-smi >/dev/null; then
    say "card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
  fi

  local seconds short model_note
  local torch=0
  if [[ $device == software ]]; then
    # Rehearsal: the tiny committed model, short clips, no torch.
    seconds=${GPU_BENCH_SECONDS:-4}
    short=2
    cp tests/fixtures/mdx/tiny.onnx "$w/models/bench.onnx"
    python3 - "$w/models/bench.json" <<'EOF'
import json, sys
side = json.load(open("tests/fixtures/mdx/tiny.json"))
json.dump({k: side[k] for k in ("n_fft", "hop", "compensate", "primary_stem") if k in side}, open(sys.argv[1], "w"))
EOF
    model_note="tiny test model (rehearsal)"
  else
    seconds=${GPU_BENCH_SECONDS:-60}
    short=6
    torch=1
    model_note="Kim_Vocal_2 geometry (dim_f 3072, dim_t 256, 48 channels, 5 stages, n_fft 7680), random weights"
    echo '{"n_fft": 7680, "hop": 1024, "compensate": 1.0, "primary_stem": "Vocals"}' >"$w/models/bench.json"
  fi
  say "model: $model_note; clips: ${short} s and ${seconds} s"
  python3 "$anchor/make_wav.py" "$seconds" "$w/mix.wav"
  python3 "$anchor/make_wav.py" "$short" "$w/short.wav"

  if ((torch)); then
    # The anchor exports the very weights it runs, so both engines run one model.
    python3 "$anchor/torch_demix.py" --onnx-out "$w/models/bench.onnx" --in "$w/mix.wav" \
      --batch 1 --batch 4 --no-tf32 --save-npy "$w/torch_fp32.npy" >"$out/torch_fp32.log" 2>&1
    python3 "$anchor/torch_demix.py" --in "$w/mix.wav" --batch 1 --batch 4 \
      --save-npy "$w/torch_tf32.npy" >"$out/torch_tf32.log" 2>&1
    OMP_NUM_THREADS=$(nproc) python3 "$anchor/torch_demix.py" --device cpu --in "$w/mix.wav" \
      --batch 1 --save-npy "$w/ref_cpu.npy" >"$out/torch_cpu_reference.log" 2>&1
    say "PyTorch CUDA fp32, TF32 off:"
    grep '^torch-' "$out/torch_fp32.log" | sed 's/^/  /' | tee -a "$summary"
    say "PyTorch CUDA fp32, TF32 on (PyTorch's default):"
    grep '^torch-' "$out/torch_tf32.log" | sed 's/^/  /' | tee -a "$summary"
    say "SNR against the exact fp32 CPU reference (PyTorch CPU):"
    say "  torch CUDA no-TF32: $(python3 "$anchor/compare.py" "$w/ref_cpu.npy" "$w/torch_fp32.npy")"
    say "  torch CUDA TF32:    $(python3 "$anchor/compare.py" "$w/ref_cpu.npy" "$w/torch_tf32.npy")"
  fi

  local env=(env MODELS_DIR="$w/models" SEPARATOR_DEVICE="$device" SEPARATOR_CACHE_DIR="$w/cache"
    DEFAULT_MODEL=bench RUST_LOG="${RUST_LOG:-info}")
  # 1. The first start ever: an empty tuning cache.
  local t
  t=$(timed "$out/uvr_first_start.log" "${env[@]}" MDX_BATCH=4 "$uvr" separate "$w/short.wav" \
    --model bench --format wav32f --json -o "$w/first")
  say "uvr, first start (empty cache), ${short} s clip, batch 4: ${t} s end to end;" \
    "model load + warm-up (tuning) $(summary_field "$out/uvr_first_start.log" timings.model_seconds) s"
  # 2. A new process on the filled cache.
  t=$(timed "$out/uvr_warm_start.log" "${env[@]}" MDX_BATCH=4 "$uvr" separate "$w/short.wav" \
    --model bench --format wav32f --json -o "$w/warm")
  say "uvr, new process with a warm cache, ${short} s clip, batch 4: ${t} s end to end" \
    "(goal < 5 s); model load + warm-up $(summary_field "$out/uvr_warm_start.log" timings.model_seconds) s"
  grep -h "autotune cached entries\|tuning cache" "$out/uvr_warm_start.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/  /' | tee -a "$summary" || true
  # 3. Steady state: separation time of the long clip, model loaded and warmed at its shapes.
  local b sep
  for b in 1 4; do
    "${env[@]}" MDX_BATCH=$b "$uvr" separate "$w/mix.wav" --model bench --format wav32f --json \
      -o "$w/steady$b" >"$out/uvr_steady_b$b.log" 2>&1
    sep=$(summary_field "$out/uvr_steady_b$b.log" timings.separation_seconds)
    say "uvr on $device, fp32, batch $b: $(python3 -c "print(f'{$sep * 60 / $seconds:.3f}')") s per minute of audio" \
      "(separation ${sep} s for ${seconds} s)"
    if ((torch)); then
      say "  SNR against the CPU reference: $(python3 "$anchor/compare.py" "$w/ref_cpu.npy" "$w/steady$b/mix_(Vocals)_bench.wav")"
    fi
  done
  if ((torch)); then
    python3 - "$out" "$seconds" <<'EOF' | tee -a "$summary"
import re, sys
out, seconds = sys.argv[1], float(sys.argv[2])
def per_minute(path, batch):
    for line in open(path):
        m = re.match(rf"torch-cuda float32 batch {batch}: .* = ([0-9.]+) s per minute", line)
        if m:
            return float(m.group(1))
for b in (1, 4):
    text = open(f"{out}/uvr_steady_b{b}.log").read()
    sep = float(re.findall(r'"separation_seconds":\s*([0-9.]+)', text)[-1]) * 60 / seconds
    exact, tf32 = per_minute(f"{out}/torch_fp32.log", b), per_minute(f"{out}/torch_tf32.log", b)
    print(f"ratio uvr / PyTorch, batch {b}: {sep / exact:.2f}x (TF32 off), {sep / tf32:.2f}x (TF32 on)")
EOF
  fi
  roformer "$w" "$uvr" "$device" "$torch" "$seconds" "$out"
  rm -rf "$w"
  echo "summary: $summary"
}

# BS-Roformer: PyTorch (MSST's demix, SDPA attention, fp32, TF32 off) beside uvr on one
# checkpoint and one clip; uvr's stems against PyTorch's.
roformer() {
  local w=$1 uvr=$2 device=$3 torch=$4 seconds=$5 out=$6
  local src=$bundle/roformer
  [[ -d $src ]] || src=$root/models/reference
  local rw=$w/roformer
  mkdir -p "$rw/models"
  if ((torch)); then
    python3 "$src/bench_roformer_torch.py" make-checkpoint "$src/viperx_1297.yaml" \
      "$rw/models/viperx.ckpt" >"$out/roformer_make.log" 2>&1
    say "BS-Roformer, viperx 1297 geometry (dim 512, depth 12, 62 bands, 8 s chunks), random weights:"
    python3 "$src/bench_roformer_torch.py" time "$rw/models/viperx.ckpt" "$seconds" "$(nproc)" \
      --device cuda --attention sdpa --input "$w/mix.wav" --save "$rw/torch.npy" \
      >"$out/roformer_torch.json" 2>"$out/roformer_torch.log"
    say "  PyTorch CUDA fp32 (TF32 off): $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['seconds_per_minute'])" "$out/roformer_torch.json") s per minute of audio"
  else
    local f=${GPU_BENCH_ROFORMER_FIXTURES:-tests/fixtures/roformer}
    [[ -f $src/bs.ckpt ]] && f=$src
    cp "$f/bs.ckpt" "$rw/models/viperx.ckpt"
    cp "$f/bs.yaml" "$rw/models/viperx.yaml"
    say "Roformer (rehearsal: tiny test model):"
  fi
  local env=(env MODELS_DIR="$rw/models" SEPARATOR_DEVICE="$device" SEPARATOR_CACHE_DIR="$w/cache"
    RUST_LOG="${RUST_LOG:-info}")
  local t sep
  t=$(timed "$out/roformer_uvr_first.log" "${env[@]}" "$uvr" separate "$w/short.wav" --model viperx \
    --format wav32f --json -o "$rw/first")
  say "  uvr, first start, short clip: ${t} s end to end; model load + warm-up" \
    "$(summary_field "$out/roformer_uvr_first.log" timings.model_seconds) s"
  "${env[@]}" "$uvr" separate "$w/mix.wav" --model viperx --format wav32f --json -o "$rw/steady" \
    >"$out/roformer_uvr_steady.log" 2>&1
  sep=$(summary_field "$out/roformer_uvr_steady.log" timings.separation_seconds)
  say "  uvr on $device, fp32: $(python3 -c "print(f'{$sep * 60 / $seconds:.3f}')") s per minute of audio" \
    "(separation ${sep} s for ${seconds} s)"
  if ((torch)); then
    say "  ratio uvr / PyTorch: $(python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['seconds_per_minute']; print(f'{$sep * 60 / $seconds / t:.2f}x')" "$out/roformer_torch.json")"
    say "  SNR of uvr's vocals against PyTorch's: $(python3 "$bundle/anchor/compare.py" "$rw/torch.npy" "$rw/steady/mix_(Vocals)_viperx.wav" 2>/dev/null || echo unavailable)"
  fi
}

case ${1:-} in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 prepare | run [OUT]" >&2; exit 2 ;;
esac
