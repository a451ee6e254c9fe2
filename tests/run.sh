#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Debian packages, the package in
# editable mode with its test dependencies), then runs pytest. Extra arguments go to pytest.
#
# The tests get their own virtual environment, FLEXAI_PREFIX (default /opt/flexai-test), and
# start their own flexaid on their own sockets: a running install (/opt/flexai, the commands
# in /usr/local/bin, /etc/flexai, /run/flexai/flexaid.sock) is never touched, so this can run
# on a host that uses flexai.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=$(realpath -m "${FLEXAI_PREFIX:-/opt/flexai-test}")
installed=$(dirname "$(dirname "$(dirname "$(realpath -m /usr/local/bin/flexai)")")")
if [ "$prefix" = /opt/flexai ] || { [ -e /usr/local/bin/flexai ] && [ "$prefix" = "$installed" ]; }; then
  echo "tests/run.sh: FLEXAI_PREFIX=$prefix is flexai's install; the tests would replace its package" \
       "under the running flexaid. Use another prefix (the default is /opt/flexai-test)." >&2
  exit 2
fi
FLEXAI_PREFIX=$prefix bash "$repo/packaging/install.sh" --test --deps-only
cd "$repo"
exec "$prefix/venv/bin/python" -m pytest -p no:cacheprovider "$@"
