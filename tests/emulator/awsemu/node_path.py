"""Addition 11: a restricted PATH for the commands run by Run Command.

What moto lacks: moto runs no commands at all (see ``runcommand``); the
emulator's commands inherit the emulator's PATH, on which the awscli,
curl and Python are found, so a test cannot show that the node side needs
none of them.

What the emulator does: with ``node_path`` ``"minimal"`` (per account:
``POST /_emulator/config {"node_path": "minimal"}``; for every account:
``server.py --node-path minimal``), the commands of Run Command get
``PATH=<state-dir>/node-bin``, a folder of symbolic links to the basic
tools in ``TOOLS`` below (a shell, coreutils, grep, sed), found on the
host's ``/usr/bin:/bin:/usr/sbin:/sbin`` then on the emulator's PATH, and
nothing else: no ``aws``, ``curl``, ``wget``, ``python3``. A tool missing on
the host is simply absent. ``"full"`` (the default) keeps the emulator's
PATH with its awscli first.
"""

from __future__ import annotations

import os
import shutil
import threading

from .state import CONFIG, on_reset

MODES = ("full", "minimal")

TOOLS = (
    # shells
    "bash", "sh",
    # coreutils
    "env", "cat", "ls", "mkdir", "rmdir", "rm", "mv", "cp", "ln", "touch", "sleep", "echo", "printf",
    "sha256sum", "chmod", "date", "head", "tail", "wc", "sort", "uniq", "tr", "true", "false", "test", "[",
    "dirname", "basename", "seq", "kill", "cut", "tee", "mktemp", "stat", "id", "uname", "readlink",
    "realpath", "nproc", "timeout", "sync", "expr", "od", "du", "df", "xargs", "pwd",
    # text
    "grep", "sed",
)

_lock = threading.Lock()
_SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


def mode(account_id: str) -> str:
    return CONFIG.node_paths.get(account_id, CONFIG.node_path)


def set_mode(account_id: str | None, value: str) -> None:
    if value not in MODES:
        raise ValueError(f"node_path must be one of {', '.join(MODES)}")
    if account_id:
        CONFIG.node_paths[account_id] = value
    else:
        CONFIG.node_path = value


def minimal_dir() -> str:
    """The folder of links (created on first use)."""
    folder = os.path.join(CONFIG.state_dir, "node-bin")
    with _lock:
        if os.path.isdir(folder):
            return folder
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        search = os.pathsep.join(p for p in (_SYSTEM_PATH, os.environ.get("PATH", "")) if p)
        for tool in TOOLS:
            found = shutil.which(tool, path=search)
            if found:
                os.symlink(os.path.realpath(found) if tool in ("bash", "sh") else found,
                           os.path.join(tmp, tool))
        # the instance's own shutdown commands (addition 15)
        from . import shutdown

        sbin = shutdown.shim_dir()
        for name in shutdown.COMMANDS:
            os.symlink(os.path.join(sbin, name), os.path.join(tmp, name))
        # libfabric's tools, as the Deep Learning AMI has them (addition 17)
        from . import fabric

        fabric_dir = fabric.shim_dir()
        for name in fabric.TOOLS:
            os.symlink(os.path.join(fabric_dir, name), os.path.join(tmp, name))
        os.rename(tmp, folder)
    return folder


def bash() -> str:
    """The bash that runs the commands (found on the host's system PATH)."""
    return shutil.which("bash", path=_SYSTEM_PATH) or shutil.which("bash") or "bash"


@on_reset
def _reset(account_id: str | None) -> None:
    if account_id is None:
        CONFIG.node_paths.clear()
    else:
        CONFIG.node_paths.pop(account_id, None)
