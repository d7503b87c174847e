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
echo "[configure] cmake ${args[*]} $*"
cmake "${args[@]}" "$@"
