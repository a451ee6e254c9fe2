#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Debian packages, the package in
# editable mode with its test dependencies), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/packaging/install.sh" --test --deps-only
cd "$repo"
exec "${FLEXAI_PREFIX:-/opt/flexai}/venv/bin/python" -m pytest -p no:cacheprovider "$@"
