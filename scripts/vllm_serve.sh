#!/usr/bin/env bash
# Start one vLLM server for a task step: unified, or one side of a
# disaggregated pair (producer = prefill, consumer = decode) whose KV cache
# goes over KV_TRANSPORT (efa: NIXL's LIBFABRIC backend on the EFA
# interfaces; tcp: NIXL's UCX backend restricted to TCP).
#
#   vllm_serve.sh --venv DIR --model NAME --role unified|producer|consumer --port N
#                 [--peer HOST:PORT] [--tp N] [--gpu-memory-utilization F]
#                 [--max-num-batched-tokens N] [--max-model-len N] [--enable-prefix-caching]
#
# With DIR/bin/vllm present it runs `vllm serve` (vLLM v0.15/v0.16 flags,
# --kv-transfer-config for the NixlConnector). Without it:
#   - on the local provider (INFRA_PROVIDER=local) it runs the stand-in
#     server (scripts/standin_server.py: the same OpenAI-compatible API with a
#     GPU's timing with every duration times STANDIN_TIME_SCALE, default
#     0.01: a hundred times faster), bound to
#     the node's loopback address only;
#   - anywhere else it fails (exit 127), naming the venv: a cloud node never
#     benchmarks a stand-in.
set -euo pipefail

venv="" model="" role="" port="" peer="" tp=1 gmu="" mnbt="" mml="" prefix=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --role) role=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --peer) peer=$2; shift 2 ;;
    --tp) tp=$2; shift 2 ;;
    --gpu-memory-utilization) gmu=$2; shift 2 ;;
    --max-num-batched-tokens) mnbt=$2; shift 2 ;;
    --max-model-len) mml=$2; shift 2 ;;
    --enable-prefix-caching) prefix=1; shift ;;
    *) echo "vllm_serve.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
for v in venv model role port; do
  if [ -z "${!v}" ]; then echo "vllm_serve.sh: --$v is required" >&2; exit 2; fi
done
case "$role" in
  unified|producer|consumer) ;;
  *) echo "vllm_serve.sh: --role must be unified, producer or consumer, not $role" >&2; exit 2 ;;
esac
transport=${KV_TRANSPORT:-tcp}
case "$transport" in
  efa|tcp) ;;
  *) echo "vllm_serve.sh: KV_TRANSPORT must be efa or tcp, not $transport" >&2; exit 2 ;;
esac
provider=${INFRA_PROVIDER:-}
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Locally every node is a loopback address: bind that one only. On a cloud
# node the peers and the proxy reach the server on its private address.
host=0.0.0.0
if [ "$provider" = local ]; then host=${INFRA_NODE_ADDR:-127.0.0.1}; fi

if [ ! -x "$venv/bin/vllm" ]; then
  if [ "$provider" = local ]; then
    echo "vllm_serve.sh: no vLLM in $venv on the local provider: the stand-in server serves $model ($role)" >&2
    args=(--host "$host" --port "$port" --model "$model" --role "$role" --tp "$tp" --kv-transport "$transport"
          --time-scale "${STANDIN_TIME_SCALE:-0.01}")
    [ -n "$peer" ] && args+=(--peer "$peer")
    [ -n "$mml" ] && args+=(--max-model-len "$mml")
    [ -n "$mnbt" ] && args+=(--max-num-batched-tokens "$mnbt")
    [ -n "$gmu" ] && args+=(--gpu-memory-utilization "$gmu")
    [ "$prefix" = 1 ] && args+=(--enable-prefix-caching)
    exec python3 "$scripts/standin_server.py" "${args[@]}"
  fi
  echo "vllm_serve.sh: no vLLM at $venv/bin/vllm on this node (provider ${provider:-unknown}, node ${INFRA_NODE_NAME:-?})." >&2
  echo "  The plan's setup builds it (scripts/vllm_setup.sh --venv $venv ...); see the node's setup log." >&2
  echo "  Not starting the stand-in server: it serves local trials only." >&2
  exit 127
fi

# The model's weights where the setup put them (the DLAMI's NVMe volume).
if [ -z "${HF_HOME:-}" ] && [ -d /opt/dlami/nvme ]; then export HF_HOME=/opt/dlami/nvme/huggingface; fi

args=(serve "$model" --host "$host" --port "$port" --tensor-parallel-size "$tp")
[ -n "$gmu" ] && args+=(--gpu-memory-utilization "$gmu")
[ -n "$mnbt" ] && args+=(--max-num-batched-tokens "$mnbt")
[ -n "$mml" ] && args+=(--max-model-len "$mml")
[ "$prefix" = 1 ] && args+=(--enable-prefix-caching)

if [ "$role" != unified ]; then
  if [ "$role" = producer ]; then kv_role=kv_producer; else kv_role=kv_consumer; fi
  # NIXL's side channel: the consumer learns the producer's address from the
  # kv_transfer_params the proxy passes on, so each advertises its own.
  export VLLM_NIXL_SIDE_CHANNEL_HOST=${INFRA_NODE_ADDR:-$(hostname -I | awk '{print $1}')}
  export VLLM_NIXL_SIDE_CHANNEL_PORT=${VLLM_NIXL_SIDE_CHANNEL_PORT:-5600}
  if [ "$transport" = efa ]; then
    # libfabric's EFA provider (the DLAMI's /opt/amazon/efa); libfabric
    # finds out itself whether the GPU memory can be registered (p4d, p5)
    # or goes through host buffers (g5)
    export FI_PROVIDER=efa
    if [ -d /opt/amazon/efa/lib ]; then export LD_LIBRARY_PATH=/opt/amazon/efa/lib:${LD_LIBRARY_PATH:-}; fi
    backends='["LIBFABRIC"]'
  else
    # UCX over TCP sockets only (no RDMA), GPU buffers staged through the host
    export UCX_TLS=tcp,self,cuda_copy UCX_NET_DEVICES=${UCX_NET_DEVICES:-all}
    backends='["UCX"]'
  fi
  args+=(--kv-transfer-config "{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"$kv_role\",\"kv_load_failure_policy\":\"fail\",\"kv_connector_extra_config\":{\"backends\":$backends}}")
  echo "vllm_serve.sh: $role, KV cache over $transport (NIXL ${backends}), side channel $VLLM_NIXL_SIDE_CHANNEL_HOST:$VLLM_NIXL_SIDE_CHANNEL_PORT${peer:+, producer at $peer}" >&2
fi
exec "$venv/bin/vllm" "${args[@]}"
