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

# The code interpreter's jail: bubblewrap makes it, libseccomp compiles its syscall filter.
if ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p | grep -q libseccomp.so.2; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2
fi

# BFCL's own function-calling data for `qthink eval run bfcl:...`. --no-deps: only the data files
# are read, and the package's dependency pins (numpy, model SDKs) would fight the project's.
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('bfcl_eval') is None)"; then
  python -m pip install -q --no-deps bfcl-eval
fi
