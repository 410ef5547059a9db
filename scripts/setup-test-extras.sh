#!/usr/bin/env bash
# System packages the test suite needs beyond pip; idempotent, run as root after pip install.
set -euo pipefail

# Browser tests of the viewer drive Debian's headless Chromium (never a downloaded browser).
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

# The native linear kernels are compiled on first use with the machine's C++ compiler.
if ! command -v g++ >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
fi
