#!/usr/bin/env bash
# scripts/demo.sh - set up the machine, build mmca and run its main demo.
#
#   bash scripts/demo.sh [arguments for attention_comparison...]
#
# Runs scripts/setup.sh, configures a Release build in build/, builds the two demo programs and
# runs them:
#   examples/attention_comparison   every attention variant, fused against reference (its table);
#   examples/chat_demo              a two-round chat over three generated images with the demo
#                                   visual-chat model in examples/demo_model (docs/demo_model.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ROOT}/build"
cd "${ROOT}"

bash scripts/setup.sh
bash scripts/configure.sh "${BUILD_DIR}"
cmake --build "${BUILD_DIR}" --target attention_comparison chat_demo -j "$(nproc)"

for program in attention_comparison chat_demo; do
  if [[ ! -x "${BUILD_DIR}/examples/${program}" ]]; then
    echo "[demo] ${BUILD_DIR}/examples/${program} was not built" >&2
    exit 1
  fi
done
echo "[demo] ${BUILD_DIR}/examples/attention_comparison $*"
"${BUILD_DIR}/examples/attention_comparison" "$@"
echo
echo "[demo] ${BUILD_DIR}/examples/chat_demo"
exec "${BUILD_DIR}/examples/chat_demo"
