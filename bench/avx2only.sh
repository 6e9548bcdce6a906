#!/usr/bin/env bash
# Run a command on an AVX2-only view of this CPU (bench/avx2only.c): the kernels an AVX2 machine runs, here.
#   bench/avx2only.sh .venv/bin/python bench/frozen_features.py --images 128 --openvino
set -euo pipefail
grep -qw cpuid_fault /proc/cpuinfo || { echo "avx2only: this CPU or kernel has no CPUID faulting" >&2; exit 2; }
out="${TMPDIR:-/tmp}/avx2only-$(id -u).so"
src="$(dirname "$0")/avx2only.c"
[ "$out" -nt "$src" ] || cc -O2 -shared -fPIC -o "$out" "$src" -ldl
LD_PRELOAD="$out${LD_PRELOAD:+:$LD_PRELOAD}" exec "$@"
