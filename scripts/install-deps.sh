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

# cuDNN's fused attention (GPU builds only, optional): NVIDIA's header-only cuDNN frontend, from PyPI. CMake finds its
# headers under Python's site-packages (kernels/cuda/CMakeLists.txt); without them the flash kernels run every
# attention.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  if ! python3 -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['purelib'], 'include', 'cudnn_frontend.h')))"; then
    python3 -m pip install -q nvidia-cudnn-frontend 2>/dev/null ||
      python3 -m pip install -q --break-system-packages nvidia-cudnn-frontend 2>/dev/null ||
      echo "nvidia-cudnn-frontend could not be installed: cuDNN attention stays off (the flash kernels run)"
  fi
fi
