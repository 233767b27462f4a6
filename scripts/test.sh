#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole CPU test suite (ctest). GPU tests carry the label `gpu` and are
# excluded here; run them on a GPU machine with `ctest --test-dir build -L gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
ctest --test-dir build -LE gpu --output-on-failure -j"$(nproc)" --timeout 600
