#!/usr/bin/env bash
# Install flexai on Debian 12, as root, from this checkout: Debian packages, a virtual
# environment with the flexai package, the commands in /usr/local/bin, default configs in
# /etc/flexai, and a running flexaid (a simulated card when no NVIDIA GPU is present).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bash packaging/install.sh [--demo] [--test] [--deps-only] [--no-start]

  --demo       after installing, run `flexai demo`: a busybox container with
               FLEXAI_FRACTION=0.3 through flexai-runtime and runc
  --test       also install the test dependencies (pytest, hypothesis) and link the
               package in editable mode, so tests run against this checkout
  --deps-only  install packages and the Python package, start nothing
  --no-start   do not start flexaid

Environment: FLEXAI_PREFIX (default /opt/flexai) holds the virtual environment.
USAGE
}

demo=0 test=0 start=1
for arg in "$@"; do
  case "$arg" in
    --demo) demo=1 ;;
    --test) test=1 ;;
    --deps-only|--no-start) start=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it installs packages and a system daemon)" >&2; exit 1; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${FLEXAI_PREFIX:-/opt/flexai}
step() { printf '\n==> %s\n' "$*"; }

# Debian packages: runc runs the containers; busybox-static builds demo and test images;
# docker.io, containerd and podman are the engines the end-to-end tests drive;
# the compiler, headers and pkg-config build the C parts (libflexai, systemd bindings).
debs=(runc crun busybox-static docker.io containerd podman gcc make pkg-config libsystemd-dev python3 python3-venv python3-dev ca-certificates)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${FLEXAI_PYTHON:-$(command -v python3)}
if [ ! -x "$prefix/venv/bin/python" ]; then
  step "creating the virtual environment $prefix/venv"
  mkdir -p "$prefix"
  "$python" -m venv "$prefix/venv"
fi
pip=("$prefix/venv/bin/python" -m pip --disable-pip-version-check -q)
if [ "$test" = 1 ]; then
  step "installing flexai (editable, with test dependencies) from $repo"
  "${pip[@]}" install -e "$repo[test]"
else
  step "installing flexai from $repo"
  "${pip[@]}" install "$repo"
fi
if [ "$test" = 1 ]; then
  # An editable install runs from the checkout: (re)build its C parts there (by mtime).
  step "building libflexai/ in place"
  "$prefix/venv/bin/python" -m flexai_hook.cbuild >/dev/null
fi
# flexai-runtime and flexai-hook run on every container start: C front doors + -I -S launchers.
"$prefix/venv/bin/python" -m flexai_hook.launchers "$prefix/venv/bin" >/dev/null
for cmd in flexai flexai-runtime flexai-hook flexaid flexai-smi; do
  if [ -e "$prefix/venv/bin/$cmd" ]; then ln -sf "$prefix/venv/bin/$cmd" "/usr/local/bin/$cmd"; fi
done

getent group flexai >/dev/null || groupadd --system flexai
install -d -m 0755 /etc/flexai
if [ ! -e /etc/flexai/flexaid.json ]; then
  step "writing /etc/flexai/flexaid.json (NVIDIA cards if NVML finds any, else one simulated 16 GiB card)"
  install -m 0644 "$repo/runtime-config/flexaid.json" /etc/flexai/flexaid.json
fi

if [ "$start" = 1 ]; then
  if [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
    step "installing flexaid.service and flexaid.socket (socket activation: the first container start launches flexaid)"
    install -m 0644 "$repo/packaging/systemd/flexaid.service" "$repo/packaging/systemd/flexaid.socket" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now flexaid.socket
  elif flexai status >/dev/null 2>&1; then
    step "flexaid is already running"
  else
    # No systemd as PID 1 (a container, a CI runner): run it directly.
    step "starting flexaid (log: /var/log/flexai/flexaid.log)"
    install -d -m 0755 /var/log/flexai /run/flexai
    nohup flexaid --config /etc/flexai/flexaid.json >>/var/log/flexai/flexaid.log 2>&1 </dev/null &
    echo $! >/run/flexai/flexaid.pid
    for _ in $(seq 100); do
      flexai status >/dev/null 2>&1 && break
      kill -0 "$(cat /run/flexai/flexaid.pid)" 2>/dev/null || { tail -5 /var/log/flexai/flexaid.log >&2; exit 1; }
      sleep 0.1
    done
  fi
  flexai status
fi

if [ "$demo" = 1 ]; then
  step "flexai demo"
  flexai demo
fi
