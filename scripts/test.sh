#!/usr/bin/env bash
# The test command: installs what the tests need, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/setup-test-deps.sh ]; then
  scripts/setup-test-deps.sh
fi
cargo test --locked "$@"
if [ -d tests/emulator ] && ls tests/emulator/test_*.py >/dev/null 2>&1; then
  python3 -m pytest -q tests/emulator
fi
