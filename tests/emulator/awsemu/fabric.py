"""Addition 17: EFA devices that the node tools can see, and their faults.

What moto lacks: moto runs no operating system, so an instance's network
interfaces of ``InterfaceType: efa`` (a launch template's, a fleet's) are
only data; nothing on the "instance" can tell whether it got EFA devices,
and no two instances can exchange EFA traffic. On a real Deep Learning AMI,
``fi_info -p efa`` (libfabric, in ``/opt/amazon/efa/bin``) lists one EFA
device per EFA interface, and ``fi_pingpong -p efa`` between two instances
shows whether EFA traffic flows (it does not when the security group does
not let the group's traffic in and out, or the instances are in different
zones).

What the emulator does:

- An instance launched by a fleet (addition 3) or by ``AWS::EC2::Instance``
  (addition 13) from a launch template has as many EFA devices as the
  template has network interfaces of type ``efa`` (or ``efa-only``).
- Every command of Run Command finds ``fi_info`` and ``fi_pingpong`` on its
  PATH (``<state-dir>/node-fabric``; linked into the minimal PATH of
  addition 11 like the shutdown shims; a script that
  puts ``/opt/amazon/efa/bin`` first still finds them, that folder does not
  exist here). They answer as libfabric's tools do:

  - ``fi_info -p efa [-t FI_EP_RDM|FI_EP_DGRAM]``: one entry per device and
    endpoint type (``provider: efa``, ``fabric: efa``, ``domain:
    rdmap<..>-rdm`` / ``-dgrm``, ``version: 122.0``, ``type``, ``protocol:
    FI_PROTO_EFA``), exit 0; on an instance without EFA devices
    ``fi_getinfo: -61 (No data available)``, exit 1. ``fi_info -l`` lists
    the providers (``efa`` only where there are devices).
  - ``fi_pingpong -p efa [-e rdm] [-I iterations] [-S size] [-B port]
    [-P port] [server]``: without ``server`` it waits for one client on the
    instance's private address (addition 16) and port 47592 (``-B``), with
    it it connects there (``-P``; refused: ``Connection refused``, exit 1,
    as the real one when the server is not up yet). Both sides then really
    exchange ``iterations`` messages of ``size`` bytes over that connection
    and print libfabric's table (``bytes #sent #ack total time MB/sec
    usec/xfer Mxfers/sec``). An instance without EFA devices fails at once
    like ``fi_info``.

- Faults, per instance (``POST /_emulator/efa-fault {"instance_id",
  "fault"}``): ``"no-device"`` (the EFA devices are not visible: a driver
  that did not load), ``"unreachable"`` (EFA traffic to and from the
  instance is dropped: the pingpong's exchange fails on both sides with a
  completion error, exit 1), ``"none"`` (clears it). Reset clears them.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from typing import Any

from .state import CONFIG, on_reset

FAULTS = ("none", "no-device", "unreachable")
TOOLS = ("fi_info", "fi_pingpong")
PORT = 47592

_lock = threading.Lock()
# instance id -> (account, fault)
_faults: dict[str, tuple[str, str]] = {}


def efa_count(nics: list[dict[str, Any]] | None) -> int:
    """EFA interfaces among a launch template's network interfaces."""
    return sum(1 for n in nics or [] if str(n.get("InterfaceType", "")).lower() in ("efa", "efa-only"))


def devices(instance: Any) -> int:
    return int(getattr(instance, "_emu_efa", 0) or 0)


def set_fault(account_id: str, instance_id: str, fault: str) -> dict[str, Any]:
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}: use one of {', '.join(FAULTS)}")
    with _lock:
        if fault == "none":
            _faults.pop(instance_id, None)
        else:
            _faults[instance_id] = (account_id, fault)
    return {"instance_id": instance_id, "fault": fault}


def env_for(instance: Any | None, instance_id: str) -> dict[str, str]:
    """What the shims read: the instance's devices, fault and address."""
    with _lock:
        fault = _faults.get(instance_id, ("", "none"))[1]
    return {
        "INFRA_EMULATOR_EFA_DEVICES": str(devices(instance) if instance is not None else 0),
        "INFRA_EMULATOR_EFA_FAULT": fault,
        "INFRA_EMULATOR_EFA_ADDR": str(getattr(instance, "private_ip", "") or "127.0.0.1"),
    }


_FI_INFO = '''#!{python}
"""The emulator's fi_info (addition 17)."""
import os, sys

n = int(os.environ.get("INFRA_EMULATOR_EFA_DEVICES", "0") or 0)
if os.environ.get("INFRA_EMULATOR_EFA_FAULT") == "no-device":
    n = 0
args = sys.argv[1:]
def opt(flag, default=None):
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else default
if "-l" in args or "--list" in args:
    print("tcp:\\n    version: 122.0\\nshm:\\n    version: 122.0")
    if n:
        print("efa:\\n    version: 122.0")
    sys.exit(0)
provider = opt("-p", "efa")
kind = (opt("-t", "") or "").upper()
if provider != "efa" or n == 0:
    print("fi_getinfo: -61 (No data available)")
    sys.exit(1)
def domain(i):
    return "rdmap%ds27" % (16 + 16 * i)
for i in range(n):
    for suffix, ep in (("rdm", "FI_EP_RDM"), ("dgrm", "FI_EP_DGRAM")):
        if kind and kind != ep:
            continue
        print("provider: efa")
        print("    fabric: efa")
        print("    domain: %s-%s" % (domain(i), suffix))
        print("    version: 122.0")
        print("    type: %s" % ep)
        print("    protocol: FI_PROTO_EFA")
'''

_FI_PINGPONG = '''#!{python}
"""The emulator's fi_pingpong (addition 17)."""
import os, socket, sys, time

args = sys.argv[1:]
def opt(flag, default=None):
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else default
positional = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or not args[i - 1].startswith("-"))]
n = int(os.environ.get("INFRA_EMULATOR_EFA_DEVICES", "0") or 0)
fault = os.environ.get("INFRA_EMULATOR_EFA_FAULT", "none")
if fault == "no-device":
    n = 0
if opt("-p", "efa") != "efa" or n == 0:
    print("fi_getinfo: -61 (No data available)")
    sys.exit(1)
iters = int(opt("-I", "10"))
size_arg = opt("-S", "64")
size = int(size_arg.rstrip("kK")) * (1024 if size_arg[-1:] in "kK" else 1)
def unreachable():
    sys.stdout.flush()
    print("fi_cq_readerr(): err: 113 (No route to host), prov_errno: 4126 (Unreachable remote)", file=sys.stderr)
    sys.exit(1)
def exchange(conn, first):
    block = b"x" * size
    start = time.monotonic()
    for _ in range(iters):
        if first:
            conn.sendall(block)
        got = 0
        while got < size:
            chunk = conn.recv(size - got)
            if not chunk:
                unreachable()
            got += len(chunk)
        if not first:
            conn.sendall(block)
    return max(time.monotonic() - start, 1e-6)
def human(v):
    for unit, scale in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if v >= scale:
            return "%g%s" % (round(v / scale, 1), unit)
    return str(v)
if positional:
    server = positional[-1]
    try:
        conn = socket.create_connection((server, int(opt("-P", "{port}"))), timeout=10)
    except OSError as e:
        print("ft_sock_connect(): %s:%s: %s" % (server, opt("-P", "{port}"), e.strerror or e), file=sys.stderr)
        sys.exit(1)
    first = True
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((os.environ.get("INFRA_EMULATOR_EFA_ADDR", "127.0.0.1"), int(opt("-B", "{port}"))))
    s.listen(1)
    conn, _ = s.accept()
    first = False
# both sides learn whether EFA traffic flows: each says its own fault
conn.sendall(b"U" if fault == "unreachable" else b"R")
peer = conn.recv(1)
if fault == "unreachable" or peer != b"R":
    unreachable()
elapsed = exchange(conn, first)
total = 2 * iters * size
print("bytes   #sent   #ack     total       time     MB/sec    usec/xfer   Mxfers/sec")
print("%-7s %-7d =%-7d %-11s %-8s %-9.2f %-11.2f %.2f" % (
    human(size), iters, iters, human(total), "%.2fs" % elapsed, total / elapsed / 1e6,
    elapsed / iters / 2 * 1e6, iters * 2 / elapsed / 1e6))
'''


def shim_dir() -> str:
    """The folder of ``fi_info`` and ``fi_pingpong`` (created on first use)."""
    folder = os.path.join(CONFIG.state_dir, "node-fabric")
    with _lock:
        if os.path.isdir(folder):
            return folder
        tmp = folder + ".tmp"
        os.makedirs(tmp, exist_ok=True)
        for name, text in (("fi_info", _FI_INFO), ("fi_pingpong", _FI_PINGPONG)):
            path = os.path.join(tmp, name)
            with open(path, "w") as fh:
                fh.write(text.replace("{python}", sys.executable).replace("{port}", str(PORT)))
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.rename(tmp, folder)
    return folder


@on_reset
def _reset(account_id: str | None) -> None:
    with _lock:
        for iid in [i for i, (acct, _) in _faults.items() if account_id is None or acct == account_id]:
            del _faults[iid]
