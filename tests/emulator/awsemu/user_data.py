"""Addition 14: the user data of infra's controller instances runs.

What moto lacks: an instance's user data is stored and never runs.

What the emulator does, for instances tagged ``infra:role`` =
``controller`` (infra's detached controller, created by a stack; addition
13) and only for them: once the instance exists, its decoded user data
runs with ``bash`` in the instance's sandbox folder (its "/": cloud-init
starts user data in /, so relative paths land in the sandbox), with the
environment and the node credentials of Run Command (addition 1, full
PATH: Amazon Linux has the awscli and curl) and these commands put first
on its PATH, each doing what the real one does for the arguments infra's
user data uses and failing loudly (exit 1, a message on stderr) for any
other:

- ``systemctl daemon-reload`` (nothing to do) and ``systemctl enable
  [--now] <unit>[.service]``: the unit file
  ``etc/systemd/system/<unit>.service`` of the sandbox is read; with
  ``--now`` its ``ExecStart`` (absolute path; a path that exists inside the
  sandbox is taken from there, else from the host; no ``-@+!`` prefixes,
  no ``$``/``%`` expansion) runs in ``WorkingDirectory`` (inside the
  sandbox) with the instance's environment plus the unit's
  ``Environment=`` lines, its output appended to
  ``var/log/<unit>.log``; ``Restart=on-failure`` starts it again after
  ``RestartSec`` (default 0.1 s) when it exits non-zero or by a signal,
  ``Restart=always`` also after exit 0, ``Restart=no`` never. When the main
  process ends, what it started in its process group is stopped (TERM, KILL
  after 5 s), as systemd stops the unit's control group.
  ``systemctl is-active <unit>`` answers ``active``/``inactive``.
- ``shutdown [-h|-P] now``, ``shutdown -P +N`` (N minutes, the emulator's
  timer), ``poweroff``, ``halt -p``: the instance is terminated (infra's
  instances shut down with behaviour ``terminate``), at once or after N
  minutes.

The user data's own output goes to ``var/log/cloud-init-output.log``.
When the instance leaves ``running`` (terminated, stopped; its stack
deleted), every process of the user data and of its units is killed
(process group), and units are not started again.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .state import CONFIG, MOTO_LOCK, find_instance, instance_tags, on_reset, sandbox_dir

ROLE_TAG = "infra:role"
CONTROLLER = "controller"
SHIMS = ("systemctl", "shutdown", "poweroff", "halt")


@dataclass
class Booted:
    instance: Any
    account_id: str
    region: str
    root: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)  # unit -> "active" | "inactive" | "failed"
    gone: bool = False


_lock = threading.RLock()
_booted: dict[str, Booted] = {}


def _shim_dir() -> str:
    """The folder of the shims (written once per emulator)."""
    d = os.path.join(CONFIG.state_dir, "user-data-bin")
    os.makedirs(d, exist_ok=True)
    for name in SHIMS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            continue
        with open(path + ".tmp", "w") as fh:
            fh.write(f"""#!{sys.executable}
# {name} on an emulated instance: forwards its arguments to the emulator
# (tests/emulator/awsemu/user_data.py), which does what {name} does or fails.
import json, os, sys, urllib.error, urllib.request
body = json.dumps({{"instance_id": os.environ["INFRA_INSTANCE_ID"], "command": {name!r},
                   "args": sys.argv[1:]}}).encode()
req = urllib.request.Request(os.environ["INFRA_EMULATOR_URL"] + "/_emulator/instance-command", data=body,
                             headers={{"Content-Type": "application/json"}}, method="POST")
try:
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.load(resp)
except urllib.error.HTTPError as err:
    print({name!r} + ": " + json.load(err).get("error", str(err)), file=sys.stderr)
    sys.exit(1)
sys.stdout.write(out.get("stdout", ""))
sys.exit(int(out.get("code", 0)))
""")
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
    return d


def _env(b: Booted) -> dict[str, str]:
    from .runcommand import instance_env

    env = instance_env(b.account_id, b.region, b.instance.id, b.root)
    env["PATH"] = _shim_dir() + os.pathsep + env["PATH"]
    return env


def _user_data(instance: Any) -> str:
    raw = instance.user_data
    if isinstance(raw, list):
        raw = raw[0] if raw else ""
    if raw is None or raw == "":
        return ""
    if not isinstance(raw, (str, bytes)):
        # moto's Base64EncodedString (from a launch template)
        return raw.decode()
    try:
        return base64.b64decode(raw).decode("utf-8", "replace")
    except ValueError:
        return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def boot_if_controller(instance: Any, account_id: str, region: str) -> None:
    """Run the instance's user data if it is an infra controller."""
    if instance_tags(instance).get(ROLE_TAG) != CONTROLLER:
        return
    script = _user_data(instance)
    root = sandbox_dir(instance.id)
    b = Booted(instance, account_id, region, root)
    with _lock:
        _booted[instance.id] = b
    if not script.strip():
        return
    threading.Thread(target=_boot, args=(b, script), daemon=True, name=f"user-data-{instance.id}").start()
    threading.Thread(target=_watch, args=(b,), daemon=True, name=f"watch-{instance.id}").start()


def _boot(b: Booted, script: str) -> None:
    # wait until the instance runs (moto's instances start "running"), as cloud-init does
    path = os.path.join(b.root, ".emulator-user-data")
    with open(path, "w") as fh:
        fh.write(script)
    log = os.path.join(b.root, "var", "log")
    os.makedirs(log, exist_ok=True)
    with open(os.path.join(log, "cloud-init-output.log"), "ab") as out:
        with _lock:
            if b.gone:
                return
            proc = subprocess.Popen(["bash", path], cwd=b.root, env=_env(b), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True)
            b.procs.append(proc)
    proc.wait()


def _watch(b: Booted) -> None:
    """Kill everything of the instance once it leaves running."""
    while True:
        with MOTO_LOCK:
            state = b.instance.state
        if state != "running" or b.gone:
            _kill_instance(b)
            return
        time.sleep(0.2)


def _stop_group(proc: subprocess.Popen) -> None:
    """TERM to the process group, KILL what is left after a grace (as systemd
    stops a unit's control group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_instance(b: Booted) -> None:
    with _lock:
        b.gone = True
        procs = list(b.procs)
        for unit in b.units:
            b.units[unit] = "inactive"
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ------------------------------------------------------------- commands


class CommandError(Exception):
    pass


def _unit_file(b: Booted, unit: str) -> str:
    if "/" in unit or not unit:
        raise CommandError(f"invalid unit name {unit!r}")
    name = unit if "." in unit else unit + ".service"
    if not name.endswith(".service"):
        raise CommandError(f"only .service units are emulated, not {name}")
    path = os.path.join(b.root, "etc", "systemd", "system", name)
    if not os.path.isfile(path):
        raise CommandError(f"Unit file {name} does not exist.")
    return path


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] section of a unit file: key -> values in order."""
    section = ""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _inside(b: Booted, path: str) -> str:
    """An absolute path of the instance: inside the sandbox if it is there."""
    if not path.startswith("/"):
        raise CommandError(f"ExecStart and WorkingDirectory must be absolute paths, not {path!r}")
    local = os.path.join(b.root, path.lstrip("/"))
    return local if os.path.exists(local) else path


def _start_unit(b: Booted, unit: str, path: str) -> None:
    with open(path) as fh:
        svc = parse_unit(fh.read())
    execs = svc.get("ExecStart") or []
    if len(execs) != 1:
        raise CommandError(f"{unit}: exactly one ExecStart= is emulated, found {len(execs)}")
    line = execs[0]
    if line[:1] in "-@+!:" or "$" in line or "%" in line:
        raise CommandError(f"{unit}: ExecStart prefixes and $/% expansion are not emulated: {line}")
    argv = shlex.split(line)
    argv[0] = _inside(b, argv[0])
    cwd = _inside(b, (svc.get("WorkingDirectory") or ["/"])[0])
    if not os.path.isdir(cwd):
        raise CommandError(f"{unit}: WorkingDirectory {cwd} does not exist")
    env = _env(b)
    for e in svc.get("Environment") or []:
        for item in shlex.split(e):
            if "=" not in item:
                raise CommandError(f"{unit}: bad Environment= {item!r}")
            k, v = item.split("=", 1)
            env[k] = v
    restart = (svc.get("Restart") or ["no"])[-1]
    if restart not in ("no", "on-failure", "always"):
        raise CommandError(f"{unit}: Restart={restart} is not emulated")
    delay = float((svc.get("RestartSec") or ["0.1"])[-1].rstrip("s") or 0.1)
    log = os.path.join(b.root, "var", "log", unit.removesuffix(".service") + ".log")
    os.makedirs(os.path.dirname(log), exist_ok=True)

    def supervise() -> None:
        while True:
            with open(log, "ab") as out, _lock:
                if b.gone:
                    return
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=out, start_new_session=True)
                b.procs.append(proc)
                b.units[unit] = "active"
            rc = proc.wait()
            # KillMode=control-group: what the main process started goes with it
            _stop_group(proc)
            with _lock:
                if b.gone:
                    return
                b.units[unit] = "inactive" if rc == 0 else "failed"
            if restart == "no" or (restart == "on-failure" and rc == 0):
                return
            time.sleep(delay)

    threading.Thread(target=supervise, daemon=True, name=f"unit-{b.instance.id}-{unit}").start()


def _systemctl(b: Booted, args: list[str]) -> str:
    if args == ["daemon-reload"]:
        return ""
    if args[:1] == ["is-active"] and len(args) == 2:
        return b.units.get(args[1] if "." in args[1] else args[1] + ".service", "inactive") + "\n"
    if args[:1] == ["enable"]:
        rest = args[1:]
        now = "--now" in rest
        units = [a for a in rest if a != "--now"]
        if not units or any(u.startswith("-") for u in units):
            raise CommandError(f"unsupported arguments: {' '.join(args)}")
        for u in units:
            name = u if "." in u else u + ".service"
            path = _unit_file(b, name)
            if now and b.units.get(name) != "active":
                _start_unit(b, name, path)
        return ""
    raise CommandError(f"the emulator supports daemon-reload, enable [--now] and is-active, not: {' '.join(args)}")


def _terminate(b: Booted, after: float) -> None:
    def fire() -> None:
        with MOTO_LOCK:
            if b.instance.state == "running":
                b.instance.ec2_backend.terminate_instances([b.instance.id])

    if after <= 0:
        fire()
    else:
        threading.Timer(after, fire).start()


def _shutdown(b: Booted, command: str, args: list[str]) -> str:
    if command == "poweroff" and not args:
        _terminate(b, 0)
        return ""
    if command == "halt" and args == ["-p"]:
        _terminate(b, 0)
        return ""
    if command == "shutdown":
        rest = [a for a in args if a not in ("-h", "-P")]
        if rest[:1] == ["now"] and len(rest) <= 2:
            _terminate(b, 0)
            return ""
        if rest and rest[0].startswith("+") and rest[0][1:].isdigit() and len(rest) <= 2:
            _terminate(b, 60 * int(rest[0][1:]))
            return ""
    raise CommandError(f"the emulator supports shutdown [-h|-P] now|+N, poweroff, halt -p, not: "
                       f"{command} {' '.join(args)}")


def handle_command(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``POST /_emulator/instance-command`` from a shim: (HTTP status, answer)."""
    iid = body.get("instance_id") or ""
    with _lock:
        b = _booted.get(iid)
    if b is None:
        found = find_instance(iid)
        if found is None:
            return 404, {"error": f"unknown instance {iid}"}
        return 409, {"error": f"{iid} is no infra controller: its user data does not run on the emulator"}
    command, args = body.get("command"), [str(a) for a in body.get("args") or []]
    try:
        if command == "systemctl":
            return 200, {"stdout": _systemctl(b, args)}
        if command in ("shutdown", "poweroff", "halt"):
            return 200, {"stdout": _shutdown(b, command, args)}
    except CommandError as err:
        return 400, {"error": str(err)}
    return 400, {"error": f"unknown command {command!r}"}


@on_reset
def _reset(account_id: str | None) -> None:
    with _lock:
        gone = [b for b in _booted.values() if account_id is None or b.account_id == account_id]
        for b in gone:
            _booted.pop(b.instance.id, None)
    for b in gone:
        _kill_instance(b)
