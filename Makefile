# The targets are what we run. CARGO_TARGET_DIR defaults to a directory outside the clone
# so that fresh clones (CI) reuse the compiled dependencies.
export CARGO_TARGET_DIR ?= /var/tmp/uvr-target
CARGO ?= cargo

.PHONY: test deps lint fmt check bench bench-api bench-separation bench-mdx bench-roformer gpu-bench-prepare gpu-bench-rehearsal build release run clean faults load fuzz

## test: install missing system packages (redis-server), then run every test
test: deps
	CUBECL_AUTOTUNE_LEVEL=minimal $(CARGO) test --locked --all-targets
	# Without the neural engine (no Burn): the library's own tests.
	$(CARGO) test --locked --no-default-features --lib
	# A reduced load run: MAX_QUEUE_DEPTH and the rate limit under concurrent clients, and
	# flat memory under sustained submissions (`make load` runs the full size).
	CUBECL_AUTOTUNE_LEVEL=minimal LOAD_SECONDS=30 LOAD_RATE=4 LOAD_SAMPLE_SECONDS=2 \
		LOAD_RETENTION_SECONDS=5 OVERLOAD_SECONDS=6 OVERLOAD_CLIENTS=32 \
		$(CARGO) test --locked --test load -- --ignored --test-threads=1 \
		sustained_load overload_queue_full overload_rate_limited
	# The HTTP API against its OpenAPI document (schemathesis), on the binary built above.
	./scripts/schemathesis.sh
	# The Docker deployment against the Compose Specification and its rules (no engine needed).
	python3 scripts/check_compose.py --self-test

deps:
	@./scripts/deps.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## check: what CI runs
check: lint test

## bench: queue benchmark beside redis-benchmark (release build); bench-api: wrk on POST /generate
bench: deps
	$(CARGO) bench --locked --bench queue

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release --bins

bench-api: deps
	./benches/api.sh

## bench-separation: DSP separator SDR vs the L-R baseline, speed, peak memory for 5 and 60 min
bench-separation:
	$(CARGO) bench --locked --bench separation

## bench-mdx: MDX-Net at the Kim_Vocal_2 geometry, Burn CPU beside onnxruntime at batch 1 and 4
## (pip install -r models/reference/requirements.txt), and wgpu
bench-mdx:
	MIMALLOC_PURGE_DELAY=$${MIMALLOC_PURGE_DELAY:-10000} $(CARGO) bench --locked --bench mdx

## bench-roformer: BS-Roformer at viperx 1297's geometry, Burn CPU beside PyTorch CPU with the
## same threads (pip install -r models/reference/requirements-roformer.txt), and wgpu
bench-roformer:
	$(CARGO) bench --locked --bench roformer

## gpu-bench-prepare: stripped release build, PyTorch anchor and Vulkan loaders for
## scripts/gpu_bench.sh on a GPU machine; gpu-bench-rehearsal: the same run on lavapipe
gpu-bench-prepare:
	./scripts/gpu_bench.sh prepare

gpu-bench-rehearsal:
	$(CARGO) build --locked --bin uvr
	GPU_BENCH_DEVICE=software GPU_BENCH_BIN=$(CARGO_TARGET_DIR)/debug/uvr ./scripts/gpu_bench.sh run $${OUT:-gpu-bench-out}

## faults: the fault-injection suite scaled up (SIGKILLed processor/uploader, Redis and
## SeaweedFS restarts, webhook receiver faults); `make test` runs it with fewer tasks
faults: deps
	CUBECL_AUTOTUNE_LEVEL=minimal FAULT_TASKS=$${FAULT_TASKS:-12} $(CARGO) test --locked --test faults -- --nocapture --test-threads=1

## load: bounded load run (open-loop LOAD_RATE/s for LOAD_SECONDS: latency, throughput, memory
## over time) and overload runs (MAX_QUEUE_DEPTH 503s, rate-limit 429s) against the real binary
load: deps
	CUBECL_AUTOTUNE_LEVEL=minimal $(CARGO) test --locked --test load -- --ignored --nocapture --test-threads=1

## fuzz: cargo-fuzz targets request, decode, onnx for FUZZ_SECONDS each (default 60); nightly,
## its own target directory (FUZZ_TARGET_DIR, default /var/tmp/uvr-fuzz-target)
fuzz:
	./scripts/fuzz.sh
