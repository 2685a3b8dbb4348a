#!/usr/bin/env python3
"""The disaggregated-serving proxy (prefill on one vLLM, decode on another),
Python standard library only: what vLLM's toy_proxy_server does for the
NixlConnector, as one process beside the consumer.

    POST /v1/completions   1. to the producer (prefill): the request with
                              max_tokens 1, no streaming, and
                              kv_transfer_params {"do_remote_decode": true};
                           2. to the consumer (decode): the original request
                              with the kv_transfer_params the producer
                              answered; its answer (streamed or not) goes
                              back to the client as it comes.
    GET  /health           200 when both servers answer their /health, else 503
    GET  /v1/models        the consumer's

Both requests carry the same X-Request-Id. A producer's error is returned
as it is (the consumer is not asked).
"""
import argparse
import json
import sys
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

A = None


def upstream(url, body=None, headers=None, timeout=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})},
                                 method="GET" if body is None else "POST")
    return urllib.request.urlopen(req, timeout=timeout or A.timeout)


class Handler(BaseHTTPRequestHandler):
    server_version = "disagg-proxy/1"

    def log_message(self, fmt, *args):
        if A.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def reply(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, code, message):
        self.reply(code, json.dumps({"error": {"message": message, "type": "ProxyError", "code": code}}).encode())

    def relay(self, r):
        """An upstream answer to the client, streamed as it arrives."""
        self.send_response(r.status)
        for k in ("Content-Type", "Content-Length", "Cache-Control"):
            if r.headers.get(k):
                self.send_header(k, r.headers[k])
        self.end_headers()
        while True:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(65536)
            if not chunk:
                break
            self.wfile.write(chunk)
            self.wfile.flush()

    def do_GET(self):
        if self.path == "/health":
            bad = []
            for name, base in (("producer", A.prefill), ("consumer", A.decode)):
                try:
                    with upstream(base + "/health", timeout=5) as r:
                        r.read()
                except (urllib.error.URLError, OSError) as e:
                    bad.append(f"{name} {base}: {e}")
            if bad:
                self.error(503, "; ".join(bad))
            else:
                self.reply(200, b"")
        elif self.path == "/v1/models":
            try:
                with upstream(A.decode + "/v1/models") as r:
                    self.relay(r)
            except urllib.error.HTTPError as e:
                self.relay(e)
            except (urllib.error.URLError, OSError) as e:
                self.error(502, f"consumer {A.decode}: {e}")
        else:
            self.error(404, f"not found: {self.path}")

    def do_POST(self):
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return self.error(404, f"not found: {self.path}")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except ValueError as e:
            return self.error(400, f"the request body is not JSON: {e}")
        if not isinstance(body, dict):
            return self.error(400, "the request body must be a JSON object")
        rid = self.headers.get("X-Request-Id") or uuid.uuid4().hex
        headers = {"X-Request-Id": rid}

        prefill = dict(body, max_tokens=1, stream=False, kv_transfer_params={
            "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
            "remote_block_ids": None, "remote_host": None, "remote_port": None})
        prefill.pop("stream_options", None)
        if "max_completion_tokens" in prefill:
            prefill["max_completion_tokens"] = 1
        try:
            with upstream(A.prefill + self.path, prefill, headers) as r:
                kv = json.loads(r.read()).get("kv_transfer_params")
        except urllib.error.HTTPError as e:
            return self.relay(e)
        except (urllib.error.URLError, OSError, ValueError) as e:
            return self.error(502, f"producer {A.prefill}: {e}")

        decode = dict(body)
        if kv:
            decode["kv_transfer_params"] = kv
        try:
            with upstream(A.decode + self.path, decode, headers) as r:
                self.relay(r)
        except urllib.error.HTTPError as e:
            self.relay(e)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except (urllib.error.URLError, OSError) as e:
            self.error(502, f"consumer {A.decode}: {e}")


def main():
    global A
    ap = argparse.ArgumentParser(description="prefill/decode proxy for disaggregated vLLM (stdlib only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8192)
    ap.add_argument("--prefill", required=True, help="the producer, e.g. http://10.0.0.4:8100")
    ap.add_argument("--decode", required=True, help="the consumer, e.g. http://10.0.0.5:8200")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--verbose", action="store_true")
    A = ap.parse_args()
    A.prefill, A.decode = A.prefill.rstrip("/"), A.decode.rstrip("/")
    httpd = ThreadingHTTPServer((A.host, A.port), Handler)
    httpd.daemon_threads = True
    print(f"disagg_proxy: http://{A.host}:{httpd.server_address[1]} -> prefill {A.prefill}, decode {A.decode}",
          flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
