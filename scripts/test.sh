#!/usr/bin/env bash
# The test command: installs what the tests need, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/setup-test-deps.sh ]; then
  scripts/setup-test-deps.sh
fi
# The Slurm provider's tests run on a one-host cluster (installed with apt
# when missing, started here, stopped at the end if this script started
# it). INFRA_REQUIRE_SLURM makes them fail rather than skip without one;
# in CI a cluster that does not start fails the run.
if scripts/slurm-test-cluster.sh status 2>/dev/null; then
  export INFRA_REQUIRE_SLURM=1
elif scripts/slurm-test-cluster.sh start; then
  export INFRA_REQUIRE_SLURM=1
  trap 'scripts/slurm-test-cluster.sh stop' EXIT
elif [ -n "${CI:-}" ]; then
  echo "test.sh: the one-host Slurm cluster did not start" >&2
  exit 1
else
  echo "test.sh: no Slurm cluster (scripts/slurm-test-cluster.sh start needs root): the Slurm tests skip" >&2
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
