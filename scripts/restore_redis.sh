#!/bin/sh
# restore_redis.sh - put a backup made by scripts/backup_redis.sh back into a Redis server.
#
# Replacing a live server's files is unsafe, so the procedure is:
#   1. check the tarball (a dump.rdb, optionally the AOF; no absolute or ../ paths), and
#      refuse to go on without --force (without it, print what would be done);
#   2. stop the server: locally `SHUTDOWN SAVE` when it answers (or it must already be
#      stopped, and --dir names its data directory); with --docker `docker stop`;
#   3. move its current dump.rdb and AOF into <dir>/pre-restore-<UTC time>/ (kept, to roll
#      back), then unpack the backup into <dir> with the server's own file names and owner;
#      when the server runs with appendonly yes and the backup has no usable AOF, build the
#      AOF from the RDB with a temporary redis-server on a unix socket (Redis 7 with
#      appendonly yes ignores dump.rdb and would start empty);
#   4. start it: locally print the command (this script does not know how Redis was
#      started: systemd, ./start_local.sh, by hand); with --docker `docker start`, then wait
#      for PING and print the keyspace.
#
# Reaches Redis like check_redis_queue.sh: REDIS_URL, or REDIS_HOST / REDIS_PORT /
# REDIS_PASSWORD (in REDISCLI_AUTH, never on the command line); with --docker the container
# ${UVR_REDIS_CONTAINER:-uvr-redis}, whose volume is changed by a short-lived helper
# container of the same image (no network). POSIX sh, because that helper (redis:7-alpine)
# runs this same script to do step 3.
#
# While Redis is down the API answers 503 queue_unavailable and the workers retry; they
# reconnect by themselves. Tasks claimed after the backup was taken are not in it.
#
# Exit status: 0 restored, 1 usage or failure, 2 refused (no --force), 3 the server is
# still running.

set -eu

PROG=${0##*/}

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { # die STATUS MESSAGE
    printf '%s: %s\n' "$PROG" "$2" >&2
    exit "$1"
}

# info_get FILE KEY: a value of backup-info.txt.
info_get() {
    sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1
}

# redis_major: the major version of the redis-server on PATH.
redis_major() {
    redis-server --version 2>/dev/null | sed -n 's/.* v=\([0-9][0-9]*\)\..*/\1/p'
}

# rebuild_aof DIR DBFILE AOFDIR AOFNAME: write the AOF of DIR/DBFILE with a temporary
# redis-server that listens on a unix socket only.
rebuild_aof() {
    rb_dir=$1 rb_db=$2 rb_aofdir=$3 rb_aofname=$4
    command -v redis-server >/dev/null 2>&1 || die 1 "redis-server is needed to build the AOF from the RDB"
    rb_tmp=$(mktemp -d "${TMPDIR:-/tmp}/uvr-restore.XXXXXX")
    rb_sock=$rb_tmp/redis.sock
    set -- --port 0 --unixsocket "$rb_sock" --unixsocketperm 700 --dir "$rb_dir" \
        --dbfilename "$rb_db" --appendonly no --appendfilename "$rb_aofname" --save "" \
        --daemonize yes --pidfile "$rb_tmp/redis.pid" --logfile "$rb_tmp/redis.log"
    rb_major=$(redis_major)
    if [ "${rb_major:-0}" -ge 7 ]; then
        set -- "$@" --appenddirname "$rb_aofdir"
    fi
    say "building the AOF from $rb_db with a temporary redis-server"
    redis-server "$@" || die 1 "the temporary redis-server did not start"
    tcli() { (unset REDISCLI_AUTH; redis-cli -s "$rb_sock" "$@"); }
    rb_i=0
    until [ "$(tcli PING 2>/dev/null)" = PONG ] &&
        tcli INFO persistence 2>/dev/null | tr -d '\r' | grep -qx 'loading:0'; do
        rb_i=$((rb_i + 1))
        if [ "$rb_i" -gt 600 ]; then
            tail -n 5 "$rb_tmp/redis.log" >&2 || true
            die 1 "the temporary redis-server did not load $rb_db"
        fi
        sleep 0.5
    done
    tcli CONFIG SET appendonly yes >/dev/null
    rb_i=0
    while :; do
        rb_info=$(tcli INFO persistence | tr -d '\r')
        if printf '%s\n' "$rb_info" | grep -qx 'aof_rewrite_in_progress:0' &&
            printf '%s\n' "$rb_info" | grep -qx 'aof_rewrite_scheduled:0' &&
            { [ -f "$rb_dir/$rb_aofdir/$rb_aofname.manifest" ] || [ -f "$rb_dir/$rb_aofname" ]; }; then
            break
        fi
        rb_i=$((rb_i + 1))
        [ "$rb_i" -le 3600 ] || die 1 "timed out building the AOF"
        sleep 0.5
    done
    printf '%s\n' "$rb_info" | grep -qx 'aof_last_bgrewrite_status:ok' || die 1 "building the AOF failed (see $rb_tmp/redis.log)"
    rb_pid=$(cat "$rb_tmp/redis.pid")
    tcli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    while kill -0 "$rb_pid" 2>/dev/null; do sleep 0.2; done
    rm -rf "$rb_tmp"
}

# install_files DIR SRC DBFILE AOFDIR AOFNAME APPENDONLY STAMP: step 3. Runs on this machine
# (local restore) or in the helper container (--docker). The server must be stopped.
install_files() {
    dir=$1 src=$2 db=$3 aofdir=$4 aofname=$5 appendonly=$6 stamp=$7
    [ -d "$dir" ] || die 1 "no directory $dir"
    info=$src/backup-info.txt
    src_db=$(info_get "$info" dbfilename)
    src_db=${src_db:-dump.rdb}
    src_aof=$(info_get "$info" aof)
    src_aofname=$(info_get "$info" appendfilename)
    src_aofname=${src_aofname:-appendonly.aof}
    src_aofdir=$(info_get "$info" appenddirname)
    [ -f "$src/$src_db" ] || die 1 "the backup has no $src_db"

    aside=$dir/pre-restore-$stamp
    mkdir -p "$aside"
    for f in "$db" "$aofdir" "$aofname"; do
        if [ -n "$f" ] && [ -e "$dir/$f" ]; then
            mv "$dir/$f" "$aside/"
        fi
    done
    say "previous files moved to $aside"

    cp -p "$src/$src_db" "$dir/$db"
    need_rebuild=0
    # The manifest names its files after appendfilename, so the backup's AOF is used as is
    # only when that name matches; the directory itself may be renamed.
    if [ "$src_aof" = dir ] && [ -f "$src/$src_aofdir/$src_aofname.manifest" ] &&
        [ "$src_aofname" = "$aofname" ] && [ -n "$aofdir" ]; then
        cp -pR "$src/$src_aofdir" "$dir/$aofdir"
    elif [ "$src_aof" = file ] && [ -f "$src/$src_aofname" ] && [ -z "$aofdir" ]; then
        cp -p "$src/$src_aofname" "$dir/$aofname"
    elif [ "$appendonly" = yes ]; then
        need_rebuild=1
    fi
    if [ "$need_rebuild" = 1 ]; then
        rebuild_aof "$dir" "$db" "$aofdir" "$aofname"
    fi

    # The server's user must own what it reads and rewrites: give the files the owner of
    # the data directory.
    if [ "$(id -u)" = 0 ]; then
        owner=$(stat -c %u:%g "$dir" 2>/dev/null || stat -f %u:%g "$dir")
        for f in "$db" "$aofdir" "$aofname"; do
            if [ -n "$f" ] && [ -e "$dir/$f" ]; then
                chown -R "$owner" "$dir/$f"
            fi
        done
    fi
    say "restored into $dir"
}

# Internal: the helper container of a --docker restore runs
#   restore_redis.sh --install DIR SRC DBFILE AOFDIR AOFNAME APPENDONLY STAMP
if [ "${1:-}" = --install ]; then
    [ $# -eq 8 ] || die 1 "--install takes 7 arguments"
    shift
    install_files "$@"
    exit 0
fi

usage() {
    cat <<EOF
Usage: $PROG [--docker] [--container NAME] [--force] [--dir DIR] [--appendonly yes|no] BACKUP.tar.gz

Restore a backup made by scripts/backup_redis.sh. Without --force, only checks the backup
and prints what it would do.

Options:
  --force             really stop the server and replace its data
  --docker            Redis runs in a docker container (default \${UVR_REDIS_CONTAINER:-uvr-redis})
  --container NAME    the container to use with --docker
  --dir DIR           local only: the data directory of a server that is already stopped
                      (when the server answers, its CONFIG GET dir is used)
  --appendonly yes|no whether the stopped server runs with AOF (default: the running
                      server's setting, else the backup's)
  -h, --help          show this help

Environment: REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD (as the service),
UVR_REDIS_CONTAINER.
EOF
}

USE_DOCKER=0
FORCE=0
DIR_OPT=
AOF_OPT=
BACKUP=
CONTAINER=${UVR_REDIS_CONTAINER:-uvr-redis}
while [ $# -gt 0 ]; do
    case $1 in
        --force) FORCE=1 ;;
        --docker) USE_DOCKER=1 ;;
        --container)
            [ $# -ge 2 ] || die 1 "--container needs a name"
            CONTAINER=$2 USE_DOCKER=1
            shift
            ;;
        --dir)
            [ $# -ge 2 ] || die 1 "--dir needs a directory"
            DIR_OPT=$2
            shift
            ;;
        --appendonly)
            [ $# -ge 2 ] || die 1 "--appendonly needs yes or no"
            AOF_OPT=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) die 1 "unknown option '$1' (try --help)" ;;
        *)
            [ -z "$BACKUP" ] || die 1 "one backup file only (try --help)"
            BACKUP=$1
            ;;
    esac
    shift
done
[ -n "$BACKUP" ] || die 1 "which backup? (try --help)"
[ -f "$BACKUP" ] || die 1 "no such file: $BACKUP"
case $AOF_OPT in '' | yes | no) ;; *) die 1 "--appendonly expects yes or no" ;; esac
if [ "$USE_DOCKER" = 1 ] && [ -n "$DIR_OPT" ]; then
    die 1 "--dir is for a local server; with --docker the container's own directory is used"
fi

# --- how to reach Redis (the same rules as check_redis_queue.sh) --------------------------
REDIS_URL=${REDIS_URL:-}
REDIS_HOST=${REDIS_HOST:-localhost}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_PASSWORD=${REDIS_PASSWORD:-}
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
            # Percent-decoding (as check_redis_queue.sh) needs bash; plain passwords only here.
            case $url_pw$URL_USER in
                *%*) die 1 "percent-encoded user or password in REDIS_URL: set REDIS_PASSWORD instead" ;;
            esac
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

# rcli ARGS...: one redis-cli command against the target server, raw reply.
rcli() {
    if [ "$USE_DOCKER" = 1 ]; then
        if [ -n "${REDISCLI_AUTH:-}" ]; then
            docker exec -i -e REDISCLI_AUTH "$CONTAINER" redis-cli -h 127.0.0.1 -p 6379 --raw "$@" </dev/null
        else
            docker exec -i "$CONTAINER" redis-cli -h 127.0.0.1 -p 6379 --raw "$@" </dev/null
        fi
    elif [ -n "$REDIS_URL" ]; then
        if [ -n "$URL_USER" ]; then
            redis-cli -u "$URL_ARG" --user "$URL_USER" --raw "$@" </dev/null
        else
            redis-cli -u "$URL_ARG" --raw "$@" </dev/null
        fi
    else
        redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --raw "$@" </dev/null
    fi
}
alive() { [ "$(rcli PING 2>/dev/null | tr -d '\r')" = PONG ]; }
config_get() { # the value of one CONFIG GET parameter (empty when unknown)
    rcli CONFIG GET "$1" 2>/dev/null | tr -d '\r' | sed -n '2p'
}
if [ "$USE_DOCKER" = 1 ]; then
    command -v docker >/dev/null 2>&1 || die 1 "--docker given but docker is not installed"
    TARGET="container $CONTAINER"
else
    command -v redis-cli >/dev/null 2>&1 || die 1 "redis-cli is not installed (apt-get install redis-tools), or use --docker"
    TARGET=${URL_ARG#*://}
    [ -n "$REDIS_URL" ] || TARGET="$REDIS_HOST:$REDIS_PORT"
fi

# --- 1. the backup --------------------------------------------------------------------------
work=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/uvr-restore.XXXXXX")
helper=
cleanup() {
    if [ -n "$helper" ]; then docker rm -f "$helper" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

tar -tzf "$BACKUP" >"$work/list" 2>/dev/null || die 1 "$BACKUP is not a gzip tarball"
if grep -Eq '^/|(^|/)\.\.(/|$)' "$work/list"; then
    die 1 "$BACKUP has absolute or ../ paths; refusing to unpack it"
fi
mkdir "$work/backup"
tar -xzf "$BACKUP" -C "$work/backup" --no-same-owner 2>/dev/null || tar -xzf "$BACKUP" -C "$work/backup"
src=$work/backup
info=$src/backup-info.txt
[ -f "$info" ] || die 1 "$BACKUP has no backup-info.txt: not made by backup_redis.sh"
src_db=$(info_get "$info" dbfilename)
src_db=${src_db:-dump.rdb}
[ -f "$src/$src_db" ] || die 1 "$BACKUP has no $src_db"
if command -v redis-check-rdb >/dev/null 2>&1; then
    redis-check-rdb "$src/$src_db" >"$work/check.log" 2>&1 ||
        die 1 "redis-check-rdb rejects $src_db of $BACKUP: $(tail -n 3 "$work/check.log")"
fi
src_aof=$(info_get "$info" aof)
say "backup: $(info_get "$info" created_at) from $(info_get "$info" source), Redis $(info_get "$info" redis_version), $src_db${src_aof:+ + AOF ($src_aof)}; $(grep '^keyspace_' "$info" | sed 's/^keyspace_//' | tr '\n' ' ')"

# --- the target server's layout -------------------------------------------------------------
running=0
if alive; then running=1; fi
if [ "$USE_DOCKER" = 1 ]; then
    docker inspect "$CONTAINER" >/dev/null 2>&1 || die 1 "no container named $CONTAINER"
    image=$(docker inspect --format '{{.Config.Image}}' "$CONTAINER")
fi
if [ "$running" = 1 ]; then
    dir=$(config_get dir)
    [ -n "$dir" ] || die 1 "CONFIG GET dir failed on $TARGET (is CONFIG renamed or forbidden by ACL?)"
    if [ -n "$DIR_OPT" ] && [ "$DIR_OPT" != "$dir" ]; then
        die 1 "--dir $DIR_OPT is not the directory of the running server ($dir)"
    fi
    db=$(config_get dbfilename)
    appendonly=$(config_get appendonly)
    aofname=$(config_get appendfilename)
    aofdir=$(config_get appenddirname)
    config_file=$(rcli INFO server | tr -d '\r' | sed -n 's/^config_file://p')
    port=$(config_get port)
    if [ "$USE_DOCKER" = 0 ] && [ ! -d "$dir" ]; then
        die 1 "the server's data directory $dir is not on this machine: run $PROG on the Redis host, or use --docker"
    fi
else
    if [ "$USE_DOCKER" = 1 ]; then
        dir=/data
        # The compose file starts Redis with --appendonly yes.
        if docker inspect --format '{{json .Config.Cmd}} {{json .Args}}' "$CONTAINER" | grep -q 'appendonly yes'; then
            appendonly=yes
        else
            appendonly=no
        fi
    else
        [ -n "$DIR_OPT" ] || die 3 "Redis at $TARGET does not answer: if it is stopped, give its data directory with --dir"
        dir=$DIR_OPT
        [ -d "$dir" ] || die 1 "no directory $dir"
        appendonly=$(info_get "$info" appendonly)
    fi
    db=dump.rdb aofname=appendonly.aof aofdir=appendonlydir config_file='' port=$REDIS_PORT
    if [ "$USE_DOCKER" = 0 ] && [ "$(redis_major)" != "" ] && [ "$(redis_major)" -lt 7 ]; then
        aofdir=
    fi
fi
[ -n "$AOF_OPT" ] && appendonly=$AOF_OPT
db=${db:-dump.rdb}
aofname=${aofname:-appendonly.aof}
appendonly=${appendonly:-no}

stamp=$(date -u '+%Y%m%dT%H%M%SZ')
state=stopped stop_how="already stopped" start_how="by you; the command is printed"
if [ "$running" = 1 ]; then state=running stop_how="SHUTDOWN SAVE"; fi
if [ "$USE_DOCKER" = 1 ]; then
    stop_how="docker stop $CONTAINER" start_how="docker start $CONTAINER"
fi
cat >&2 <<EOF
$PROG: plan for $TARGET ($state):
  1. stop it ($stop_how)
  2. move $dir/$db${aofdir:+ and $dir/$aofdir} into $dir/pre-restore-$stamp/
  3. unpack $BACKUP into $dir (dbfilename $db, appendonly $appendonly)
  4. start it ($start_how)
EOF
[ "$FORCE" = 1 ] || die 2 "nothing changed: add --force to do it"

# --- 2. stop ----------------------------------------------------------------------------------
wait_down() {
    i=0
    while alive; do
        i=$((i + 1))
        [ "$i" -le 300 ] || die 3 "Redis at $TARGET still answers after SHUTDOWN; stop it and retry with --dir"
        sleep 0.2
    done
}
if [ "$USE_DOCKER" = 1 ]; then
    say "stopping $CONTAINER"
    docker stop -t 60 "$CONTAINER" >/dev/null
elif [ "$running" = 1 ]; then
    say "SHUTDOWN SAVE on $TARGET"
    rcli SHUTDOWN SAVE >/dev/null 2>&1 || true
    wait_down
fi
# A supervisor (systemd Restart=, a container restart policy) may have started it again.
if [ "$USE_DOCKER" = 0 ]; then
    sleep 0.5
    if alive; then
        die 3 "Redis at $TARGET answers again (restarted by systemd or a supervisor?): stop it there (systemctl stop redis-server) and rerun with --dir $dir"
    fi
fi

# --- 3. install ---------------------------------------------------------------------------------
if [ "$USE_DOCKER" = 1 ]; then
    cp "$0" "$src/.restore_redis.sh"
    helper=$(docker create --volumes-from "$CONTAINER" --network none --user 0 --entrypoint sh "$image" \
        /restore/.restore_redis.sh --install "$dir" /restore "$db" "${aofdir:-}" "$aofname" "$appendonly" "$stamp")
    docker cp "$src/." "$helper:/restore" >/dev/null
    if ! docker start -a "$helper"; then
        die 1 "the restore helper failed; $CONTAINER is stopped, its previous files are in $dir/pre-restore-$stamp/ (docker start $CONTAINER to go back)"
    fi
    docker rm "$helper" >/dev/null
    helper=
else
    install_files "$dir" "$src" "$db" "${aofdir:-}" "$aofname" "$appendonly" "$stamp"
fi

# --- 4. start ------------------------------------------------------------------------------------
if [ "$USE_DOCKER" = 1 ]; then
    say "starting $CONTAINER"
    docker start "$CONTAINER" >/dev/null
    i=0
    until alive; do
        i=$((i + 1))
        [ "$i" -le 300 ] || die 1 "$CONTAINER did not answer PING after the restore: docker logs $CONTAINER"
        sleep 0.5
    done
    until rcli INFO persistence | tr -d '\r' | grep -qx 'loading:0'; do sleep 0.5; done
    say "$CONTAINER is up; keyspace: $(rcli INFO keyspace | tr -d '\r' | grep '^db' | tr '\n' ' ')"
else
    say "restored. Start Redis again, for example:"
    if [ -n "${config_file:-}" ]; then
        echo "  redis-server $config_file     (or: systemctl start redis-server)"
    else
        echo "  redis-server --port ${port:-6379} --dir $dir --dbfilename $db --appendonly $appendonly   (plus your other options)"
        echo "  or ./start_local.sh, or: systemctl start redis-server"
    fi
fi
