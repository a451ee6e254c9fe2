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
  --test       a test environment, not an install: the package in editable mode (tests
               run against this checkout) with its test dependencies, in its own prefix
               (default /opt/flexai-test); it never touches /opt/flexai, the commands in
               /usr/local/bin, /etc/flexai or a running flexaid, and starts nothing
  --deps-only  install packages and the Python package, start nothing
  --no-start   do not start flexaid

Environment: FLEXAI_PREFIX (default /opt/flexai, with --test /opt/flexai-test) holds the
virtual environment; FLEXAI_PYTHON (default /usr/bin/python3, the system python, which
every user can run) creates it.
USAGE
}

demo=0 test=0 start=1
for arg in "$@"; do
  case "$arg" in
    --demo) demo=1 ;;
    --test) test=1 start=0 ;;
    --deps-only|--no-start) start=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it installs packages and a system daemon)" >&2; exit 1; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$test" = 1 ]; then prefix=${FLEXAI_PREFIX:-/opt/flexai-test}; else prefix=${FLEXAI_PREFIX:-/opt/flexai}; fi
prefix=$(realpath -m "$prefix")
# Nothing below may import this checkout by accident: `python -m` puts the working directory
# first on sys.path, so run from / (and the installed python with -I, which leaves it out).
cd /
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

# The system python, not the first python3 on PATH: that may be a pyenv build under /root, and a
# venv made from it fails for every other user with "Permission denied".
python=${FLEXAI_PYTHON:-/usr/bin/python3}
venv_base() { realpath -e "$("$prefix/venv/bin/python" -I -c 'import sys; print(sys._base_executable)' 2>/dev/null)" 2>/dev/null || true; }
if [ ! -x "$prefix/venv/bin/python" ]; then
  step "creating the virtual environment $prefix/venv with $python"
  mkdir -p "$prefix"
  "$python" -m venv --clear "$prefix/venv"
elif [ "$(venv_base)" != "$(realpath "$python")" ]; then
  # e.g. one made from a pyenv python under /root by an earlier install.sh
  step "re-creating the virtual environment $prefix/venv with $python (it was made with another python)"
  "$python" -m venv --clear "$prefix/venv"
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
  "$prefix/venv/bin/python" -I -m flexai_hook.install.cbuild >/dev/null
fi
# flexai-runtime and flexai-hook run on every container start: C front doors + -I -S launchers.
"$prefix/venv/bin/python" -I -m flexai_hook.install.launchers "$prefix/venv/bin" >/dev/null
getent group flexai >/dev/null || groupadd --system flexai  # flexaid's socket group
if [ "$test" = 1 ]; then
  echo "test environment ready: $prefix/venv (the installed commands, /etc/flexai and flexaid are untouched)"
  exit 0
fi
for cmd in flexai flexai-runtime flexai-hook flexaid flexai-smi; do
  if [ -e "$prefix/venv/bin/$cmd" ]; then ln -sf "$prefix/venv/bin/$cmd" "/usr/local/bin/$cmd"; fi
done

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
    step "starting flexaid (log: /var/log/flexai/flexaid.log, rotated by size)"
    install -d -m 0755 /var/log/flexai /run/flexai
    # flexaid writes and rotates the log itself (--log-file); stderr, for what comes before that
    # (a bad config), goes to the same file
    nohup flexaid --config /etc/flexai/flexaid.json --log-file /var/log/flexai/flexaid.log \
      >>/var/log/flexai/flexaid.log 2>&1 </dev/null &
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
