#!/usr/bin/env bash
# scripts/configure.sh - the one CMake configuration that demo.sh and test.sh share.
#
#   bash scripts/configure.sh [BUILD_DIR] [extra cmake arguments...]
#
# Release build in BUILD_DIR (default build/), Ninja when available, the Python module and pytest
# run by .venv/bin/python (Debian's torch and numpy plus the PyPI extras; see scripts/setup.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:-${ROOT}/build}"
shift || true

args=(-S "${ROOT}" -B "${BUILD_DIR}" -DCMAKE_BUILD_TYPE=Release)
# An existing build folder keeps its generator; a new one gets Ninja when it is installed.
if [[ ! -f "${BUILD_DIR}/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
  args+=(-G Ninja)
fi
if [[ -x "${ROOT}/.venv/bin/python" ]]; then
  args+=("-DPython_EXECUTABLE=${ROOT}/.venv/bin/python")
fi
# Without a visible GPU the CUDA code (when nvcc is present) is compiled once, for sm_80, the oldest
# target: every kernel is still compiled and checked, at half the time of the default "80;90".
# An explicit -DCMAKE_CUDA_ARCHITECTURES=... among the extra arguments wins.
if [[ " $* " != *"CMAKE_CUDA_ARCHITECTURES"* ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  args+=(-DCMAKE_CUDA_ARCHITECTURES=80)
fi
echo "[configure] cmake ${args[*]} $*"
cmake "${args[@]}" "$@"
