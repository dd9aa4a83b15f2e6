#!/usr/bin/env bash
# backup_redis.sh - consistent backup of the Redis that holds the uvr queues.
#
# 1. waits for any snapshot or AOF rewrite already running;
# 2. BGSAVE, and waits until it has finished (rdb_bgsave_in_progress:0 and a new LASTSAVE);
# 3. when AOF is on: BGREWRITEAOF, and waits until it has finished, so the AOF is compact;
# 4. copies dump.rdb and the AOF (appendonlydir/ on Redis 7, appendonly.aof before) from the
#    server's `CONFIG GET dir`, checks that the AOF manifest and its files match, checks the
#    RDB with redis-check-rdb when it is installed;
# 5. writes <out>/redis-backup-<UTC time>.tar.gz (with backup-info.txt) and, with --keep N,
#    deletes all but the newest N backups there.
# Restore with scripts/restore_redis.sh.
#
# Reaches Redis like check_redis_queue.sh: REDIS_URL, or REDIS_HOST / REDIS_PORT /
# REDIS_PASSWORD (handed to redis-cli in REDISCLI_AUTH, never on the command line); with
# --docker, redis-cli runs inside the container ${UVR_REDIS_CONTAINER:-uvr-redis} and the
# files are taken out with `docker cp`. Without --docker the Redis data directory must be on
# this machine and readable (run as the redis user or root for a system Redis).
#
# Exit status: 0 ok, 1 usage or failure, 2 Redis unreachable.

set -euo pipefail

PROG=${0##*/}
USE_DOCKER=0
OUT_DIR=${BACKUP_DIR:-data/backups}
KEEP=0
TIMEOUT=${BACKUP_TIMEOUT:-600}
CONTAINER=${UVR_REDIS_CONTAINER:-uvr-redis}

usage() {
    cat <<EOF
Usage: $PROG [--docker] [-o DIR] [--keep N] [--container NAME] [-h|--help]

Back up the Redis of uvr (RDB snapshot + AOF) into DIR/redis-backup-<UTC time>.tar.gz.

Options:
  --docker          Redis runs in a docker container (default \${UVR_REDIS_CONTAINER:-uvr-redis})
  --container NAME  the container to use with --docker
  -o, --out DIR     where to write the backup (default \${BACKUP_DIR:-data/backups})
  --keep N          afterwards keep only the newest N backups in DIR (default: keep all)
  -h, --help        show this help

Environment: REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD (as the service),
UVR_REDIS_CONTAINER, BACKUP_DIR, BACKUP_TIMEOUT (seconds to wait for BGSAVE/BGREWRITEAOF,
default 600).
EOF
}

die() { # die STATUS MESSAGE
    printf '%s: %s\n' "$PROG" "$2" >&2
    exit "$1"
}
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

while (($# > 0)); do
    case $1 in
        --docker) USE_DOCKER=1 ;;
        --container)
            (($# >= 2)) || die 1 "--container needs a name"
            CONTAINER=$2 USE_DOCKER=1
            shift
            ;;
        -o | --out)
            (($# >= 2)) || die 1 "$1 needs a directory"
            OUT_DIR=$2
            shift
            ;;
        --keep)
            (($# >= 2)) || die 1 "--keep needs a number"
            KEEP=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die 1 "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
[[ "$KEEP" =~ ^[0-9]+$ ]] || die 1 "--keep expects a non-negative integer, got '$KEEP'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die 1 "BACKUP_TIMEOUT expects seconds, got '$TIMEOUT'"

# --- how to reach Redis (the same rules as check_redis_queue.sh) --------------------------
REDIS_URL=${REDIS_URL:-}
REDIS_HOST=${REDIS_HOST:-localhost}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_PASSWORD=${REDIS_PASSWORD:-}
URL_ARG=$REDIS_URL
URL_USER=
if [[ -n "$REDIS_URL" ]]; then
    scheme=${REDIS_URL%%://*}
    rest=${REDIS_URL#*://}
    authority=${rest%%/*}
    if [[ "$authority" == *@* ]]; then
        userinfo=${authority%@*}
        URL_ARG="$scheme://${rest#"$userinfo"@}"
        url_pw=
        if [[ "$userinfo" == *:* ]]; then
            URL_USER=${userinfo%%:*} url_pw=${userinfo#*:}
        else
            URL_USER=$userinfo
        fi
        url_pw=${url_pw//\\/\\\\}
        printf -v url_pw '%b' "${url_pw//%/\\x}"
        URL_USER=${URL_USER//\\/\\\\}
        printf -v URL_USER '%b' "${URL_USER//%/\\x}"
        if [[ -n "$url_pw" ]]; then
            REDISCLI_AUTH=$url_pw
            export REDISCLI_AUTH
        fi
        unset url_pw
    fi
elif [[ -n "$REDIS_PASSWORD" ]]; then
    REDISCLI_AUTH=$REDIS_PASSWORD
    export REDISCLI_AUTH
fi

if ((USE_DOCKER)); then
    command -v docker >/dev/null 2>&1 || die 1 "--docker given but docker is not installed"
    CLI=(docker exec -i)
    [[ -n "${REDISCLI_AUTH:-}" ]] && CLI+=(-e REDISCLI_AUTH)
    # Inside the container Redis listens on its default port.
    CLI+=("$CONTAINER" redis-cli -h 127.0.0.1 -p 6379)
    TARGET="container $CONTAINER"
else
    command -v redis-cli >/dev/null 2>&1 || die 1 "redis-cli is not installed (apt-get install redis-tools), or use --docker"
    CLI=(redis-cli)
    if [[ -n "$REDIS_URL" ]]; then
        CLI+=(-u "$URL_ARG")
        [[ -n "$URL_USER" ]] && CLI+=(--user "$URL_USER")
        TARGET=${URL_ARG#*://}
    else
        CLI+=(-h "$REDIS_HOST" -p "$REDIS_PORT")
        TARGET="$REDIS_HOST:$REDIS_PORT"
    fi
fi
rcli() { "${CLI[@]}" --raw "$@" </dev/null; }

# info_field FIELD: one field of INFO persistence (empty when the server has no such field).
info_field() {
    { rcli INFO persistence || true; } | tr -d '\r' | sed -n "s/^$1://p"
}
config_get() { # config_get NAME: the value of one CONFIG GET parameter
    local -a kv
    mapfile -t kv < <(rcli CONFIG GET "$1" 2>/dev/null | tr -d '\r')
    if [[ "${kv[0]:-}" == "$1" ]]; then printf '%s' "${kv[1]:-}"; fi
}

pong=$(rcli PING 2>&1 || true)
[[ "$pong" == PONG ]] || die 2 "Redis at $TARGET is unreachable: ${pong:-no reply}"

dir=$(config_get dir)
[[ -n "$dir" ]] || die 1 "CONFIG GET dir failed on $TARGET (is CONFIG renamed or forbidden by ACL?)"
dbfile=$(config_get dbfilename)
dbfile=${dbfile:-dump.rdb}
appendonly=$(config_get appendonly)
aofname=$(config_get appendfilename)
aofname=${aofname:-appendonly.aof}
aofdir=$(config_get appenddirname) # Redis 7+: the AOF is a directory with a manifest
version=$(rcli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')
say "Redis $version at $TARGET: dir=$dir dbfilename=$dbfile appendonly=$appendonly${aofdir:+ appenddirname=$aofdir}"

# --- 1-3. snapshot and AOF rewrite --------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
wait_until_idle() { # no BGSAVE and no AOF rewrite running or scheduled
    while [[ "$(info_field rdb_bgsave_in_progress)" != 0 || "$(info_field aof_rewrite_in_progress)" != 0 ||
        "$(info_field aof_rewrite_scheduled)" != 0 ]]; do
        ((SECONDS < deadline)) || die 1 "timed out after ${TIMEOUT}s waiting for a running BGSAVE/BGREWRITEAOF"
        sleep 0.5
    done
}

wait_until_idle
saves_before=$(info_field rdb_saves)
last_before=$(rcli LASTSAVE)
# LASTSAVE counts in seconds: make sure our save ends in a later second than the last one.
now=$(rcli TIME | head -n 1)
if [[ "$now" == "$last_before" ]]; then sleep 1; fi
reply=$(rcli BGSAVE SCHEDULE)
case $reply in
    *started* | *scheduled*) ;;
    *) die 1 "BGSAVE failed: $reply" ;;
esac
say "BGSAVE: $reply"
while :; do
    if [[ "$(info_field rdb_bgsave_in_progress)" == 0 ]]; then
        saves=$(info_field rdb_saves)
        if [[ -n "$saves_before" && -n "$saves" ]]; then
            ((saves > saves_before)) && break
        elif (($(rcli LASTSAVE) > last_before)); then
            break
        fi
    fi
    ((SECONDS < deadline)) || die 1 "timed out after ${TIMEOUT}s waiting for BGSAVE"
    sleep 0.2
done
[[ "$(info_field rdb_last_bgsave_status)" == ok ]] ||
    die 1 "BGSAVE failed (rdb_last_bgsave_status is not ok; see the Redis log)"
lastsave=$(rcli LASTSAVE)
say "snapshot written at $(date -u -d "@$lastsave" '+%Y-%m-%dT%H:%M:%SZ' 2>/dev/null || echo "epoch $lastsave")"

if [[ "$appendonly" == yes ]]; then
    reply=$(rcli BGREWRITEAOF)
    case $reply in
        *started* | *scheduled* | *"already in progress"*) ;;
        *) die 1 "BGREWRITEAOF failed: $reply" ;;
    esac
    say "BGREWRITEAOF: $reply"
    wait_until_idle
    [[ "$(info_field aof_last_bgrewrite_status)" == ok ]] ||
        die 1 "BGREWRITEAOF failed (aof_last_bgrewrite_status is not ok; see the Redis log)"
fi

# --- 4. copy the files ------------------------------------------------------------------
umask 077
stage=$(mktemp -d "${TMPDIR:-/tmp}/uvr-redis-backup.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mtime() { stat -c %Y "$1" 2>/dev/null || stat -f %m "$1"; }
# fetch NAME: copy DIR/NAME (file or directory) into the staging directory.
fetch() {
    if ((USE_DOCKER)); then
        docker cp "$CONTAINER:$dir/$1" "$stage/$1" >/dev/null
    else
        cp -pR "$dir/$1" "$stage/$1"
    fi
}
# live_text PATH: a small file of the live data directory (the AOF manifest).
live_text() {
    if ((USE_DOCKER)); then
        docker exec "$CONTAINER" cat "$dir/$1"
    else
        cat "$dir/$1"
    fi
}

if ((!USE_DOCKER)); then
    [[ -d "$dir" ]] || die 1 "the Redis data directory $dir is not on this machine: run $PROG on the Redis host, or use --docker"
    [[ -r "$dir/$dbfile" ]] || die 1 "cannot read $dir/$dbfile (run as the redis user or root)"
    # The snapshot we asked for must be the file we see (not another server's directory).
    (($(mtime "$dir/$dbfile") + 2 >= lastsave)) ||
        die 1 "$dir/$dbfile is older than the snapshot just taken: is $TARGET another machine's Redis? Run $PROG there."
fi

fetch "$dbfile"
aof_kind=none
if [[ "$appendonly" == yes ]]; then
    if [[ -n "$aofdir" ]]; then
        aof_kind=dir
        manifest="$aofname.manifest"
        ok=0
        for _ in 1 2 3; do
            rm -rf "${stage:?}/$aofdir"
            before=$(live_text "$aofdir/$manifest")
            fetch "$aofdir"
            after=$(live_text "$aofdir/$manifest")
            staged=$(cat "$stage/$aofdir/$manifest" 2>/dev/null || true)
            # Every file named by the manifest must have come along, and no rewrite may have
            # replaced the manifest during the copy.
            missing=0
            while read -r f; do
                [[ -f "$stage/$aofdir/$f" ]] || missing=1
            done < <(awk '{ for (i = 1; i < NF; i++) if ($i == "file") print $(i + 1) }' <<<"$staged")
            if [[ -n "$staged" && "$before" == "$after" && "$staged" == "$after" && $missing == 0 ]]; then
                ok=1
                break
            fi
            say "the AOF changed during the copy (a rewrite?); copying it again"
            wait_until_idle
        done
        ((ok)) || die 1 "could not get a consistent copy of $dir/$aofdir"
    else
        aof_kind="file"
        fetch "$aofname"
    fi
fi

if command -v redis-check-rdb >/dev/null 2>&1; then
    check=$(redis-check-rdb "$stage/$dbfile" 2>&1) ||
        die 1 "redis-check-rdb rejects the copied $dbfile: $(tail -n 3 <<<"$check")"
fi

keyspace=$(rcli INFO keyspace | tr -d '\r' | grep '^db' || true)
{
    echo "# uvr Redis backup (scripts/backup_redis.sh); read by scripts/restore_redis.sh"
    echo "created_at=$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "source=$TARGET"
    echo "redis_version=$version"
    echo "lastsave=$lastsave"
    echo "dir=$dir"
    echo "dbfilename=$dbfile"
    echo "appendonly=$appendonly"
    echo "aof=$aof_kind"
    echo "appendfilename=$aofname"
    echo "appenddirname=$aofdir"
    while read -r line; do
        [[ -n "$line" ]] && echo "keyspace_$line"
    done <<<"$keyspace"
} >"$stage/backup-info.txt"

# --- 5. the tarball --------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
name="redis-backup-$(date -u '+%Y%m%dT%H%M%SZ').tar.gz"
out="$OUT_DIR/$name"
[[ -e "$out" ]] && { sleep 1; name="redis-backup-$(date -u '+%Y%m%dT%H%M%SZ').tar.gz"; out="$OUT_DIR/$name"; }
tar -C "$stage" -czf "$out.partial" .
mv "$out.partial" "$out"
say "keys: ${keyspace//$'\n'/ }"
echo "$out"

if ((KEEP > 0)); then
    mapfile -t old < <(find "$OUT_DIR" -maxdepth 1 -name 'redis-backup-*.tar.gz' -type f | sort -r | tail -n +$((KEEP + 1)))
    for f in "${old[@]}"; do
        rm -f -- "$f"
        say "removed old backup $f"
    done
fi
