"""Start and stop the emulator from Python tests.

    from harness import Emulator

    with Emulator() as emu:
        ec2 = emu.client("ec2", account_id="111122223333")
        ...

``Emulator`` runs ``server.py --port 0 --port-file ...`` in a subprocess
(stdin a pipe, so the server also ends if this process dies), waits until
the port file exists and ``/_emulator/health`` answers, and kills the
server on exit. ``emu.url`` is the endpoint for ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")
DEFAULT_ACCOUNT_ID = "123456789012"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (or time runs out)."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(interval)


def awscli() -> str:
    """The ``aws`` command installed with this interpreter (else the one on PATH)."""
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), "aws")
    return beside if os.path.exists(beside) else (shutil.which("aws") or "aws")


def new_account_id() -> str:
    """A random 12-digit account id, for one test's own account."""
    return str(random.randint(10**11, 10**12 - 1))


class Emulator:
    def __init__(self, *, extra_args: list[str] | None = None, startup_timeout: float = 30.0,
                 verbose: bool = False):
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.exit_reason: str | None = None
        self._tmp = tempfile.mkdtemp(prefix="emu-harness-")
        self.port_file = os.path.join(self._tmp, "port")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Emulator":
        cmd = [sys.executable, SERVER, "--port", "0", "--port-file", self.port_file,
               "--parent-pid", str(os.getpid())] + self.extra_args
        if self.verbose:
            cmd.append("--verbose")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=None if self.verbose else subprocess.DEVNULL, env=env)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode} during start-up")
            if os.path.exists(self.port_file):
                with open(self.port_file) as fh:
                    text = fh.read().strip()
                if text:
                    self.port = int(text)
                    try:
                        self.control("GET", "health")
                        return self
                    except OSError:
                        pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("emulator did not start in time")

    def stop(self) -> None:
        """Close the server's stdin (it exits by itself), else SIGTERM, else
        SIGKILL. ``exit_reason`` tells which one ended it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
                self.exit_reason = "stdin"
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                    self.exit_reason = "sigterm"
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    self.exit_reason = "sigkill"
        self.proc = None

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- helpers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, account_id: str = DEFAULT_ACCOUNT_ID, region: str = "us-east-1") -> dict[str, str]:
        """Environment for a child process (awscli, the infra binary) that
        should talk to this emulator in ``account_id``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": account_id,
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_PAGER": "",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        return env

    def client(self, service: str, account_id: str = DEFAULT_ACCOUNT_ID, region: str = "us-east-1",
               **kwargs: Any) -> Any:
        """A boto3 client for the emulator in ``account_id`` (sent as the
        ``x-moto-account-id`` header)."""
        import boto3
        from botocore.config import Config

        config = kwargs.pop("config", None) or Config(retries={"total_max_attempts": 1, "mode": "standard"})
        client = boto3.client(service, endpoint_url=self.url, region_name=region,
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=config, **kwargs)

        def add_account(request: Any, **_: Any) -> None:
            request.headers["x-moto-account-id"] = account_id

        client.meta.events.register("before-sign.*.*", add_account)
        return client

    def control(self, method: str, name: str, body: dict[str, Any] | None = None,
                account_id: str | None = None) -> Any:
        """Call the control API, e.g. ``control("POST", "interrupt", {...})``."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/_emulator/{name}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if account_id:
            req.add_header("x-moto-account-id", account_id)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")


def main() -> None:
    """``python3 harness.py``: start an emulator and print its URL until ^C."""
    with Emulator(verbose=True) as emu:
        print(emu.url, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
