#!/usr/bin/env bash
# libflexai against a REAL NVIDIA driver (run by hand on a GPU host; CI has no GPU).
# Memory limits, the slice's view through the driver API and NVML, and 8 racing processes,
# through tests/clients/flexai_client.c (loads libcuda like libcudart: dlopen +
# cuGetProcAddress_v2). Kernels are not launched: the client has no real module.
#   bash tests/gpu/check_real_driver.sh [LIBFLEXAI]      (default: flexai library-path)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
L=${1:-$(flexai library-path)}
C=$(mktemp -d)/flexai_client
gcc -O2 -I"$repo/libflexai" -o "$C" "$repo/tests/clients/flexai_client.c" -ldl
G=1073741824; M=943718400   # 1 GiB; 900 MiB (fits the driver's 2D array limits)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== without the library (expect the whole card)"; "$C" info
echo "== FLEXAI_MEMORY=4GiB (expect total=4294967296, count=1)"; FLEXAI_MEMORY=4GiB LD_PRELOAD=$L "$C" info otherdev
for api in mem pitch managed async pool vmm array3d; do
  echo "== $api: 1.5 GiB x3 under 4 GiB (expect ok ok oom)"
  FLEXAI_MEMORY=4GiB LD_PRELOAD=$L "$C" alloc $api 1610612736 alloc $api 1610612736 alloc $api 1610612736 freeall
done
echo "== array: 900 MiB x5 under 4 GiB (expect 4 ok, then oom)"
FLEXAI_MEMORY=4GiB LD_PRELOAD=$L "$C" alloc array $M alloc array $M alloc array $M alloc array $M alloc array $M freeall
echo "== vmmhost: host memory is not counted (expect ok ok ok)"
FLEXAI_MEMORY=4GiB LD_PRELOAD=$L "$C" alloc vmmhost 1610612736 alloc vmmhost 1610612736 alloc vmmhost 1610612736 freeall
echo "== 8 processes x 100 rounds of 900 MiB on one 4 GiB budget (max held must be <= 4294967296)"
cnt=$(mktemp); head -c 4096 /dev/zero > "$cnt"
FLEXAI_MEMORY=4GiB LD_PRELOAD=$L C=$C CNT=$cnt bash -c 'for i in 1 2 3 4 5 6 7 8; do "$C" race 943718400 100 "$CNT" & done; wait'
echo "max held: $(od -A n -t d8 -j 8 -N 8 "$cnt")"
echo "== LD_BIND_NOW=1 with bash"; LD_BIND_NOW=1 LD_PRELOAD=$L bash -c 'echo ok'
