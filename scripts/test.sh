#!/usr/bin/env bash
# The test command: installs what the tests need, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/setup-test-deps.sh ]; then
  scripts/setup-test-deps.sh
fi
# The 100-node test starts 100 emulated nodes (and their agents and idle
# watchers) on this machine: it runs after the others, alone, so that it
# neither slows the timing-sensitive tests nor is slowed by them.
ALONE=status_calls_per_round_follow_the_invocations_in_flight_not_the_nodes_at_100_nodes
cargo test --locked "$@" -- --skip "$ALONE"
if [ "$#" -eq 0 ]; then
  cargo test --locked --test it -- --exact "aws::$ALONE"
fi
if [ -d tests/emulator ] && ls tests/emulator/test_*.py >/dev/null 2>&1; then
  python3 -m pytest -q tests/emulator
fi
