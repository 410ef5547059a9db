#!/usr/bin/env bash
# Create .venv and install qthink with every optional part ([all]); `--test` adds what the test suite needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  python -m pip install -q -e '.[all,test]'
  if [ -x scripts/setup-test-extras.sh ]; then bash scripts/setup-test-extras.sh; fi
else
  python -m pip install -q -e '.[all]'
fi
if ! command -v bwrap >/dev/null 2>&1; then
  echo "note: the agent's code interpreter runs model-written code in a bubblewrap jail and refuses to" >&2
  echo "start without one: install it (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf" >&2
  echo "install bubblewrap), then check with: qthink agent --check-sandbox" >&2
fi
