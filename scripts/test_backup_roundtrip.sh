#!/usr/bin/env bash
# test_backup_roundtrip.sh - round trip of scripts/backup_redis.sh and scripts/restore_redis.sh
# against throwaway redis-server processes (never port 6379): free ports, a temporary
# directory, everything it started stopped again by pid on exit.
#
#   1. server A (AOF on, a password): uvr-like data (task ZSets with priority scores, task
#      hashes, a key with a TTL, a key in db 1); backup; a write after the backup.
#   2. restore without --force: refused (exit 2), nothing changed.
#   3. FLUSHALL, restore --force while A runs (the script shuts it down), start, compare.
#   4. FLUSHALL + SHUTDOWN, restore --force --dir into the stopped server, start, compare.
#   5. server B without AOF: backup, restore into a fresh directory for a server with
#      appendonly yes (the AOF is rebuilt from the RDB), start with AOF, compare.
#   6. --keep 2 leaves the two newest backups.
#
# Needs redis-server and redis-cli (scripts/deps.sh --service installs them). Exit 0 = pass.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    ./scripts/deps.sh --service
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uvr-backup-test.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

free_port() {
    local p
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (: >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    fail "no free port found"
}

# start_redis NAME PORT DIR APPENDONLY [PASSWORD]: a daemonized redis-server; its pid is
# remembered for the cleanup.
start_redis() {
    local name=$1 port=$2 dir=$3 aof=$4 pw=${5:-}
    local -a args=(--port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly "$aof"
        --appendfsync everysec --maxmemory-policy noeviction --daemonize yes
        --pidfile "$tmp/$name.pid" --logfile "$tmp/$name.log")
    [[ -n "$pw" ]] && args+=(--requirepass "$pw")
    rm -f "$tmp/$name.pid"
    redis-server "${args[@]}"
    for _ in $(seq 100); do
        if [[ -s "$tmp/$name.pid" ]] && [[ "$(REDISCLI_AUTH=$pw rcli_port "$port" PING 2>/dev/null)" == PONG ]]; then
            pids+=("$(cat "$tmp/$name.pid")")
            until REDISCLI_AUTH=$pw rcli_port "$port" INFO persistence | tr -d '\r' | grep -qx 'loading:0'; do
                sleep 0.1
            done
            return
        fi
        sleep 0.1
    done
    tail -n 20 "$tmp/$name.log" >&2 || true
    fail "redis-server $name did not start on port $port"
}
# rcli_port PORT ARGS...: redis-cli on a port; the password comes from REDISCLI_AUTH.
rcli_port() {
    local port=$1
    shift
    if [[ -n "${REDISCLI_AUTH:-}" ]]; then
        redis-cli -p "$port" --no-auth-warning --raw "$@"
    else
        (unset REDISCLI_AUTH; redis-cli -p "$port" --raw "$@")
    fi
}
stop_redis() { # stop_redis NAME PORT [PASSWORD]: SHUTDOWN (saving nothing) and wait for the pid
    local pid
    pid=$(cat "$tmp/$1.pid")
    REDISCLI_AUTH=${3:-} rcli_port "$2" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    fail "redis-server $1 did not stop"
}

# snapshot PORT [PASSWORD]: every key of db 0 and 1 with its type, value and whether it
# has a TTL, in a stable order (a few redis-cli sessions, not one per key).
snapshot() {
    local port=$1 pw=${2:-} db key i
    local -a keys meta cmds
    for db in 0 1; do
        mapfile -t keys < <(REDISCLI_AUTH=$pw rcli_port "$port" -n "$db" --scan | sort)
        ((${#keys[@]} > 0)) || continue
        cmds=()
        for key in "${keys[@]}"; do cmds+=("TYPE \"$key\"" "TTL \"$key\""); done
        mapfile -t meta < <(printf '%s\n' "${cmds[@]}" | REDISCLI_AUTH=$pw rcli_port "$port" -n "$db")
        cmds=()
        for i in "${!keys[@]}"; do
            key=${keys[i]}
            cmds+=("ECHO \"@@ db$db ${meta[2 * i]} $key ttl=$( ((meta[2 * i + 1] > 0)) && echo yes || echo no)\"")
            case ${meta[2 * i]} in
                zset) cmds+=("ZRANGE \"$key\" 0 -1 WITHSCORES") ;;
                hash) cmds+=("HGETALL \"$key\"") ;;
                string) cmds+=("GET \"$key\"") ;;
                list) cmds+=("LRANGE \"$key\" 0 -1") ;;
                set) cmds+=("SMEMBERS \"$key\"") ;;
            esac
        done
        # Hash fields and set members in sorted order, whatever the encoding.
        printf '%s\n' "${cmds[@]}" | REDISCLI_AUTH=$pw rcli_port "$port" -n "$db" | awk '
            function flush() {
                if (n == 0) return
                if (kind == "hash") { for (j = 1; j < n; j += 2) print v[j] "\t" v[j + 1] | "sort"; close("sort") }
                else if (kind == "set") { for (j = 1; j <= n; j++) print v[j] | "sort"; close("sort") }
                else for (j = 1; j <= n; j++) print v[j]
                n = 0
            }
            /^@@ / { flush(); kind = $3; print substr($0, 4); next }
            { v[++n] = $0 }
            END { flush() }'
    done
}

# write_data PORT PASSWORD: uvr-like keys.
write_data() {
    local port=$1 pw=$2 now i p id
    now=$(REDISCLI_AUTH=$pw rcli_port "$port" TIME | head -n 1)
    {
        for i in $(seq 1 100); do
            p=$((i % 5 + 1))
            id=$(printf '0190aaaa-0000-7000-8000-%012d' "$i")
            # The seed's score: timestamp * (6 - priority), with sub-second steps.
            printf 'ZADD uvr_tasks %s.%06d %s\n' "$((now * (6 - p)))" "$i" "$id"
            printf 'HSET uvr_tasks:task:%s status queued priority %s attempts 0 audio "https://example.com/%s.wav" hook_url "https://example.com/hook"\n' "$id" "$p" "$i"
        done
        echo 'ZADD uvr_results 1700000000.5 done-1 1700000001.25 done-2'
        echo 'ZADD uvr_tasks:inflight 1700000100000 0190aaaa-0000-7000-8000-000000000999'
        echo 'SET uvr_tasks:idem:demo 0190aaaa-0000-7000-8000-000000000001 EX 86400'
        echo 'SELECT 1'
        echo 'HSET other:db1 field "value with spaces"'
    } | REDISCLI_AUTH=$pw rcli_port "$port" >/dev/null
}

backup() { # backup PORT PASSWORD [ARGS...]: prints the tarball path
    local port=$1 pw=$2
    shift 2
    REDIS_HOST=127.0.0.1 REDIS_PORT=$port REDIS_PASSWORD=$pw ./scripts/backup_redis.sh -o "$tmp/backups" "$@" 2>>"$tmp/backup.log"
}
restore() { # restore PORT PASSWORD ARGS...
    local port=$1 pw=$2
    shift 2
    REDIS_HOST=127.0.0.1 REDIS_PORT=$port REDIS_PASSWORD=$pw ./scripts/restore_redis.sh "$@"
}

pw=test-pass-$RANDOM
port_a=$(free_port)
[[ "$port_a" != 6379 ]] || port_a=$(free_port)
mkdir -p "$tmp/a" "$tmp/backups"

step "1. server A on port $port_a (AOF on, password): data, backup"
start_redis a "$port_a" "$tmp/a" yes "$pw"
write_data "$port_a" "$pw"
snapshot "$port_a" "$pw" >"$tmp/expected"
nkeys=$(grep -c '^db' "$tmp/expected")
((nkeys == 105)) || fail "expected 105 keys written, found $nkeys"
tarball=$(backup "$port_a" "$pw")
[[ -f "$tarball" ]] || fail "backup_redis.sh printed no tarball"
tar -tzf "$tarball" | grep -q 'appendonlydir/appendonly.aof.manifest' || fail "the backup has no AOF manifest"
tar -tzf "$tarball" | grep -q '^./dump.rdb$' || fail "the backup has no dump.rdb"
echo "backup: $tarball ($nkeys keys)"
REDISCLI_AUTH=$pw rcli_port "$port_a" SET after_backup yes >/dev/null

step "2. restore without --force is refused"
rc=0
restore "$port_a" "$pw" "$tarball" 2>"$tmp/refused.log" || rc=$?
((rc == 2)) || { cat "$tmp/refused.log" >&2; fail "restore without --force exited $rc, expected 2"; }
[[ "$(REDISCLI_AUTH=$pw rcli_port "$port_a" EXISTS after_backup)" == 1 ]] || fail "a refused restore changed the data"
echo "refused, data untouched"

step "3. FLUSHALL, restore --force while A runs, start, compare"
REDISCLI_AUTH=$pw rcli_port "$port_a" FLUSHALL >/dev/null
restore "$port_a" "$pw" --force "$tarball" >"$tmp/restore1.out" 2>"$tmp/restore1.log" ||
    { cat "$tmp/restore1.log" >&2; fail "restore (server running) failed"; }
[[ "$(REDISCLI_AUTH=$pw rcli_port "$port_a" PING 2>/dev/null)" != PONG ]] || fail "server A still runs after the restore"
grep -q 'redis-server --port' "$tmp/restore1.out" || fail "restore did not print the start command"
ls -d "$tmp"/a/pre-restore-* >/dev/null 2>&1 || fail "no pre-restore copy of the previous files"
start_redis a "$port_a" "$tmp/a" yes "$pw"
snapshot "$port_a" "$pw" >"$tmp/got1"
diff -u "$tmp/expected" "$tmp/got1" || fail "data after restore (running server) differs from the backup"
echo "restored: $(grep -c '^db' "$tmp/got1") keys, identical; the write after the backup is gone"

step "4. FLUSHALL + SHUTDOWN, restore --force --dir into the stopped server, start, compare"
REDISCLI_AUTH=$pw rcli_port "$port_a" FLUSHALL >/dev/null
REDISCLI_AUTH=$pw rcli_port "$port_a" SET after_backup again >/dev/null
stop_redis a "$port_a" "$pw"
rc=0
restore "$port_a" "$pw" --force "$tarball" 2>"$tmp/nodir.log" || rc=$?
((rc == 3)) || { cat "$tmp/nodir.log" >&2; fail "restore of a stopped server without --dir exited $rc, expected 3"; }
restore "$port_a" "$pw" --force --dir "$tmp/a" "$tarball" >/dev/null 2>"$tmp/restore2.log" ||
    { cat "$tmp/restore2.log" >&2; fail "restore (server stopped) failed"; }
start_redis a "$port_a" "$tmp/a" yes "$pw"
snapshot "$port_a" "$pw" >"$tmp/got2"
diff -u "$tmp/expected" "$tmp/got2" || fail "data after restore (stopped server) differs from the backup"
echo "restored: identical"
stop_redis a "$port_a" "$pw"

step "5. server B without AOF: backup, restore for a server with appendonly yes"
port_b=$(free_port)
mkdir -p "$tmp/b" "$tmp/c"
start_redis b "$port_b" "$tmp/b" no ""
write_data "$port_b" ""
snapshot "$port_b" "" >"$tmp/expected_b"
tarball_b=$(backup "$port_b" "")
tar -tzf "$tarball_b" | grep -q appendonly && fail "a backup of a server without AOF holds an AOF"
stop_redis b "$port_b"
restore "$port_b" "" --force --dir "$tmp/c" --appendonly yes "$tarball_b" >/dev/null 2>"$tmp/restore3.log" ||
    { cat "$tmp/restore3.log" >&2; fail "restore with AOF rebuild failed"; }
[[ -f "$tmp/c/appendonlydir/appendonly.aof.manifest" ]] || fail "the AOF was not rebuilt from the RDB"
start_redis c "$port_b" "$tmp/c" yes ""
snapshot "$port_b" "" >"$tmp/got3"
diff -u "$tmp/expected_b" "$tmp/got3" || fail "data after restore with AOF rebuild differs"
echo "restored with a rebuilt AOF: identical"
stop_redis c "$port_b"

step "6. --keep 2"
start_redis a "$port_a" "$tmp/a" yes "$pw"
backup "$port_a" "$pw" --keep 2 >/dev/null
backup "$port_a" "$pw" --keep 2 >/dev/null
n=$(find "$tmp/backups" -name 'redis-backup-*.tar.gz' | wc -l)
((n == 2)) || fail "--keep 2 left $n backups"
echo "2 backups kept"

printf '\nPASS: backup/restore round trip\n'
