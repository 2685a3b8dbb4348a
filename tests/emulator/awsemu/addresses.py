"""Addition 16: private addresses this machine can bind.

moto gives an instance a private address from its subnet (10.x.y.z), which
no interface of the machine that runs the emulator holds: a task that
serves on `$INFRA_NODE_ADDR` (the quickstart's server, an inference
server) cannot bind it, so an example plan did not run unchanged against
the emulator. Here every instance's primary private address comes from
127.0.0.0/8 instead, which Linux routes to the loopback interface whole:
binding `127.a.b.c` works without any set-up, and a client on another
emulated node reaches it.

Addresses are unique machine-wide while the emulator lives: each emulator
process holds the lock of one block `127.<block>.0.0/16` (an flock on
`<tmp>/infra-awsemu-addresses/<block>.lock`, released by the kernel when
the process ends, however it ends), so two emulators side by side (the
Rust tests' and pytest's) never hand out the same address, and numbers
the instances within it. Blocks 16 to 254 are used (127.0.x.y stays for
the local provider and the emulator's own 127.0.0.1).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from typing import Any

FIRST_BLOCK = 16
LAST_BLOCK = 254

_lock = threading.Lock()
_block: int | None = None
_block_fd: int | None = None
_next = 0
_installed = False


def _claim_block() -> int:
    """Lock the first free block; kept until this process exits."""
    global _block, _block_fd
    if _block is not None:
        return _block
    folder = os.path.join(tempfile.gettempdir(), "infra-awsemu-addresses")
    os.makedirs(folder, exist_ok=True)
    for block in range(FIRST_BLOCK, LAST_BLOCK + 1):
        fd = os.open(os.path.join(folder, f"{block}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _block, _block_fd = block, fd
        return block
    raise RuntimeError(f"all {LAST_BLOCK - FIRST_BLOCK + 1} address blocks are held by other emulators")


def next_address() -> str:
    """The next unused loopback address of this emulator's block."""
    global _next
    with _lock:
        block = _claim_block()
        n = _next
        _next += 1
    if n >= 254 * 256:
        raise RuntimeError("this emulator has given out every address of its block")
    return f"127.{block}.{n // 254}.{n % 254 + 1}"


def _rewrite(instance: Any) -> None:
    nic = instance.nics.get(0) if hasattr(instance.nics, "get") else None
    if nic is None:
        return
    addr = next_address()
    nic.private_ip_address = addr
    for item in getattr(nic, "private_ip_addresses", []) or []:
        if item.get("Primary"):
            item["PrivateIpAddress"] = addr
    # moto's own bookkeeping (`_private_ips`, the subnet's used addresses)
    # keeps the subnet address it chose, so releasing it still works


def install() -> None:
    """Give each instance moto creates a bindable private address."""
    global _installed
    if _installed:
        return
    _installed = True
    from moto.ec2.models.instances import Instance

    original = Instance.prep_nics

    def prep_nics(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        _rewrite(self)
        return result

    Instance.prep_nics = prep_nics  # type: ignore[method-assign]
