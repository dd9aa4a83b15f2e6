#!/usr/bin/env bash
# check_redis_queue.sh - operator view of the uvr Redis priority queue.
#
# Shows, for each stage queue (separate = REDIS_TASK_QUEUE, deliver = REDIS_RESULT_QUEUE):
# size, per-priority breakdown, the next N waiting tasks, in-flight tasks with their
# leases, delayed (retry) and dead-letter counts, and the oldest wait; then the workers
# that sent a heartbeat in the last 60 s.
#
# Reads the same environment as the service:
#   REDIS_URL            if set, used instead of host/port/db/password (redis-cli -u; a
#                        password in it is moved to REDISCLI_AUTH)
#   REDIS_HOST           default localhost
#   REDIS_PORT           default 6379
#   REDIS_DB             default 0
#   REDIS_PASSWORD       default empty; handed to redis-cli via REDISCLI_AUTH, never argv
#   REDIS_TASK_QUEUE     default uvr_tasks
#   REDIS_RESULT_QUEUE   default uvr_results
#   REDIS_KEY_HASH_TAG   optional; every key gets the prefix "{tag}:"
#   REDIS_SENTINELS      optional "host:port,host:port": ask these sentinels for the master
#                        (REDIS_SENTINEL_MASTER, default mymaster; REDIS_SENTINEL_PASSWORD)
#                        and use its address instead of REDIS_HOST/REDIS_PORT or the URL's
#   UVR_REDIS_CONTAINER  if set, run redis-cli inside this docker container
#
# Exit status: 0 ok, 1 usage / missing tools / unexpected reply, 2 Redis unreachable.

set -uo pipefail

PROG=${0##*/}
LIMIT=10
USE_DOCKER=0

usage() {
    cat <<EOF
Usage: $PROG [-n N] [--docker] [-h|--help]

Show the state of the uvr Redis queues (waiting, in-flight, delayed, dead, workers).

Options:
  -n N        list up to N next / in-flight tasks per stage (default 10, 0 = none)
  --docker    run redis-cli inside the docker container \${UVR_REDIS_CONTAINER:-uvr-redis}
              (also used when redis-cli is not installed or UVR_REDIS_CONTAINER is set)
  -h, --help  show this help

Environment: REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_DB, REDIS_PASSWORD,
REDIS_TASK_QUEUE, REDIS_RESULT_QUEUE, REDIS_KEY_HASH_TAG, REDIS_SENTINELS,
REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD, UVR_REDIS_CONTAINER.

Exit status: 0 ok, 1 usage error / missing tool / unexpected reply, 2 Redis unreachable.
EOF
}

die() { # die STATUS MESSAGE
    printf '%s: %s\n' "$PROG" "$2" >&2
    exit "$1"
}

while [ $# -gt 0 ]; do
    case $1 in
        -n)
            [ $# -ge 2 ] || die 1 "option -n needs a number (try --help)"
            LIMIT=$2
            shift 2
            ;;
        -n[0-9]*)
            LIMIT=${1#-n}
            shift
            ;;
        --docker)
            USE_DOCKER=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            die 1 "unknown argument '$1' (try --help)"
            ;;
    esac
done
case $LIMIT in
    '' | *[!0-9]*) die 1 "-n expects a non-negative integer, got '$LIMIT'" ;;
esac
LIMIT=$((10#$LIMIT))

# --- configuration (same variables and defaults as the service) -------------------------
REDIS_URL=${REDIS_URL:-}
REDIS_HOST=${REDIS_HOST:-localhost}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DB=${REDIS_DB:-0}
REDIS_PASSWORD=${REDIS_PASSWORD:-}
TASK_QUEUE=${REDIS_TASK_QUEUE:-uvr_tasks}
RESULT_QUEUE=${REDIS_RESULT_QUEUE:-uvr_results}
HASH_TAG=${REDIS_KEY_HASH_TAG:-}

# Like the service: surrounding blanks and braces of the tag are ignored.
HASH_TAG=${HASH_TAG#"${HASH_TAG%%[![:space:]]*}"}
HASH_TAG=${HASH_TAG%"${HASH_TAG##*[![:space:]]}"}
HASH_TAG=${HASH_TAG#\{}
HASH_TAG=${HASH_TAG%\}}
PREFIX=
[ -n "$HASH_TAG" ] && PREFIX="{$HASH_TAG}:"

for pair in "REDIS_TASK_QUEUE=$TASK_QUEUE" "REDIS_RESULT_QUEUE=$RESULT_QUEUE"; do
    case ${pair#*=} in
        '' | *[!A-Za-z0-9_:.-]*) die 1 "${pair%%=*} '${pair#*=}' is not a valid queue name" ;;
    esac
done

# --- how to reach Redis ---------------------------------------------------------------
CONTAINER=${UVR_REDIS_CONTAINER:-uvr-redis}
if [ "$USE_DOCKER" = 0 ] && { [ -n "${UVR_REDIS_CONTAINER:-}" ] || ! command -v redis-cli >/dev/null 2>&1; }; then
    USE_DOCKER=1
fi
if [ "$USE_DOCKER" = 1 ]; then
    command -v docker >/dev/null 2>&1 ||
        die 1 "neither a usable redis-cli nor docker found (need one of them)"
fi

# Under Sentinel, the master is whichever server the first answering sentinel names.
if [ -n "${REDIS_SENTINELS:-}" ] && [ "$USE_DOCKER" = 0 ]; then
    master_name=${REDIS_SENTINEL_MASTER:-mymaster}
    sentinel_cli() { # the sentinels' own password, if any, through the environment
        if [ -n "${REDIS_SENTINEL_PASSWORD:-}" ]; then
            REDISCLI_AUTH=$REDIS_SENTINEL_PASSWORD redis-cli --no-auth-warning "$@"
        else
            env -u REDISCLI_AUTH redis-cli "$@"
        fi
    }
    found=
    IFS=',' read -r -a sentinels <<<"$REDIS_SENTINELS"
    for node in "${sentinels[@]}"; do
        node=${node//[[:space:]]/}
        [ -n "$node" ] || continue
        s_host=${node%:*} s_port=${node##*:}
        [ "$s_host" = "$node" ] && s_port=26379
        s_host=${s_host#\[} s_host=${s_host%]}
        reply=$(sentinel_cli -h "$s_host" -p "$s_port" \
            SENTINEL get-master-addr-by-name "$master_name" 2>/dev/null) || continue
        m_host=$(printf '%s\n' "$reply" | sed -n 1p)
        m_port=$(printf '%s\n' "$reply" | sed -n 2p)
        case $m_port in '' | *[!0-9]*) continue ;; esac
        found=1
        break
    done
    [ -n "$found" ] || die 2 "no sentinel in REDIS_SENTINELS names a master '$master_name'"
    if [ -n "$REDIS_URL" ]; then
        u_scheme=${REDIS_URL%%://*} u_rest=${REDIS_URL#*://}
        u_auth=${u_rest%%/*}
        u_path=${u_rest#"$u_auth"}
        u_user=
        case $u_auth in *@*) u_user="${u_auth%@*}@" ;; esac
        case $m_host in *:*) m_host="[$m_host]" ;; esac
        REDIS_URL="$u_scheme://$u_user$m_host:$m_port$u_path"
    else
        REDIS_HOST=$m_host REDIS_PORT=$m_port
    fi
fi

# A printable target, never with the password.
if [ -n "$REDIS_URL" ]; then
    rest=${REDIS_URL#*://}
    hostpart=${rest%%/*}
    hostpart=${hostpart%%\?*}
    case $hostpart in *@*) hostpart=${hostpart##*@} ;; esac
    dbpart=
    case $rest in */*) dbpart=${rest#*/} dbpart=${dbpart%%\?*} ;; esac
    case $hostpart in *:*) ;; *) hostpart="$hostpart:6379" ;; esac
    [ -n "$hostpart" ] || hostpart="localhost:6379"
    TARGET="$hostpart/${dbpart:-0}"
else
    case $REDIS_PORT in '' | *[!0-9]*) die 1 "REDIS_PORT '$REDIS_PORT' is not a port number" ;; esac
    case $REDIS_DB in '' | *[!0-9]*) die 1 "REDIS_DB '$REDIS_DB' is not a database number" ;; esac
    host_shown=$REDIS_HOST
    case $host_shown in *:*) host_shown="[$host_shown]" ;; esac
    TARGET="$host_shown:$REDIS_PORT/$REDIS_DB"
fi
VIA=
[ "$USE_DOCKER" = 1 ] && VIA=" (via docker exec $CONTAINER)"

# The password travels in REDISCLI_AUTH (environment), never on the command line. A
# password inside REDIS_URL is taken out of the URL too: it would otherwise show in the
# process list, and redis-cli 7.0 mishandles the common "redis://:password@host" form
# (it sends AUTH with an empty user name).
URL_ARG=$REDIS_URL
URL_USER=
if [ -n "$REDIS_URL" ]; then
    scheme=${REDIS_URL%%://*}
    rest=${REDIS_URL#*://}
    authority=${rest%%/*}
    case $authority in
        *@*)
            userinfo=${authority%@*}
            URL_ARG="$scheme://${rest#"$userinfo"@}"
            case $userinfo in
                *:*) URL_USER=${userinfo%%:*} url_pw=${userinfo#*:} ;;
                *) URL_USER=$userinfo url_pw= ;;
            esac
            # Percent-decode user name and password (backslashes kept literal).
            url_pw=${url_pw//\\/\\\\}
            printf -v url_pw '%b' "${url_pw//%/\\x}"
            URL_USER=${URL_USER//\\/\\\\}
            printf -v URL_USER '%b' "${URL_USER//%/\\x}"
            if [ -n "$url_pw" ]; then
                REDISCLI_AUTH=$url_pw
                export REDISCLI_AUTH
            fi
            unset url_pw
            ;;
    esac
elif [ -n "$REDIS_PASSWORD" ]; then
    REDISCLI_AUTH=$REDIS_PASSWORD
    export REDISCLI_AUTH
fi

if [ "$USE_DOCKER" = 1 ]; then
    CLI=(docker exec -i)
    # "-e NAME" without a value copies the variable from this environment.
    [ -n "${REDISCLI_AUTH:-}" ] && CLI+=(-e REDISCLI_AUTH)
    CLI+=("$CONTAINER" redis-cli)
else
    CLI=(redis-cli)
fi
if [ -n "$REDIS_URL" ]; then
    CLI+=(-u "$URL_ARG")
    [ -n "$URL_USER" ] && CLI+=(--user "$URL_USER")
else
    CLI+=(-h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB")
fi
CLI+=(--raw)

# rcli ARGS...: one command, raw reply on stdout.
rcli() { "${CLI[@]}" "$@" </dev/null; }
# rbatch LINE...: several commands in one round trip (one command per line on stdin).
rbatch() { printf '%s\n' "$@" | "${CLI[@]}"; }
# q STRING: quote an argument for a redis-cli stdin line.
q() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}
is_int() { case $1 in '' | *[!0-9-]*) return 1 ;; esac; }

# --- reachability ----------------------------------------------------------------------
pong=$(rcli PING 2>&1)
if [ "$pong" != PONG ]; then
    why=$(printf '%s\n' "$pong" | grep -v '^[[:space:]]*$' | head -n 1)
    die 2 "Redis at $TARGET$VIA is unreachable: PING did not answer PONG (${why:-no reply})"
fi

mapfile -t t < <(rcli TIME)
{ [ "${#t[@]}" -ge 2 ] && is_int "${t[0]}" && is_int "${t[1]}"; } ||
    die 1 "unexpected reply to TIME from $TARGET: ${t[*]:-none}"
NOW_S=${t[0]}
NOW_US=${t[1]}
NOW_MS=$((NOW_S * 1000 + NOW_US / 1000))
NOW=$(awk -v s="$NOW_S" -v us="$NOW_US" 'BEGIN { printf "%.6f", s + us / 1000000 }')

when=$(date -d "@$NOW_S" '+%Y-%m-%d %H:%M:%S %Z' 2>/dev/null ||
    date -r "$NOW_S" '+%Y-%m-%d %H:%M:%S %Z' 2>/dev/null ||
    echo "epoch $NOW_S")
skew=$(awk -v now="$NOW" -v loc="$(date +%s)" 'BEGIN { printf "%+d", loc - now }')

# Shared awk helpers: human durations.
AWK_LIB='
function dur(x,   neg, s) {
    if (x == "" || x == "-") return "-"
    neg = (x < 0); if (neg) x = -x
    if (x < 60)         s = sprintf("%.1fs", x)
    else if (x < 3600)  s = sprintf("%dm%02ds", int(x / 60), int(x) % 60)
    else if (x < 86400) s = sprintf("%dh%02dm", int(x / 3600), int(x / 60) % 60)
    else                s = sprintf("%dd%02dh", int(x / 86400), int(x / 3600) % 24)
    return (neg ? "-" : "") s
}
function orr(v, d) { return (v == "" ? d : v) }
'

printf 'uvr queue check  redis=%s%s  key prefix=%s  server time=%s (%s, local clock %ss)\n' \
    "$TARGET" "$VIA" "${PREFIX:-(none)}" "$when" "$NOW" "$skew"

# --- one stage -------------------------------------------------------------------------
# show_stage LABEL KEY
show_stage() {
    local label=$1 key=$2
    local inflight="$key:inflight" delayed="$key:delayed" dead="$key:dead"
    local -a bounds cmds counts rows recs
    local p m i n id score

    printf '\n== %s: %s ==\n' "$label" "$key"

    # Score bands: priority p (m = 6 - p) covers [(m - 0.5) * now, (m + 0.5) * now).
    mapfile -t bounds < <(awk -v now="$NOW" 'BEGIN {
        for (p = 5; p >= 1; p--) { m = 6 - p; printf "%.6f %.6f\n", (m - 0.5) * now, (m + 0.5) * now } }')

    cmds=("ZCARD $(q "$key")")
    for i in 0 1 2 3 4; do
        cmds+=("ZCOUNT $(q "$key") ${bounds[i]% *} (${bounds[i]#* }")
    done
    cmds+=("ZCARD $(q "$inflight")" "ZCARD $(q "$delayed")" "ZCARD $(q "$dead")")
    mapfile -t counts < <(rbatch "${cmds[@]}")
    for i in 0 1 2 3 4 5 6 7 8; do
        if ! is_int "${counts[i]:-}"; then
            printf '  cannot read counts of %s: %s\n' "$key" "${counts[i]:-no reply}"
            return 1
        fi
    done
    local size=${counts[0]} n_inflight=${counts[6]} n_delayed=${counts[7]} n_dead=${counts[8]}

    # Per priority: count and the oldest waiting task (lowest score within the band).
    local band_rows=""
    for i in 0 1 2 3 4; do
        p=$((5 - i))
        m=$((6 - p))
        id="" score=""
        if [ "${counts[i + 1]}" -gt 0 ]; then
            mapfile -t rows < <(rcli ZRANGEBYSCORE "$key" "${bounds[i]% *}" "(${bounds[i]#* }" WITHSCORES LIMIT 0 1)
            id=${rows[0]:-} score=${rows[1]:-}
        fi
        band_rows+="$p $m ${counts[i + 1]} ${score:--} ${id:--}"$'\n'
    done

    printf '%s' "$band_rows" | awk -v now="$NOW" -v size="$size" "$AWK_LIB"'
        { p[NR] = $1; m[NR] = $2; c[NR] = $3; sc[NR] = $4; id[NR] = $5; tot += $3 }
        END {
            printf "  waiting        %d\n", size
            printf "  %-10s %8s  %-12s  %s\n", "priority", "waiting", "oldest wait", "oldest task"
            best = -1
            for (i = 1; i <= NR; i++) {
                w = "-"
                if (c[i] > 0 && sc[i] != "-") {
                    w = now - sc[i] / m[i]
                    if (w > best) { best = w; bid = id[i]; bp = p[i] }
                }
                line = sprintf("  %-10s %8d  %-12s  %s", p[i] (p[i] == 5 ? " (top)" : ""), c[i], \
                    (w == "-" ? "-" : dur(w)), (c[i] > 0 ? id[i] : ""))
                sub(/ +$/, "", line); print line
            }
            if (size - tot != 0)
                printf "  %-10s %8d  (scores outside every band: waited over now/12, or bad scores)\n", "other", size - tot
            if (best >= 0) printf "  oldest wait    %s (priority %s, %s)\n", dur(best), bp, bid
            else           printf "  oldest wait    -\n"
        }'

    # Next N waiting tasks, in claim order.
    if [ "$LIMIT" -gt 0 ] && [ "$size" -gt 0 ]; then
        mapfile -t rows < <(rcli ZRANGE "$key" 0 $((LIMIT - 1)) WITHSCORES)
        [ "${#rows[@]}" -eq 1 ] && [ -z "${rows[0]}" ] && rows=()
        n=$((${#rows[@]} / 2))
        printf '  next %d of %d:\n' "$n" "$size"
        if [ "$n" -gt 0 ]; then
            cmds=()
            for ((i = 0; i < n; i++)); do
                cmds+=("HMGET $(q "${PREFIX}${TASK_QUEUE}:task:${rows[2 * i]}") priority status attempts max_attempts created_at")
            done
            mapfile -t recs < <(rbatch "${cmds[@]}")
            [ "${#recs[@]}" -eq $((5 * n)) ] || recs=()
            for ((i = 0; i < n; i++)); do
                printf '%s\t%s' "${rows[2 * i]}" "${rows[2 * i + 1]}"
                if [ "${#recs[@]}" -gt 0 ]; then
                    printf '\t%s' "${recs[@]:5*i:5}"
                else
                    printf '\t\t\t\t\t'
                fi
                printf '\n'
            done | awk -F '\t' -v now="$NOW" -v nowms="$NOW_MS" "$AWK_LIB"'
                BEGIN { printf "    %3s  %-36s  %4s  %-20s  %-10s  %-10s  %-8s  %s\n", "#", "id", "prio", "score", "waiting", "age", "attempts", "status" }
                {
                    prio = $3; m = 6 - prio
                    band = int($2 / now + 0.5); bp = 6 - band
                    if (prio == "") { prio = (band >= 1 && band <= 5) ? bp "?" : "?"; m = band }
                    wait = (m >= 1 && m <= 5) ? dur(now - $2 / m) : "-"
                    age = ($7 == "") ? "-" : dur((nowms - $7) / 1000)
                    att = ($5 == "") ? "-" : $5 "/" orr($6, "?")
                    st = ($4 == "") ? "(no record)" : $4
                    if ($3 != "" && band != m) st = st " (score band says " bp ")"
                    printf "    %3d  %-36s  %4s  %-20.6f  %-10s  %-10s  %-8s  %s\n", NR, $1, prio, $2, wait, age, att, st
                }'
        fi
    fi

    # In-flight tasks, soonest lease expiry first.
    printf '  in flight      %d\n' "$n_inflight"
    if [ "$LIMIT" -gt 0 ] && [ "$n_inflight" -gt 0 ]; then
        mapfile -t rows < <(rcli ZRANGE "$inflight" 0 $((LIMIT - 1)) WITHSCORES)
        [ "${#rows[@]}" -eq 1 ] && [ -z "${rows[0]}" ] && rows=()
        n=$((${#rows[@]} / 2))
        if [ "$n" -gt 0 ]; then
            cmds=()
            for ((i = 0; i < n; i++)); do
                cmds+=("HMGET $(q "${PREFIX}${TASK_QUEUE}:task:${rows[2 * i]}") worker started_at attempts max_attempts progress priority")
            done
            mapfile -t recs < <(rbatch "${cmds[@]}")
            [ "${#recs[@]}" -eq $((6 * n)) ] || recs=()
            for ((i = 0; i < n; i++)); do
                printf '%s\t%s' "${rows[2 * i]}" "${rows[2 * i + 1]}"
                if [ "${#recs[@]}" -gt 0 ]; then
                    printf '\t%s' "${recs[@]:6*i:6}"
                else
                    printf '\t\t\t\t\t\t'
                fi
                printf '\n'
            done | awk -F '\t' -v nowms="$NOW_MS" -v total="$n_inflight" "$AWK_LIB"'
                BEGIN { printf "    %-36s  %4s  %-24s  %-8s  %5s  %-10s  %s\n", "id", "prio", "worker", "attempts", "prog", "lease age", "lease left" }
                {
                    age = ($4 == "") ? "-" : dur((nowms - $4) / 1000)
                    left = ($2 - nowms) / 1000
                    lt = dur(left) (left < 0 ? " EXPIRED" : "")
                    att = ($5 == "") ? "-" : $5 "/" orr($6, "?")
                    prog = ($7 == "") ? "-" : $7 "%"
                    if ($3 $4 $5 $6 $7 $8 == "") $3 = "(no record)"
                    printf "    %-36s  %4s  %-24s  %-8s  %5s  %-10s  %s\n", $1, orr($8, "-"), orr($3, "-"), att, prog, age, lt
                }
                END { if (total > NR) printf "    ... and %d more\n", total - NR }'
        fi
    fi

    # Delayed (retry) and dead letters.
    local extra=""
    if [ "$n_delayed" -gt 0 ]; then
        mapfile -t rows < <(rcli ZRANGE "$delayed" 0 0 WITHSCORES)
        [ -n "${rows[1]:-}" ] && extra=$(awk -v s="${rows[1]}" -v nowms="$NOW_MS" "$AWK_LIB"'
            BEGIN { d = (s - nowms) / 1000; printf "  (next ready %s)", d <= 0 ? "now, overdue by " dur(-d) : "in " dur(d) }')
    fi
    printf '  delayed        %d%s\n' "$n_delayed" "$extra"
    extra=""
    if [ "$n_dead" -gt 0 ]; then
        mapfile -t rows < <(rcli ZRANGE "$dead" -1 -1 WITHSCORES)
        [ -n "${rows[1]:-}" ] && extra=$(awk -v s="${rows[1]}" -v nowms="$NOW_MS" -v id="${rows[0]}" "$AWK_LIB"'
            BEGIN { printf "  (latest %s ago: %s)", dur((nowms - s) / 1000), id }')
    fi
    printf '  dead letters   %d%s\n' "$n_dead" "$extra"
    return 0
}

status=0
show_stage separate "${PREFIX}${TASK_QUEUE}" || status=1
show_stage deliver "${PREFIX}${RESULT_QUEUE}" || status=1

# --- workers ---------------------------------------------------------------------------
WORKERS="${PREFIX}${TASK_QUEUE}:workers"
printf '\n== workers: %s ==\n' "$WORKERS"
total_workers=$(rcli ZCARD "$WORKERS")
if ! is_int "$total_workers"; then
    printf '  cannot read workers: %s\n' "$total_workers"
    status=1
else
    mapfile -t rows < <(rcli ZREVRANGEBYSCORE "$WORKERS" +inf $((NOW_MS - 60000)) WITHSCORES)
    [ "${#rows[@]}" -eq 1 ] && [ -z "${rows[0]}" ] && rows=()
    n=$((${#rows[@]} / 2))
    printf '  live (heartbeat in the last 60s) %d of %d registered\n' "$n" "$total_workers"
    if [ "$n" -gt 0 ]; then
        for ((i = 0; i < n; i++)); do
            printf '%s\t%s\n' "${rows[2 * i]}" "${rows[2 * i + 1]}"
        done | awk -F '\t' -v nowms="$NOW_MS" "$AWK_LIB"'
            BEGIN { printf "    %-40s  %s\n", "worker", "last heartbeat" }
            { printf "    %-40s  %s ago\n", $1, dur((nowms - $2) / 1000) }'
    fi
fi

exit "$status"
