#!/usr/bin/env bash
# scripts/demo.sh - set up the machine, build mmca and run its main demo.
#
#   bash scripts/demo.sh [arguments for attention_comparison...]
#
# Runs scripts/setup.sh, configures a Release build in build/, builds the demo program
# examples/attention_comparison and runs it with the given arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ROOT}/build"
cd "${ROOT}"

bash scripts/setup.sh
bash scripts/configure.sh "${BUILD_DIR}"
cmake --build "${BUILD_DIR}" --target attention_comparison -j "$(nproc)"

DEMO="${BUILD_DIR}/examples/attention_comparison"
if [[ ! -x "${DEMO}" ]]; then
  echo "[demo] ${DEMO} was not built" >&2
  exit 1
fi
echo "[demo] ${DEMO} $*"
exec "${DEMO}" "$@"
