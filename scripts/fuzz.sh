#!/usr/bin/env bash
# Runs the cargo-fuzz targets under fuzz/ for a bounded time each, installing cargo-fuzz
# when it is missing. Exits non-zero when any target finds a crash (the input is saved under
# fuzz/artifacts/<target>/; replay it with `cargo +nightly fuzz run <target> <file>`).
#
#   scripts/fuzz.sh                  # every target, FUZZ_SECONDS each
#   scripts/fuzz.sh decode onnx      # only these targets
#
# Environment:
#   FUZZ_SECONDS      seconds of fuzzing per target, after the build (default 60)
#   FUZZ_TARGET_DIR   build directory (default /var/tmp/uvr-fuzz-target); CARGO_TARGET_DIR
#                     is ignored so that the main build's directory is never shared
#   FUZZ_CORPUS_DIR   where new corpus entries go (default $FUZZ_TARGET_DIR/corpus); the
#                     committed seeds in fuzz/corpus/<target>/ are only read
#   FUZZ_SANITIZER    none (default), address, ...: cargo fuzz --sanitizer
#   FUZZ_ARGS         extra libFuzzer flags, e.g. "-max_len=65536 -fork=2"
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${FUZZ_TARGET_DIR:-/var/tmp/uvr-fuzz-target}
corpus_dir=${FUZZ_CORPUS_DIR:-$target_dir/corpus}
read -r -a extra <<<"${FUZZ_ARGS:-}"

if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "FUZZ_SECONDS must be a positive number of seconds, not '$seconds'" >&2
  exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export CARGO_TARGET_DIR=$target_dir
cd "$root/fuzz"

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Debug assertions on (-a): integer overflow is a crash, not a silent wrap.
build=(--sanitizer "$sanitizer" --debug-assertions)
# Build everything first so that FUZZ_SECONDS is spent fuzzing.
cargo +nightly fuzz build "${build[@]}"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$corpus_dir/$t"
  echo "== fuzzing $t for ${seconds}s" >&2
  if ! cargo +nightly fuzz run "${build[@]}" "$t" "$corpus_dir/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}"; then
    failed+=("$t")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "no crash in ${targets[*]} (${seconds}s each)" >&2
