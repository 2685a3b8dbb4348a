"""Shared state of the emulator: configuration, the moto lock, helpers to
reach moto's in-process backends, and reset hooks of the additions."""

from __future__ import annotations

import datetime as _dt
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
LOOPBACK = "127.0.0.1"


@dataclass
class Config:
    """Settings of one emulator process (set by server.py at start-up,
    some changeable through ``POST /_emulator/config``)."""

    port: int = 0
    state_dir: str = ""
    # Seconds between an injected spot interruption notice and the
    # termination of the instance (real AWS: 120 s).
    interruption_delay: float = 2.0
    # Seconds during which GetCommandInvocation answers InvocationDoesNotExist
    # after SendCommand (real SSM is eventually consistent; default off).
    invocation_visibility_delay: float = 0.0
    # Interval at which a running command checks its instance, timeout, cancel.
    poll_interval: float = 0.05
    # PATH of the commands run by Run Command: "full" (the emulator's own
    # PATH, its awscli first) or "minimal" (node_path.py); per account in
    # node_paths, else this default (server.py --node-path).
    node_path: str = "full"
    node_paths: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


CONFIG = Config()

# moto's backends are plain dicts and lists that are not thread-safe. Every
# request that reaches moto and every background mutation made by the
# additions (terminating an interrupted instance, launching a replacement)
# holds this lock.
MOTO_LOCK = threading.RLock()

_reset_hooks: list[Callable[[str | None], None]] = []


def on_reset(hook: Callable[[str | None], None]) -> Callable[[str | None], None]:
    """Register ``hook(account_id_or_None)``, called on /_emulator/reset."""
    _reset_hooks.append(hook)
    return hook


def run_reset_hooks(account_id: str | None) -> None:
    for hook in list(_reset_hooks):
        hook(account_id)


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def iso_z(ts: _dt.datetime | float, millis: bool = True) -> str:
    """2026-07-01T10:00:00.123Z"""
    if not isinstance(ts, _dt.datetime):
        ts = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    ts = ts.astimezone(_dt.timezone.utc)
    if millis:
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def ec2_backend(account_id: str, region: str) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[account_id][region]


def loaded_ec2_backends() -> list[tuple[str, str, Any]]:
    """(account, region, backend) for every EC2 backend that exists already
    (does not create new ones)."""
    from moto.ec2.models import ec2_backends

    out = []
    for account_id, per_account in list(ec2_backends.items()):
        for region, backend in list(per_account.items()):
            out.append((account_id, region, backend))
    return out


def find_instance(instance_id: str, account_id: str | None = None) -> tuple[Any, str, str] | None:
    """Find a moto EC2 instance by id in any loaded account/region.
    Returns (instance, account_id, region) or None."""
    for acct, region, backend in loaded_ec2_backends():
        if account_id and acct != account_id:
            continue
        for reservation in list(backend.reservations.values()):
            for inst in reservation.instances:
                if inst.id == instance_id:
                    return inst, acct, region
    return None


def instance_tags(instance: Any) -> dict[str, str]:
    return dict(instance.ec2_backend.tags.get(instance.id, {}))


def sandbox_dir(instance_id: str) -> str:
    """The instance's own folder: the simulated disk of the instance, where
    Run Command executes its scripts (cwd) and which is $HOME."""
    path = os.path.join(CONFIG.state_dir, "instances", instance_id)
    os.makedirs(path, exist_ok=True)
    return path
