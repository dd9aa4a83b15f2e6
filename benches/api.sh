#!/usr/bin/env bash
# HTTP benchmark: wrk against POST /generate with a fixed body, through the release binary,
# against a throwaway redis-server. Prints requests/s, latency percentiles, and how many
# tasks Redis holds afterwards (accepted = enqueued). Usage: benches/api.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-15}
conns=${2:-64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/uvr-target}
./scripts/deps.sh --bench
cargo build --release --locked --bin uvr >/dev/null
work=$(mktemp -d)
redis_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
api_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cleanup() {
  [[ -n "${uvr_pid:-}" ]] && kill "$uvr_pid" 2>/dev/null || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes --logfile "$work/redis.log"
until [[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" == PONG ]]; do sleep 0.05; done

REDIS_URL="redis://127.0.0.1:$redis_port/0" API_PORT=$api_port API_PASSWORD=bench ALLOW_WEAK_SECRETS=true \
  RATE_LIMIT_PER_SECOND=0 MAX_QUEUE_DEPTH=0 RUST_LOG=warn MODELS_DIR="$work" \
  "$CARGO_TARGET_DIR/release/uvr" >"$work/uvr.log" 2>&1 &
uvr_pid=$!
until curl -fs "http://127.0.0.1:$api_port/readyz" >/dev/null; do sleep 0.05; done

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"audio": "https://93.184.215.14/audio.wav", "hook_url": "https://93.184.215.14/webhook", "priority": 5}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic YWRtaW46YmVuY2g="
local accepted, other = 0, 0
response = function(status, headers, body)
  if status == 202 then accepted = accepted + 1 else other = other + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("non-2xx/3xx responses counted by wrk: %d\n", summary.errors.status))
end
LUA
echo "wrk -t2 -c$conns -d${duration}s POST /generate (uvr release, API_WORKERS=CPUs, rate limit off)"
wrk -t2 -c"$conns" -d"${duration}s" --latency -s "$work/post.lua" "http://127.0.0.1:$api_port/generate"
echo "tasks enqueued in Redis: $(redis-cli -p "$redis_port" zcard uvr_tasks)"
