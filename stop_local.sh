#!/usr/bin/env bash
# Stops exactly what start_local.sh started, by pid: the uvr process (SIGTERM: it drains;
# SIGKILL after SHUTDOWN_WAIT seconds, default 60) and the redis-server it started, if any.
set -euo pipefail
cd "$(dirname "$0")"

stop_pid() { # name pidfile
  local name=$1 file=$2 pid
  [[ -f "$file" ]] || return 0
  pid=$(cat "$file")
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$name (pid $pid) is not running"
    rm -f "$file"
    return 0
  fi
  echo "stopping $name (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq $((${SHUTDOWN_WAIT:-60} * 10))); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
    sleep 0.1
  done
  echo "$name did not stop in time; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

stop_pid uvr run/uvr.pid
# redis-server flushes its AOF on SIGTERM.
stop_pid redis-server run/redis.pid
