#!/usr/bin/env bash
# Render the budget report of a local campaign and take a screenshot of it
# in headless Chromium (Debian's chromium package): docs/budget-report.png.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/budget-report.png}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cp -r plans scripts "$W/"
BIN=${INFRA_BIN:-$PWD/target/debug/infra}
[ -x "$BIN" ] || cargo test --locked --no-run --quiet   # builds target/debug/infra with the test build's dependencies
# part of each campaign, so the chart has spend so far, the estimate and
# the projection of what is left
"$BIN" -C "$W" run quickstart L0 > /dev/null 2>&1
"$BIN" -C "$W" run quickstart quickstart-L1-echo-c1 > /dev/null 2>&1
"$BIN" -C "$W" run sweep train > /dev/null 2>&1 || true
"$BIN" -C "$W" budget --format html -o "$W/budget.html"
mkdir -p "$(dirname "$OUT")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$W/chrome" --hide-scrollbars --window-size=1280,1600 \
  --screenshot="$OUT" "file://$W/budget.html" 2>/dev/null
echo "wrote $OUT"
