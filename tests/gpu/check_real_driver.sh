#!/usr/bin/env bash
# The by-hand driver-API check is now item h of tests/gpu/check.py (every allocation API and 8
# racing processes through tests/clients/flexai_client.c under a 4 GiB slice, with PASS/FAIL).
#   bash tests/gpu/check_real_driver.sh [LIBFLEXAI]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/check.py" --items h ${1:+--lib "$1"}
