#!/usr/bin/env bash
# venv_python.sh VENV ARGS...: run ARGS with the venv's python when the venv
# exists (a node the plan's setup prepared), else with python3 (a local
# trial: the scripts it runs need only the standard library).
venv=$1
shift
if [ -x "$venv/bin/python" ]; then
  exec "$venv/bin/python" "$@"
fi
exec python3 "$@"
