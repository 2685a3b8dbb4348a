#!/usr/bin/env python3
"""Quickstart client: POST requests to the server, write latency statistics."""
import argparse, json, os, statistics, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

ap = argparse.ArgumentParser()
ap.add_argument("--url", required=True)
ap.add_argument("--requests", type=int, required=True)
ap.add_argument("--concurrency", type=int, default=1)
ap.add_argument("--payload", type=int, default=256)
ap.add_argument("--out", required=True)
a = ap.parse_args()
body = b"x" * a.payload


def one(_):
    t0 = time.perf_counter()
    req = urllib.request.Request(a.url + "/echo", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.read() == body
    return (time.perf_counter() - t0) * 1000


t0 = time.perf_counter()
with ThreadPoolExecutor(a.concurrency) as ex:
    lat = sorted(ex.map(one, range(a.requests)))
wall = time.perf_counter() - t0
res = {"url": a.url, "requests": a.requests, "concurrency": a.concurrency, "payload_bytes": a.payload,
       "throughput_rps": round(a.requests / wall, 3), "latency_ms_p50": round(statistics.median(lat), 3),
       "latency_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
       "client_node": os.environ.get("INFRA_NODE_NAME", "")}
with open(a.out, "w") as f:
    json.dump(res, f)
print(json.dumps(res))
