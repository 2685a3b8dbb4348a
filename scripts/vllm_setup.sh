#!/usr/bin/env bash
# The inference plans' setup (once per node, again when the plan's setup
# changes): a virtualenv with vLLM and NIXL on the Deep Learning AMI, and
# the model's weights on the instance's NVMe volume.
#
#   vllm_setup.sh --venv DIR --vllm-version vX.Y.Z [--model NAME]
#
# Idempotent: a venv whose vllm is already that version is kept as it is
# (seconds). On the local provider it does nothing: there the steps run the
# stand-in server (scripts/standin_server.py), see scripts/vllm_serve.sh.
set -euo pipefail

venv="" version="" model=""
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=$2; shift 2 ;;
    --vllm-version) version=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    *) echo "vllm_setup.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$venv" ] || [ -z "$version" ]; then
  echo "vllm_setup.sh: --venv and --vllm-version are required" >&2
  exit 2
fi
case "${INFRA_PROVIDER:-}" in
  local)
    echo "vllm_setup.sh: local provider: no vLLM venv to build (the steps use the stand-in server)"
    exit 0 ;;
  "")
    # never a build (gigabytes from PyPI) by mistake on a machine that is no node
    echo "vllm_setup.sh: INFRA_PROVIDER is not set: infra's setup sets it (aws on a node, local on this machine);" >&2
    echo "  to build the venv by hand: INFRA_PROVIDER=aws $0 --venv $venv --vllm-version $version" >&2
    exit 2 ;;
esac
if [ -n "${INFRA_SANDBOX_DIR:-}" ]; then
  # the AWS emulator's nodes are folders of the machine that runs it
  echo "vllm_setup.sh: an emulated node ($INFRA_SANDBOX_DIR) has no GPU: no vLLM is built here." >&2
  echo "  Try the plan with --provider local (the stand-in server), or on AWS." >&2
  exit 1
fi
case "$venv" in
  /opt/dlami/*)
    if [ ! -d /opt/dlami ]; then
      echo "vllm_setup.sh: $venv is on the Deep Learning AMI's NVMe volume, but this node has no /opt/dlami:" >&2
      echo "  give its node group a Deep Learning AMI (\"ami\"), or a venv_path that exists here" >&2
      exit 1
    fi ;;
esac
want=${version#v}

have_vllm() {
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("vllm") != sys.argv[1])' "$want" 2>/dev/null
}

if have_vllm; then
  echo "vllm_setup.sh: vllm $want already in $venv"
else
  if [ -e "$venv" ]; then
    echo "vllm_setup.sh: $venv holds no vllm $want: rebuilding it"
    rm -rf "$venv"
  fi
  mkdir -p "$(dirname "$venv")"
  # uv resolves and installs vLLM's wheels in minutes, and brings its own
  # Python when the AMI's is too old or has no venv module
  export HOME=${HOME:-/root}
  uv=$(command -v uv || true)
  if [ -z "$uv" ]; then
    curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/usr/local/bin UV_NO_MODIFY_PATH=1 sh
    uv=/usr/local/bin/uv
  fi
  "$uv" venv --seed --python 3.12 "$venv"
  "$uv" pip install --python "$venv/bin/python" "vllm==$want" nixl
  have_vllm || { echo "vllm_setup.sh: vllm $want did not install into $venv" >&2; exit 1; }
  echo "vllm_setup.sh: built $venv with vllm $want"
fi

if [ -n "$model" ]; then
  # the weights once per node, before any server waits for them
  if [ -z "${HF_HOME:-}" ] && [ -d /opt/dlami/nvme ]; then export HF_HOME=/opt/dlami/nvme/huggingface; fi
  "$venv/bin/python" -c 'import sys; from huggingface_hub import snapshot_download; print(snapshot_download(sys.argv[1]))' "$model"
fi
