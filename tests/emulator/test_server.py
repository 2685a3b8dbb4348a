"""The emulator process: one command, port file, loopback only, exit when
its parent is gone. (Exit on stdin close is checked at the end of every test
run by the ``emulator`` fixture; SIGTERM is harness.Emulator's fallback.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

from harness import SERVER, wait_until


def test_start_with_one_command_loopback_only_and_exit_with_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    port_file = tmp_path / "emu.port"
    proc = subprocess.Popen([sys.executable, SERVER, "--port", "0", "--port-file", str(port_file),
                             "--parent-pid", str(parent.pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(port_file.exists, timeout=40), "no port file"
        port = int(port_file.read_text())
        assert proc.stdout.readline().decode().startswith(f"EMULATOR_READY port={port}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        health = json.loads(opener.open(f"http://127.0.0.1:{port}/_emulator/health").read())
        assert health["status"] == "ok"
        # bound to 127.0.0.1 only: another address of this machine is refused
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex(("127.0.0.2", port)) != 0
        parent.kill()
        parent.wait()
        assert proc.wait(timeout=10) == 0
        assert not port_file.exists()  # removed at exit
    finally:
        for p in (proc, parent):
            if p.poll() is None:
                p.kill()
