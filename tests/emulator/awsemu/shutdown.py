"""Addition 13: an instance that shuts itself down, and what dies with it.

What moto lacks: moto runs no operating system, so nothing inside an
instance can shut it down; an instance's ``InstanceInitiatedShutdownBehavior``
(``RunInstances`` or a launch template's) means nothing; a terminated or
stopped instance's processes (the emulator runs its commands as host
processes, addition 1) go on running when they left the command's process
group (a daemon, a step in its own session).

What the emulator does:

- Every command of Run Command finds ``shutdown``, ``poweroff`` and ``halt``
  first on its PATH (a folder ``<state-dir>/node-sbin``, before the rest in
  both PATH modes). They act on the command's own instance as the OS would:
  ``shutdown -h now`` / ``shutdown -P now`` / ``shutdown now`` / ``poweroff`` /
  ``halt``: at once; ``shutdown [-h|-P] +M``: in M minutes (``shutdown``
  with no time: in 1 minute, as systemd's); ``shutdown -c``: cancels a
  scheduled one; ``-r`` / ``reboot``: refused (exit 1). They call
  ``POST /_emulator/instance-shutdown``.
- The instance then goes by its ``InstanceInitiatedShutdownBehavior``:
  ``terminate`` → terminated with state reason
  ``Client.InstanceInitiatedShutdown: Instance initiated shutdown``, and an
  active ``maintain`` fleet replaces it (as EC2 fleets replace any instance
  that stops running); ``stop`` (EC2's default) → stopped, same reason.
  Fleet instances take the behaviour from their launch template (addition 3).
- Whenever an instance stops or terminates (any way: TerminateInstances,
  stack deletion, interruption, its own shutdown), every host process whose
  environment carries ``INFRA_INSTANCE_ID=<id>`` of this emulator
  (``INFRA_EMULATOR_URL``) is killed: nothing runs on a machine that is off.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
from typing import Any

from .state import CONFIG, MOTO_LOCK, find_instance, on_reset

REASON = ("Client.InstanceInitiatedShutdown: Instance initiated shutdown", "Client.InstanceInitiatedShutdown")
COMMANDS = ("shutdown", "poweroff", "halt")

_lock = threading.Lock()
_timers: dict[str, threading.Timer] = {}

_SHIM = '''#!{python}
"""The emulator's {name}: shuts down this command's instance (addition 15)."""
import json, os, sys, urllib.request

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
cancel = "-c" in args
if "-r" in args or "--reboot" in args:
    print(name + ": reboot is not supported by the emulator", file=sys.stderr)
    sys.exit(1)
delay = 0.0 if name != "shutdown" else 60.0
for a in args:
    if a == "now":
        delay = 0.0
    elif a.startswith("+") and a[1:].isdigit():
        delay = 60.0 * int(a[1:])
body = {{"instance_id": os.environ.get("INFRA_INSTANCE_ID", ""),
        "account_id": os.environ.get("INFRA_EMULATOR_ACCOUNT", ""),
        "delay_seconds": delay, "cancel": cancel}}
req = urllib.request.Request(os.environ["INFRA_EMULATOR_URL"] + "/_emulator/instance-shutdown",
                             data=json.dumps(body).encode(), method="POST",
                             headers={{"Content-Type": "application/json"}})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.read().decode())
except Exception as exc:
    print(name + ": " + str(exc), file=sys.stderr)
    sys.exit(1)
'''


def shim_dir() -> str:
    """The folder of the shims (created on first use)."""
    folder = os.path.join(CONFIG.state_dir, "node-sbin")
    with _lock:
        if os.path.isdir(folder):
            return folder
        tmp = folder + ".tmp"
        os.makedirs(tmp, exist_ok=True)
        for name in COMMANDS:
            path = os.path.join(tmp, name)
            with open(path, "w") as fh:
                fh.write(_SHIM.format(python=sys.executable, name=name))
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.rename(tmp, folder)
    return folder


def behaviour(instance: Any) -> str:
    return (getattr(instance, "_emu_shutdown_behavior", None)
            or getattr(instance, "instance_initiated_shutdown_behavior", None) or "stop")


def request_shutdown(instance_id: str, account_id: str | None, delay_seconds: float = 0.0,
                     cancel: bool = False) -> dict[str, Any]:
    found = find_instance(instance_id, account_id or None)
    if found is None:
        raise KeyError(f"instance {instance_id} not found")
    instance = found[0]
    with _lock:
        old = _timers.pop(instance_id, None)
    if old is not None:
        old.cancel()
    if cancel:
        return {"instance_id": instance_id, "cancelled": old is not None}
    if instance.state != "running":
        raise ValueError(f"instance {instance_id} is {instance.state}, not running")
    how = behaviour(instance)
    if delay_seconds > 0:
        timer = threading.Timer(delay_seconds, lambda: _shut_down(instance))
        timer.daemon = True
        with _lock:
            _timers[instance_id] = timer
        timer.start()
    else:
        # after the answer: the caller's processes die with the instance
        threading.Timer(0.2, lambda: _shut_down(instance)).start()
    return {"instance_id": instance_id, "behavior": how, "delay_seconds": delay_seconds}


def _shut_down(instance: Any) -> None:
    from moto.ec2.models.instances import StateReason

    from . import cfn_fleets

    with _lock:
        _timers.pop(instance.id, None)
    with MOTO_LOCK:
        if instance.state != "running":
            return
        backend = instance.ec2_backend
        terminate = behaviour(instance) == "terminate"
        if terminate:
            backend.terminate_instances([instance.id])
        else:
            backend.stop_instances([instance.id])
        instance.state_reason = StateReason(*REASON)
        instance._reason = REASON[0]
        if terminate:
            cfn_fleets.replace_interrupted(instance)


# ------------------------------------------------- processes of an instance


def _processes_of(instance_id: str) -> list[int]:
    want = f"INFRA_INSTANCE_ID={instance_id}".encode()
    mine = f"INFRA_EMULATOR_URL={CONFIG.endpoint_url()}".encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if want in env and mine in env:
            out.append(int(name))
    return out


def kill_processes(instance_id: str) -> int:
    """SIGKILL every process of the instance; how many."""
    pids = _processes_of(instance_id)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(pids)


def kill_everything() -> None:
    """Every process of every instance of this emulator (at its exit)."""
    _reset(None)


@on_reset
def _reset(account_id: str | None) -> None:
    """A reset account's instances are gone: so are their processes."""
    mine = f"INFRA_EMULATOR_URL={CONFIG.endpoint_url()}".encode()
    acct = f"INFRA_EMULATOR_ACCOUNT={account_id}".encode() if account_id else None
    with _lock:
        for t in _timers.values():
            t.cancel()
        _timers.clear()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if mine in env and any(e.startswith(b"INFRA_INSTANCE_ID=") for e in env) and (acct is None or acct in env):
            try:
                os.kill(int(name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _after_power_off(instance_id: str) -> None:
    threading.Thread(target=kill_processes, args=(instance_id,), daemon=True).start()


_installed = False


def install() -> None:
    """Kill an instance's processes when moto stops or terminates it."""
    global _installed
    if _installed:
        return
    _installed = True
    from moto.ec2.models.instances import Instance

    original_terminate = Instance.terminate
    original_stop = Instance.stop

    def terminate(self: Any) -> Any:
        result = original_terminate(self)
        _after_power_off(self.id)
        return result

    def stop(self: Any) -> Any:
        result = original_stop(self)
        _after_power_off(self.id)
        return result

    Instance.terminate = terminate  # type: ignore[method-assign]
    Instance.stop = stop  # type: ignore[method-assign]
