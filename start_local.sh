#!/usr/bin/env bash
# Starts uvr locally without Docker: checks Redis (starts a local redis-server with AOF if
# none answers, installing it with apt on Debian/Ubuntu when missing), builds the release
# binary, starts the service in the background (logs in logs/, pid files in run/) and prints
# the URL and the credentials. Settings come from the environment or from a .env file.
# Stop everything it started with ./stop_local.sh.
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)

if [[ -f .env ]]; then
  set -a
  # shellcheck disable=SC1091
  source .env
  set +a
fi

export REDIS_HOST=${REDIS_HOST:-localhost}
export REDIS_PORT=${REDIS_PORT:-6379}
export API_HOST=${API_HOST:-127.0.0.1}
export API_PORT=${API_PORT:-8000}
export API_USERNAME=${API_USERNAME:-admin}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/uvr-target}
# The allocator keeps freed pages for 10 s, so CPU separation reuses them (see README).
export MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-10000}
mkdir -p logs run data/redis

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

if [[ -f run/uvr.pid ]] && kill -0 "$(cat run/uvr.pid)" 2>/dev/null; then
  echo "uvr is already running (pid $(cat run/uvr.pid)); ./stop_local.sh first" >&2
  exit 1
fi

# 1. Redis.
./scripts/deps.sh --service
redis_ping() {
  if [[ -n "${REDIS_URL:-}" ]]; then
    redis-cli -u "$REDIS_URL" ping 2>/dev/null
  else
    REDISCLI_AUTH=${REDIS_PASSWORD:-} redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null
  fi
}
if [[ "$(redis_ping)" == "PONG" ]]; then
  say "Redis answers at ${REDIS_URL:-$REDIS_HOST:$REDIS_PORT}"
else
  if [[ -n "${REDIS_URL:-}" || ! "$REDIS_HOST" =~ ^(localhost|127\.0\.0\.1|::1)$ ]]; then
    echo "Redis at ${REDIS_URL:-$REDIS_HOST:$REDIS_PORT} does not answer; start it or fix REDIS_HOST/REDIS_PORT/REDIS_URL" >&2
    exit 1
  fi
  say "starting redis-server on port $REDIS_PORT (AOF on, data in data/redis)"
  args=(--port "$REDIS_PORT" --bind 127.0.0.1 --dir "$root/data/redis" --appendonly yes
    --appendfsync everysec --maxmemory-policy noeviction --daemonize yes
    --pidfile "$root/run/redis.pid" --logfile "$root/logs/redis.log")
  if [[ -n "${REDIS_PASSWORD:-}" ]]; then
    args+=(--requirepass "$REDIS_PASSWORD")
  fi
  redis-server "${args[@]}"
  for _ in $(seq 50); do
    [[ "$(redis_ping)" == "PONG" ]] && break
    sleep 0.1
  done
  [[ "$(redis_ping)" == "PONG" ]] || { echo "redis-server did not start; see logs/redis.log" >&2; exit 1; }
fi

# 2. Credentials: API_PASSWORD from the environment, or a generated one kept in run/.
if [[ -z "${API_PASSWORD:-}" ]]; then
  if [[ ! -s run/api_password ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' > run/api_password)
  fi
  API_PASSWORD=$(cat run/api_password)
  export API_PASSWORD
  generated=1
fi

# Webhook and link signing secrets: from the environment, or generated once into run/.
secret() { # file
  if [[ ! -s "run/$1" ]]; then
    (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '\n' > "run/$1")
  fi
  cat "run/$1"
}
if [[ -z "${WEBHOOK_SECRET:-}" ]]; then
  WEBHOOK_SECRET="whsec_$(secret webhook_secret)"
  export WEBHOOK_SECRET
fi
if [[ -z "${LINK_SIGNING_KEY:-}" ]]; then
  LINK_SIGNING_KEY=$(secret link_signing_key)
  export LINK_SIGNING_KEY
fi
export STAGING_DIR=${STAGING_DIR:-$root/data/staging}
export STORAGE_URL=${STORAGE_URL:-file://$root/data/stems}

# 3. Build.
say "building (release)"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi
cargo build --release --locked --bins
bin="$CARGO_TARGET_DIR/release/uvr"

# 4. Start.
say "starting uvr (logs/uvr.log)"
nohup "$bin" >>logs/uvr.log 2>&1 &
echo $! >run/uvr.pid
url="http://$API_HOST:$API_PORT"
for _ in $(seq 100); do
  if curl -fsS "$url/livez" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$(cat run/uvr.pid)" 2>/dev/null; then
    echo "uvr exited; last log lines:" >&2
    tail -n 20 logs/uvr.log >&2
    rm -f run/uvr.pid
    exit 1
  fi
  sleep 0.1
done

echo
say "uvr is running (pid $(cat run/uvr.pid))"
echo "    API:         $url   (docs: $url/docs, health: $url/health)"
if [[ -n "${generated:-}" ]]; then
  echo "    credentials: $API_USERNAME / $API_PASSWORD   (generated; kept in run/api_password)"
else
  echo "    credentials: $API_USERNAME / (API_PASSWORD from your environment)"
fi
echo "    webhooks:    signed with WEBHOOK_SECRET (run/webhook_secret when generated)"
echo "    stems:       ${STORAGE_URL}"
echo "    logs:        logs/uvr.log"
echo "    queue:       ./check_redis_queue.sh"
echo "    stop:        ./stop_local.sh"
