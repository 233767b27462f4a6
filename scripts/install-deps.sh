#!/usr/bin/env bash
# Installs galvatron's build and test dependencies from Debian's packages (idempotent).
set -euo pipefail
PKGS="build-essential cmake libonnx-dev libprotobuf-dev protobuf-compiler libgtest-dev nlohmann-json3-dev
      libopenblas-openmp-dev libonnx-testdata libopenmpi-dev openmpi-bin python3"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
