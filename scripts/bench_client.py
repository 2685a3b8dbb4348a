#!/usr/bin/env python3
"""The inference team's benchmark client: closed-loop load on an
OpenAI-compatible server (vLLM, the disaggregated proxy, or the local
stand-in), Python standard library only.

`--concurrency` workers each send requests one after the other: `--warmup`
requests first (not measured), then `--iterations` measured ones. Prompts are
token ids (exactly `--prompt-tokens` of them, deterministic from `--seed`)
and every request asks for exactly `--max-tokens` (`ignore_eos`).
`--mode online` streams (SSE) and measures time to first token and the gaps
between tokens; `--mode offline` waits for whole answers (end-to-end latency
only).

Writes one flat JSON object (`--out`, the task's table row): TTFT, TPOT, ITL
and end-to-end latency (mean, p50, p90, p99, in ms), request and token
throughput, successful and failed requests, token counts, and the settings.
Exits 1 when no measured request succeeded.
"""
import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def stats(prefix, xs):
    out = {}
    for name, v in (("mean", sum(xs) / len(xs) if xs else None), ("p50", percentile(xs, 50)),
                    ("p90", percentile(xs, 90)), ("p99", percentile(xs, 99))):
        out[f"{prefix}_{name}"] = None if v is None else round(v, 3)
    return out


VOCAB = range(1000, 30000)  # ids every tokenizer of the models served has


def prompt_ids(seed, i, n):
    return random.Random(seed * 1_000_003 + i).choices(VOCAB, k=n)


def one_request(a, i):
    """One request; returns a dict of its timings (seconds) or raises."""
    body = {"model": a.model, "prompt": prompt_ids(a.seed, i, a.prompt_tokens), "max_tokens": a.max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": a.mode == "online"}
    if a.mode == "online":
        body["stream_options"] = {"include_usage": True}
    req = urllib.request.Request(a.url.rstrip("/") + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    t0 = time.perf_counter()
    arrivals, usage = [], None
    with urllib.request.urlopen(req, timeout=a.timeout) as r:
        if a.mode == "offline":
            res = json.loads(r.read())
            end = time.perf_counter()
            usage = res.get("usage") or {}
            return {"e2e": end - t0, "ttft": None, "gaps": [], "tokens": usage.get("completion_tokens", 0),
                    "prompt": usage.get("prompt_tokens", a.prompt_tokens)}
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"].get("message", chunk["error"]))
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(c.get("text") for c in chunk.get("choices") or []):
                arrivals.append(time.perf_counter())
    end = time.perf_counter()
    if not arrivals:
        raise RuntimeError("the stream ended without a token")
    usage = usage or {}
    return {"e2e": end - t0, "ttft": arrivals[0] - t0,
            "gaps": [b - x for x, b in zip(arrivals, arrivals[1:])],
            "tokens": usage.get("completion_tokens", len(arrivals)),
            "prompt": usage.get("prompt_tokens", a.prompt_tokens)}


def run(a, first, count):
    """`count` requests numbered from `first`, by `--concurrency` workers."""
    results, errors = [], []
    lock = threading.Lock()
    next_i = [first]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= first + count:
                    return
                next_i[0] += 1
            try:
                res = one_request(a, i)
                with lock:
                    results.append(res)
            except (urllib.error.URLError, OSError, ValueError, RuntimeError) as e:
                detail = e.read().decode("utf-8", "replace")[:300] if isinstance(e, urllib.error.HTTPError) else ""
                with lock:
                    errors.append(f"{e} {detail}".strip())

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(max(1, a.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, time.perf_counter() - t0


def server_info(a):
    try:
        with urllib.request.urlopen(a.url.rstrip("/") + "/v1/models", timeout=30) as r:
            m = (json.loads(r.read()).get("data") or [{}])[0]
        return m.get("owned_by", ""), (m.get("standin") or {}).get("time_scale")
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"bench_client: GET /v1/models failed: {e}", file=sys.stderr)
        return "", None


def main():
    ap = argparse.ArgumentParser(description="OpenAI-compatible serving benchmark (stdlib only)")
    ap.add_argument("--url", required=True, help="the server, e.g. http://10.0.0.5:8000")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--mode", choices=["online", "offline"], default="online")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.prompt_tokens < 1 or a.max_tokens < 1 or a.iterations < 1 or a.concurrency < 1 or a.warmup < 0:
        ap.error("--prompt-tokens, --max-tokens, --iterations and --concurrency must be at least 1")

    server, time_scale = server_info(a)
    if a.warmup:
        _, werr, wdur = run(a, 0, a.warmup)
        print(f"bench_client: warm-up {a.warmup} request(s) in {wdur:.2f} s, {len(werr)} failed", file=sys.stderr)
    res, errors, duration = run(a, a.warmup, a.iterations)
    for e in sorted(set(errors))[:5]:
        print(f"bench_client: request failed: {e}", file=sys.stderr)

    ms = lambda xs: [x * 1000 for x in xs if x is not None]  # noqa: E731
    out_tokens = sum(r["tokens"] for r in res)
    in_tokens = sum(r["prompt"] for r in res)
    tpot = [(r["e2e"] - r["ttft"]) / (r["tokens"] - 1) for r in res if r["ttft"] is not None and r["tokens"] > 1]
    row = {
        "server": server, "mode": a.mode, "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens,
        "concurrency": a.concurrency, "warmup_requests": a.warmup, "measured_requests": a.iterations,
        "successful_requests": len(res), "failed_requests": len(errors),
        "duration_s": round(duration, 3),
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput_rps": round(len(res) / duration, 3) if duration > 0 else None,
        "output_token_throughput_tps": round(out_tokens / duration, 2) if duration > 0 else None,
        "total_token_throughput_tps": round((in_tokens + out_tokens) / duration, 2) if duration > 0 else None,
    }
    row.update(stats("ttft_ms", ms(r["ttft"] for r in res)))
    row.update(stats("tpot_ms", ms(tpot)))
    row.update(stats("itl_ms", ms(g for r in res for g in r["gaps"])))
    row.update(stats("e2e_latency_ms", ms(r["e2e"] for r in res)))
    if time_scale is not None:
        row["standin_time_scale"] = time_scale
    with open(a.out, "w") as f:
        json.dump(row, f, indent=1)
    print(json.dumps(row))
    if not res:
        print(f"bench_client: none of the {a.iterations} measured requests succeeded"
              + (f": {errors[0]}" if errors else ""), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
