#!/usr/bin/env bash
# Starts uvr with Docker: Redis (AOF) + API + processor + uploader, from
# docker/docker-compose.yml (the seed's Docker entry point; ./start_local.sh is the one
# without Docker).
#
#   ./start.sh                 build the image, start everything, wait for /health
#   ./start.sh --monitoring    also Prometheus, redis_exporter and Grafana (profile monitoring)
#   ./start.sh --no-build      start without rebuilding the image
#   ./start.sh --gpu nvidia    GPU processors on NVIDIA (docker/docker-compose.nvidia.yml)
#   ./start.sh --gpu dri       GPU processors on AMD or Intel (docker/docker-compose.dri.yml)
#
# Settings come from .env at the top of the repository (and from the environment, which wins).
# When .env is missing it is created with generated secrets (API_PASSWORD, WEBHOOK_SECRET,
# LINK_SIGNING_KEY, REDIS_PASSWORD, METRICS_TOKEN, GRAFANA_ADMIN_PASSWORD), mode 600; when it
# exists, only the missing secrets are added. PUBLIC_BASE_URL (where download links point)
# is set to http://localhost:API_PORT when missing, with a note: set it to the address your
# clients use. Stop with: docker compose --env-file .env -f docker/docker-compose.yml down
set -euo pipefail
cd "$(dirname "$0")"

PROG=${0##*/}
COMPOSE_FILE_PATH=docker/docker-compose.yml
ENV_FILE=.env
monitoring=0
build=1
gpu=
wait_seconds=${START_WAIT_SECONDS:-180}

usage() {
  cat <<EOF
Usage: $PROG [--monitoring] [--no-build] [--gpu nvidia|dri] [-h|--help]

Start uvr with Docker Compose ($COMPOSE_FILE_PATH) and wait until the API answers.

  --monitoring   also start Prometheus, redis_exporter and Grafana (compose profile "monitoring")
  --no-build     do not rebuild the uvr image
  --gpu KIND     GPU processors: nvidia (NVIDIA Container Toolkit) or dri (AMD/Intel, /dev/dri)
  -h, --help     show this help

Environment: START_WAIT_SECONDS (default 180) bounds the wait for /health.
EOF
}

while (($# > 0)); do
  case $1 in
    --monitoring) monitoring=1 ;;
    --no-build) build=0 ;;
    --gpu)
      shift
      [[ "${1:-}" == nvidia || "${1:-}" == dri ]] || { echo "$PROG: --gpu takes nvidia or dri" >&2; exit 1; }
      gpu=$1
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$PROG: unknown argument '$1' (try --help)" >&2; exit 1 ;;
  esac
  shift
done

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }

# --- 1. Docker and Compose -------------------------------------------------------------
command -v docker >/dev/null 2>&1 ||
  die "docker is not installed (https://docs.docker.com/engine/install/); without Docker use ./start_local.sh"
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  die "Docker Compose v2 is missing (the 'docker compose' plugin: apt-get install docker-compose-plugin)"
fi
# Secrets from the environment (secrets: environment:) need Compose 2.24 or later.
compose_version=$("${compose_cmd[@]}" version --short 2>/dev/null || true)
compose_version=${compose_version#v}
if [[ ! "$compose_version" =~ ^([0-9]+)\.([0-9]+) ]]; then
  die "cannot tell the Docker Compose version ('${compose_cmd[*]} version --short' said '$compose_version')"
fi
if ((BASH_REMATCH[1] < 2 || (BASH_REMATCH[1] == 2 && BASH_REMATCH[2] < 24))); then
  die "Docker Compose $compose_version is too old: 2.24 or later is needed (docker-compose 1.x is not supported)"
fi
docker info >/dev/null 2>&1 ||
  die "the Docker daemon does not answer ('docker info' failed): start it, or add your user to the docker group"

# --- 2. .env with secrets ----------------------------------------------------------------
# env_get KEY: the last KEY=value of .env, surrounding quotes removed (the file is not sourced).
env_get() {
  local v
  v=$(sed -n "s/^[[:space:]]*\(export[[:space:]]\{1,\}\)\{0,1\}$1=//p" "$ENV_FILE" 2>/dev/null | tail -n 1)
  v=${v%$'\r'}
  if [[ "$v" =~ ^\"(.*)\"$ || "$v" =~ ^\'(.*)\'$ ]]; then
    v=${BASH_REMATCH[1]}
  fi
  printf '%s' "$v"
}
rand_b64() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
rand_alnum() { head -c "$1" /dev/urandom | base64 | tr -d '/+=\n'; }
rand_hex() { head -c "$1" /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }

created=0
if [[ ! -f "$ENV_FILE" ]]; then
  say "creating $ENV_FILE with generated secrets"
  (
    umask 077
    cat >"$ENV_FILE" <<EOF
# uvr settings for docker/docker-compose.yml (and ./start_local.sh). Keep this file secret.
# Every variable of the README's configuration table may be set here.
# Lets a plain 'docker compose ...' run from this directory find the compose file.
COMPOSE_FILE=$COMPOSE_FILE_PATH
API_USERNAME=admin
EOF
  )
  created=1
fi
chmod 600 "$ENV_FILE"

added=()
add_secret() { # KEY VALUE: appended to .env when .env has no value for KEY
  if [[ -z "$(env_get "$1")" ]]; then
    printf '%s=%s\n' "$1" "$2" >>"$ENV_FILE"
    added+=("$1")
  fi
}
add_secret API_PASSWORD "$(rand_alnum 24)"
add_secret WEBHOOK_SECRET "whsec_$(rand_b64 32)"
add_secret LINK_SIGNING_KEY "$(rand_hex 32)"
add_secret REDIS_PASSWORD "$(rand_alnum 32)"
add_secret METRICS_TOKEN "$(rand_alnum 32)"
add_secret GRAFANA_ADMIN_PASSWORD "$(rand_alnum 18)"
# Prometheus (--monitoring) reads the /metrics token from a file: containers run read-only.
(umask 022 && printf '%s' "${METRICS_TOKEN:-$(env_get METRICS_TOKEN)}" >docker/prometheus/metrics_token)
if ((${#added[@]} > 0 && created == 0)); then
  say "added to $ENV_FILE: ${added[*]}"
fi
if grep -q '^[[:space:]]*KAFKA_' "$ENV_FILE"; then
  echo "note: $ENV_FILE still has KAFKA_* variables; uvr ignores them (see MIGRATION.md)" >&2
fi

# The environment wins over .env, as in compose's own interpolation.
api_port=${API_PORT:-$(env_get API_PORT)}
api_port=${api_port:-8000}
if [[ -z "${PUBLIC_BASE_URL:-}" && -z "$(env_get PUBLIC_BASE_URL)" ]]; then
  printf 'PUBLIC_BASE_URL=http://localhost:%s\n' "$api_port" >>"$ENV_FILE"
  echo "note: download links will point at http://localhost:$api_port; set PUBLIC_BASE_URL in $ENV_FILE" \
    "to the address your clients reach the API at" >&2
fi
api_user=${API_USERNAME:-$(env_get API_USERNAME)}
api_user=${api_user:-admin}

# --- 3. Start -------------------------------------------------------------------------------
compose=("${compose_cmd[@]}" --env-file "$ENV_FILE" -f "$COMPOSE_FILE_PATH")
case $gpu in
  nvidia) compose+=(-f docker/docker-compose.nvidia.yml) ;;
  dri)
    compose+=(-f docker/docker-compose.dri.yml)
    if [[ -z "${RENDER_GID:-}" ]]; then
      RENDER_GID=$(getent group render | cut -d: -f3)
      [[ -n "$RENDER_GID" ]] || die "no 'render' group on this host: is /dev/dri there?"
      export RENDER_GID
    fi
    ;;
esac
if ((monitoring)); then
  compose+=(--profile monitoring)
fi
up=(up -d --remove-orphans)
if ((build)); then
  up+=(--build)
  say "building the image and starting the services (the first build takes several minutes)"
else
  say "starting the services"
fi
"${compose[@]}" "${up[@]}"

# --- 4. Wait for /health ----------------------------------------------------------------
url="http://localhost:$api_port"
health() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 3 "$url/health"
  else
    "${compose[@]}" exec -T api uvr healthcheck --port 8000 --path /health
  fi
}
say "waiting for $url/health (up to ${wait_seconds}s)"
deadline=$((SECONDS + wait_seconds))
until health 2>/dev/null; do
  if ((SECONDS >= deadline)); then
    echo "$PROG: $url/health did not answer 200 within ${wait_seconds}s" >&2
    "${compose[@]}" ps >&2 || true
    "${compose[@]}" logs --tail 30 api redis >&2 || true
    exit 1
  fi
  sleep 2
done

# --- 5. Summary ----------------------------------------------------------------------------
dc="docker compose --env-file $ENV_FILE -f $COMPOSE_FILE_PATH"
echo
say "uvr is running"
echo "    API:          $url   (docs: $url/docs, health: $url/health, metrics: $url/metrics)"
if [[ " ${added[*]} " == *" API_PASSWORD "* ]]; then
  echo "    credentials:  $api_user / $(env_get API_PASSWORD)   (generated; kept in $ENV_FILE as API_PASSWORD)"
else
  echo "    credentials:  $api_user / the API_PASSWORD of $ENV_FILE (or of your environment)"
fi
echo "    webhooks:     signed with WEBHOOK_SECRET from $ENV_FILE (Standard Webhooks)"
if ((monitoring)); then
  echo "    Grafana:      http://localhost:$(env_get GRAFANA_PORT | grep . || echo 3000)   (admin / GRAFANA_ADMIN_PASSWORD in $ENV_FILE)"
  echo "    Prometheus:   http://localhost:$(env_get PROMETHEUS_PORT | grep . || echo 9090)"
fi
echo "    status:       $dc ps"
echo "    logs:         $dc logs -f api processor uploader"
echo "    scale:        $dc up -d --scale processor=4 --scale uploader=2"
echo "    queue:        ./check_redis_queue.sh --docker"
echo "    redis-cli:    docker exec -it uvr-redis redis-cli"
echo "    backup:       scripts/backup_redis.sh --docker"
echo "    stop:         $dc down   (add -v to delete the queue, stems and metrics volumes)"
