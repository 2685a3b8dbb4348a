#!/usr/bin/env python3
"""A stand-in for `vllm serve` where there is no GPU and no vLLM (the local
provider): the same OpenAI-compatible HTTP API, Python standard library only.

    GET  /health           200 once serving (as vLLM)
    GET  /v1/models        the served model (owned_by "standin", and what it simulates)
    POST /v1/completions   prompt (text or token ids), max_tokens, stream (SSE),
                           stream_options.include_usage, kv_transfer_params

Its timing is a deterministic model of a GPU serving a dense model in fp16
(an A10G of a g5 node by default): prefill grows with the prompt (linear
FLOPs plus the quadratic attention term) and queues behind other prefills,
each output token costs one decode step (weights plus the batch's KV cache
read from memory), tensor parallelism divides both with a loss per doubling.
Disaggregated roles behave as vLLM's NixlConnector does, seen from outside:
a producer asked with `kv_transfer_params.do_remote_decode` prefills, answers
one token and the `kv_transfer_params` a consumer needs; a consumer given
`do_remote_prefill` pulls the KV cache from the producer (a real request to
it: a wrong or missing handle fails the request, as `kv_load_failure_policy`
"fail" does) and pays the transfer at the transport's bandwidth
(`--kv-transport efa|tcp`) instead of the prefill.

`--time-scale` (or STANDIN_TIME_SCALE) multiplies every simulated duration
so that a local campaign stays fast; /v1/models reports it.
"""
import argparse
import json
import math
import os
import re
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib import request as urlrequest

# The simulated GPU (A10G): fp16 tensor throughput reached in prefill, and
# memory bandwidth reached in decode.
PREFILL_FLOPS = 55e12
MEM_BYTES_PER_S = 480e9
STEP_OVERHEAD_S = 0.003  # scheduler and sampling per decode step
PREFILL_OVERHEAD_S = 0.012
# KV cache transfer between nodes: bytes per second and per-transfer latency
TRANSPORTS = {"efa": (4.2e9, 0.0006), "tcp": (1.05e9, 0.0025)}
BLOCK_TOKENS = 16
WORDS = ("the", "model", "serves", "a", "token", "at", "each", "step", "of", "decode",
         "and", "prefill", "fills", "cache", "for", "prompt")


def model_params(name):
    """Parameters in billions from the model's name (`Qwen2.5-7B` -> 7.6); 7 if none."""
    m = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name.split("/")[-1])
    b = float(m.group(1)) if m else 7.0
    return 7.6 if b == 7 else b


class Engine:
    """The GPU: one prefill at a time, decode steps shared by the running batch."""

    def __init__(self, a):
        self.a = a
        self.params = model_params(a.model) * 1e9
        self.weight_bytes = 2 * self.params
        self.kv_bytes_per_token = 7.5e-6 * self.params  # GQA, fp16 (Qwen2.5-7B: ~57 KB)
        self.attn_coeff = 2.6e-5 * self.params  # 2 * layers * d_model
        self.tp_speedup = a.tp * 0.9 ** math.log2(max(1, a.tp))
        self.prefill_lock = threading.Lock()
        self.lock = threading.Lock()
        self.decoding = 0
        self.cached_blocks = set()
        self.held = {}  # producer: request id -> prompt tokens whose KV awaits a pull
        self.engine_id = f"standin-{uuid.uuid4().hex[:8]}"

    def sleep(self, seconds):
        if seconds > 0:
            time.sleep(seconds * self.a.time_scale)

    def prefill_seconds(self, n_new, n_total):
        flops = 2 * self.params * n_new + self.attn_coeff * (n_total * n_total - (n_total - n_new) ** 2) / 2
        return PREFILL_OVERHEAD_S + flops / (PREFILL_FLOPS * self.tp_speedup)

    def step_seconds(self, batch, context):
        read = self.weight_bytes + batch * context * self.kv_bytes_per_token
        allreduce = 0.0004 * math.log2(self.a.tp) if self.a.tp > 1 else 0.0
        return STEP_OVERHEAD_S + allreduce + read / (MEM_BYTES_PER_S * self.tp_speedup)

    def transfer_seconds(self, n_tokens):
        bw, lat = TRANSPORTS[self.a.kv_transport]
        return lat + n_tokens * self.kv_bytes_per_token / bw

    def prefill(self, tokens):
        """Prefill under the GPU's prefill lock; the prefix cache skips cached blocks."""
        with self.prefill_lock:
            cached = 0
            if self.a.enable_prefix_caching:
                h = 0
                for i in range(len(tokens) // BLOCK_TOKENS):
                    h = zlib.crc32(repr(tokens[i * BLOCK_TOKENS:(i + 1) * BLOCK_TOKENS]).encode(), h)
                    if h in self.cached_blocks:
                        cached = (i + 1) * BLOCK_TOKENS
                    else:
                        self.cached_blocks.add(h)
            self.sleep(self.prefill_seconds(len(tokens) - cached, len(tokens)) * jitter(tokens, -1))
            return cached

    def decode(self, tokens, n_out, emit):
        """n_out decode steps; emit(k) after each (k = 0 .. n_out-1)."""
        with self.lock:
            self.decoding += 1
        try:
            for k in range(n_out):
                with self.lock:
                    batch = self.decoding
                self.sleep(self.step_seconds(batch, len(tokens) + k) * jitter(tokens, k))
                emit(k)
        finally:
            with self.lock:
                self.decoding -= 1


def jitter(tokens, k):
    """A deterministic +-3 % from the request's content and the step."""
    h = zlib.crc32(f"{len(tokens)}:{tokens[:8]}:{k}".encode())
    return 0.97 + 0.06 * (h % 1000) / 1000


def tokenize(prompt):
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        return prompt
    if isinstance(prompt, str):
        # about four characters a token, as BPE tokenizers average on English
        return [zlib.crc32(prompt[i:i + 4].encode()) % 32000 for i in range(0, len(prompt), 4)] or [0]
    return None


class Handler(BaseHTTPRequestHandler):
    server_version = "standin-vllm/1"

    def log_message(self, fmt, *args):
        if ENGINE.a.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def send_json(self, code, obj, extra_headers=()):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def error(self, code, message, kind="BadRequestError"):
        self.send_json(code, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def do_GET(self):
        a = ENGINE.a
        if self.path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{
                "id": a.served_model_name or a.model, "object": "model", "created": STARTED,
                "owned_by": "standin", "root": a.model, "parent": None, "max_model_len": a.max_model_len,
                "standin": {"role": a.role, "tensor_parallel_size": a.tp, "kv_transport": a.kv_transport,
                            "time_scale": a.time_scale, "prefix_caching": a.enable_prefix_caching}}]})
        else:
            self.error(404, f"not found: {self.path}", "NotFoundError")

    def read_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n) or b"null")
        except ValueError as e:
            self.error(400, f"the request body is not JSON: {e}")
            return None
        if not isinstance(body, dict):
            self.error(400, "the request body must be a JSON object")
            return None
        return body

    def do_POST(self):
        if self.path == "/v1/completions":
            body = self.read_json()
            if body is not None:
                self.completions(body)
        elif self.path == "/standin/kv_pull":
            # the consumer's read of a producer's KV blocks
            body = self.read_json()
            if body is None:
                return
            with ENGINE.lock:
                n = ENGINE.held.pop(str(body.get("remote_request_id")), None)
            if n is None or (ENGINE.a.role != "producer"):
                self.error(404, f"no KV cache held for request {body.get('remote_request_id')!r}", "NotFoundError")
            else:
                self.send_json(200, {"tokens": n, "engine_id": ENGINE.engine_id})
        else:
            self.error(404, f"not found: {self.path}", "NotFoundError")

    def completions(self, body):
        a = ENGINE.a
        name = a.served_model_name or a.model
        if body.get("model") not in (None, name):
            return self.error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        tokens = tokenize(body.get("prompt"))
        if tokens is None:
            return self.error(400, "prompt must be a string or a list of token ids")
        try:
            max_tokens = int(body.get("max_tokens", 16))
        except (TypeError, ValueError):
            return self.error(400, "max_tokens must be an integer")
        if max_tokens < 1:
            return self.error(400, f"max_tokens must be at least 1, got {max_tokens}.")
        if len(tokens) + max_tokens > a.max_model_len:
            return self.error(400, (
                f"This model's maximum context length is {a.max_model_len} tokens. However, you requested "
                f"{len(tokens) + max_tokens} tokens ({len(tokens)} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."))
        kv = body.get("kv_transfer_params") or {}
        stream = bool(body.get("stream"))
        usage_in_stream = bool((body.get("stream_options") or {}).get("include_usage"))
        rid = self.headers.get("X-Request-Id") or uuid.uuid4().hex
        cid = f"cmpl-{rid}"
        kv_out = None

        # the prompt: prefilled here, or its KV cache pulled from the producer
        cached = 0
        if a.role == "consumer" and kv.get("do_remote_prefill"):
            host, port = kv.get("remote_host"), kv.get("remote_port")
            if not host or not port:
                if not a.peer:
                    return self.error(400, "kv_transfer_params without remote_host/remote_port and no --peer")
                host, port = a.peer.rsplit(":", 1)
            try:
                req = urlrequest.Request(f"http://{host}:{port}/standin/kv_pull",
                                         data=json.dumps({"remote_request_id": kv.get("remote_request_id")}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
                with urlrequest.urlopen(req, timeout=30) as r:
                    pulled = json.loads(r.read())
            except Exception as e:  # noqa: BLE001 (any failure of the pull fails the request)
                return self.error(500, f"KV cache transfer from {host}:{port} failed: {e}", "InternalServerError")
            if pulled.get("tokens") != len(tokens):
                return self.error(500, f"KV cache of {pulled.get('tokens')} tokens for a prompt of {len(tokens)}",
                                  "InternalServerError")
            ENGINE.sleep(ENGINE.transfer_seconds(len(tokens)))
        else:
            cached = ENGINE.prefill(tokens)
        if a.role == "producer" and kv.get("do_remote_decode"):
            with ENGINE.lock:
                ENGINE.held[rid] = len(tokens)
            n_blocks = math.ceil(len(tokens) / BLOCK_TOKENS)
            kv_out = {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": ENGINE.engine_id,
                      "remote_request_id": rid, "remote_block_ids": list(range(n_blocks)),
                      "remote_host": a.host, "remote_port": a.port, "tp_size": a.tp}
            max_tokens = 1

        words = [WORDS[(zlib.crc32(f"{len(tokens)}:{k}".encode())) % len(WORDS)] for k in range(max_tokens)]
        usage = {"prompt_tokens": len(tokens), "total_tokens": len(tokens) + max_tokens,
                 "completion_tokens": max_tokens, "prompt_tokens_details": {"cached_tokens": cached}}
        created = int(time.time())

        if not stream:
            ENGINE.decode(tokens, max_tokens, lambda k: None)
            return self.send_json(200, {
                "id": cid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": "".join(" " + w for w in words), "logprobs": None,
                             "finish_reason": "length", "stop_reason": None}],
                "usage": usage, "kv_transfer_params": kv_out})

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def event(obj):
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        def emit(k):
            last = k == max_tokens - 1
            chunk = {"id": cid, "object": "text_completion", "created": created, "model": name,
                     "choices": [{"index": 0, "text": " " + words[k], "logprobs": None,
                                  "finish_reason": "length" if last else None, "stop_reason": None}]}
            if usage_in_stream:
                chunk["usage"] = None
            event(chunk)

        try:
            ENGINE.decode(tokens, max_tokens, emit)
            if usage_in_stream:
                event({"id": cid, "object": "text_completion", "created": created, "model": name,
                       "choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", required=True)
    ap.add_argument("--served-model-name")
    ap.add_argument("--role", choices=["unified", "producer", "consumer"], default="unified")
    ap.add_argument("--tp", "--tensor-parallel-size", dest="tp", type=int, default=1)
    ap.add_argument("--kv-transport", choices=sorted(TRANSPORTS), default=os.environ.get("KV_TRANSPORT") or "tcp")
    ap.add_argument("--peer", help="the producer's host:port (consumer)")
    ap.add_argument("--max-model-len", type=int, default=32768)
    ap.add_argument("--max-num-batched-tokens", type=int)
    ap.add_argument("--gpu-memory-utilization", type=float)
    ap.add_argument("--enable-prefix-caching", action="store_true")
    ap.add_argument("--time-scale", type=float, default=float(os.environ.get("STANDIN_TIME_SCALE") or 1.0))
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if a.tp < 1 or a.time_scale < 0:
        ap.error("--tp must be at least 1 and --time-scale not negative")
    global ENGINE, STARTED
    ENGINE = Engine(a)
    STARTED = int(time.time())
    httpd = ThreadingHTTPServer((a.host, a.port), Handler)
    httpd.daemon_threads = True
    a.port = httpd.server_address[1]  # with --port 0, the one the system chose
    print(f"standin: serving {a.model} as {a.role} (tp {a.tp}, kv {a.kv_transport}, time scale {a.time_scale}) "
          f"on http://{a.host}:{a.port}", flush=True)
    httpd.serve_forever()


ENGINE = None
STARTED = 0

if __name__ == "__main__":
    main()
