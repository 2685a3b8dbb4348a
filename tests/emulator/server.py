#!/usr/bin/env python3
"""Start the local AWS emulator (moto + the additions in ``awsemu``).

    python3 tests/emulator/server.py --port 0 --port-file /tmp/emu.port

Binds 127.0.0.1 only. ``--port 0`` picks a free port; the chosen port is
written to ``--port-file`` (atomically, only once the server is listening)
and printed as ``EMULATOR_READY port=<port> url=http://127.0.0.1:<port>``.

The process ends on SIGTERM/SIGINT, when ``--parent-pid`` dies, and when
its standard input is closed if stdin is a pipe or socket (``--stdin-watch
auto``, the default; ``on``/``off`` force it). At exit it kills the
commands still running and removes its temporary state folder.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

LOOPBACK = "127.0.0.1"


def _fast_moto_ec2_import() -> None:
    """Start-up speed only: at import, moto's EC2 region table creates three
    boto3 Sessions (about a second); let them share one."""
    import boto3
    import moto.core  # noqa: F401  (imported outside the window below)

    shared = boto3.Session()
    real = boto3.Session
    boto3.Session = lambda *a, **k: shared if not a and not k else real(*a, **k)  # type: ignore[misc]
    try:
        import moto.ec2.models  # noqa: F401
    finally:
        boto3.Session = real  # type: ignore[misc]


def build_app(verbose: bool = False):  # type: ignore[no-untyped-def]
    """The WSGI application: the emulator middleware around moto's app."""
    warnings.filterwarnings("ignore")
    _fast_moto_ec2_import()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from awsemu.app import EmulatorApp

    return EmulatorApp(DomainDispatcherApplication(create_backend_app), verbose=verbose)


def _write_port_file(path: str, port: int) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=directory)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{port}\n")
    os.replace(tmp, path)


def _stdin_is_pipe() -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = a free one)")
    parser.add_argument("--port-file", help="write the chosen port to this file once listening")
    parser.add_argument("--state-dir", help="folder for the instances' sandboxes (default: a temporary one)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    parser.add_argument("--stdin-watch", choices=["auto", "on", "off"], default="auto",
                        help="exit when stdin closes (auto: only if stdin is a pipe)")
    parser.add_argument("--interruption-delay", type=float, default=2.0,
                        help="seconds between a spot interruption notice and the termination")
    parser.add_argument("--node-path", choices=["full", "minimal"], default="full",
                        help="PATH of the commands run by Run Command (minimal: basic tools only)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    # The emulator's own moto must never use a real account or the network.
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(key, None)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")

    from werkzeug.serving import WSGIRequestHandler, make_server

    from awsemu import runcommand, user_data
    from awsemu.state import CONFIG

    own_state_dir = not args.state_dir
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="infra-aws-emulator-")
    os.makedirs(state_dir, exist_ok=True)
    CONFIG.state_dir = os.path.abspath(state_dir)
    CONFIG.interruption_delay = args.interruption_delay
    CONFIG.node_path = args.node_path

    app = build_app(verbose=args.verbose)

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *a, **k):  # type: ignore[no-untyped-def]
            if args.verbose:
                super().log_request(*a, **k)

    server = make_server(LOOPBACK, args.port, app, threaded=True, request_handler=QuietHandler)
    server.daemon_threads = True
    server.block_on_close = False
    port = server.server_address[1]
    CONFIG.port = port
    os.environ["MOTO_PORT"] = str(port)

    stopping = threading.Event()

    def cleanup() -> None:
        try:
            runcommand.kill_all()
            user_data._reset(None)
        except Exception:
            pass
        try:
            # every instance's processes (daemons, idle watchers): addition 15
            from awsemu import shutdown

            shutdown.kill_everything()
        except Exception:
            pass
        if own_state_dir:
            shutil.rmtree(CONFIG.state_dir, ignore_errors=True)
        if args.port_file:
            try:
                with open(args.port_file) as fh:
                    if fh.read().strip() == str(port):
                        os.remove(args.port_file)
            except OSError:
                pass

    atexit.register(cleanup)

    def stop(*_: object) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, stop)

    if args.stdin_watch == "on" or (args.stdin_watch == "auto" and _stdin_is_pipe()):
        def watch_stdin() -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except Exception:
                pass
            stop()

        threading.Thread(target=watch_stdin, daemon=True, name="stdin-watch").start()

    if args.parent_pid:
        def watch_parent() -> None:
            while not stopping.is_set():
                try:
                    os.kill(args.parent_pid, 0)
                except ProcessLookupError:
                    stop()
                    return
                except PermissionError:
                    pass
                time.sleep(0.5)

        threading.Thread(target=watch_parent, daemon=True, name="parent-watch").start()

    if args.port_file:
        _write_port_file(args.port_file, port)
    print(f"EMULATOR_READY port={port} url=http://{LOOPBACK}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        cleanup()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's slow teardown of moto's many modules.
    os._exit(code)
