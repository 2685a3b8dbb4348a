#!/usr/bin/env bash
# Install the Python dependencies of the tests (the local AWS emulator under
# tests/emulator: moto[server], boto3, the awscli, cfn-lint, pytest), pinned
# in tests/emulator/requirements.txt. Idempotent; when everything is already
# installed at the pinned versions it returns in well under a second without
# calling pip.
#
#   PYTHON=python3.11 scripts/setup-test-deps.sh   # choose the interpreter
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/tests/emulator/requirements.txt"
PY="${PYTHON:-python3}"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup-test-deps: $PY not found (set PYTHON=...)" >&2
  exit 1
fi

# Fast path: every pinned requirement (and the requirements of its extras,
# e.g. moto[server] -> flask) is installed at a satisfying version.
if "$PY" - "$REQ" <<'EOF'
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:
        sys.exit(1)


def satisfied(req, seen):
    key = (req.name.lower(), tuple(sorted(req.extras)))
    if key in seen:
        return True
    seen.add(key)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        return False
    for extra in req.extras:
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            if sub.marker and sub.marker.evaluate({"extra": extra}) and not sub.marker.evaluate({"extra": ""}):
                if not satisfied(sub, seen):
                    return False
    return True


seen = set()
with open(sys.argv[1]) as fh:
    for line in fh:
        line = line.split("#", 1)[0].strip()
        if line and not satisfied(Requirement(line), seen):
            sys.exit(1)
EOF
then
  exit 0
fi

echo "setup-test-deps: installing $(grep -cv '^\s*\(#\|$\)' "$REQ") pinned packages from tests/emulator/requirements.txt" >&2
PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$PY" -m pip install -q -r "$REQ"
