"""Addition 12: ``AWS-RunRemoteScript`` in Run Command (part of addition 1).

What moto lacks: moto runs no document (see ``runcommand``); the emulator
ran ``AWS-RunShellScript`` only.

What the emulator does, as the SSM agent does with the AWS-managed
document (two steps, ``downloadContent`` then ``runShellScript``):

- Parameters ``sourceType`` (``S3`` only; ``GitHub`` -> InvalidParameters),
  ``sourceInfo`` (JSON ``{"path": URL}``, URL one of
  ``https://s3.amazonaws.com/<bucket>/<key>``,
  ``https://s3.<region>.amazonaws.com/<bucket>/<key>``,
  ``https://s3-<region>.amazonaws.com/<bucket>/<key>``,
  ``https://<bucket>.s3.amazonaws.com/<key>``,
  ``https://<bucket>.s3.<region>.amazonaws.com/<key>``, or the emulator's
  own path-style ``http://127.0.0.1:<port>/<bucket>/<key>``; the key is
  URL-decoded), ``commandLine`` (required), ``workingDirectory``,
  ``executionTimeout``. Checked at SendCommand (InvalidParameters).
- Download: the object is read from moto's S3 of the instance's own account
  *as the instance* (its role's policies decide, see ``node_auth``: the
  download needs ``s3:GetObject`` on the object). It is written, under the
  last segment of its key, into ``workingDirectory`` (inside the
  instance's sandbox, created if missing) or, without one, into
  ``<sandbox>/.ssm/<command-id>/downloads/``. A denied or missing object
  fails the invocation (Failed, ResponseCode 1; the reason on
  StandardErrorContent, e.g. ``AccessDenied``) and nothing runs.
- Then ``directory=$(pwd); export PATH=$PATH:$directory`` and
  ``commandLine`` run with bash in that folder, exactly like
  AWS-RunShellScript (statuses, exit codes, timeout, output limits and
  S3 output under ``.../awsrunShellScript/runShellScript/stdout``).
- Plugins: ``downloadContent`` and ``runShellScript``
  (ListCommandInvocations Details, GetCommandInvocation ``PluginName``).

Not supported: ``sourceType`` GitHub, a ``path`` that is a folder (every
object under a prefix), buckets of another account.
"""

from __future__ import annotations

import json
import os
import re
import threading
from urllib.parse import unquote, urlparse

from . import node_auth
from .state import CONFIG, MOTO_LOCK

_CACHE_LOCK = threading.Lock()

DOCUMENT = "AWS-RunRemoteScript"
PLUGINS = ("downloadContent", "runShellScript")

_HOST_PATH_STYLE = re.compile(r"^s3([.-][a-z0-9-]+)?(\.dualstack\.[a-z0-9-]+)?\.amazonaws\.com$")
_HOST_VIRTUAL = re.compile(r"^(?P<bucket>.+)\.s3([.-][a-z0-9-]+)?(\.dualstack\.[a-z0-9-]+)?\.amazonaws\.com$")


def parse_url(url: str) -> tuple[str, str]:
    """S3 URL -> (bucket, key); ValueError when it is not one."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    path = parsed.path.lstrip("/")
    if _HOST_PATH_STYLE.match(host) or host in ("127.0.0.1", "localhost"):
        bucket, _, key = path.partition("/")
    else:
        m = _HOST_VIRTUAL.match(host)
        if not m:
            raise ValueError(f"{url!r} is not an S3 URL")
        bucket, key = m.group("bucket"), path
    key = unquote(key)
    if not bucket or not key:
        raise ValueError(f"{url!r} names no object")
    if key.endswith("/"):
        raise ValueError(f"{url!r} is a folder (not supported by the emulator)")
    return bucket, key


def source(params: dict[str, list[str]]) -> tuple[str, str]:
    """Check the parameters of a SendCommand; (bucket, key) of the script."""
    kind = (params.get("sourceType") or [""])[0]
    if kind != "S3":
        raise ValueError(f"sourceType {kind!r} is not supported by the emulator (only S3)")
    raw = (params.get("sourceInfo") or [""])[0]
    try:
        info = json.loads(raw)
    except ValueError:
        raise ValueError("sourceInfo must be a JSON object with a \"path\"")
    if not isinstance(info, dict) or not isinstance(info.get("path"), str):
        raise ValueError("sourceInfo must be a JSON object with a \"path\"")
    if not (params.get("commandLine") or [""])[0].strip():
        raise ValueError("Parameter \"commandLine\" is required.")
    return parse_url(info["path"])


def script(params: dict[str, list[str]]) -> str:
    """The runShellScript step, as the AWS document writes it."""
    return "directory=$(pwd)\nexport PATH=$PATH:$directory\n" + (params.get("commandLine") or [""])[0] + "\n"


def download(account_id: str, instance_id: str, params: dict[str, list[str]], dest: str) -> tuple[bool, str]:
    """The downloadContent step: (ok, message)."""
    bucket, key = source(params)
    url = json.loads(params["sourceInfo"][0])["path"]
    ok, reason = node_auth.authorize(account_id, instance_id, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}")
    if not ok:
        return False, (f"failed to download {url}: AccessDenied: {reason} "
                       f"(the instance's role needs s3:GetObject on arn:aws:s3:::{bucket}/{key})")
    from moto.s3.models import s3_backends

    try:
        with MOTO_LOCK:
            obj = s3_backends[account_id]["aws"].get_object(bucket, key)
            etag = obj.etag.strip('"') if obj is not None else None
            size = obj.size if obj is not None else None
    except Exception as exc:  # no such bucket...
        code = getattr(exc, "code", None) or type(exc).__name__
        return False, f"failed to download {url}: {code}: s3://{bucket}/{key} cannot be read ({exc})"
    if obj is None:
        return False, f"failed to download {url}: NoSuchKey: s3://{bucket}/{key} does not exist"
    # Every "instance" is a folder on this one disk: a download is a hard
    # link to one cached copy per object content (the node agent is tens of
    # megabytes; a 100-node test would otherwise write gigabytes). The file
    # is the object's bytes all the same.
    cache_dir = os.path.join(CONFIG.state_dir, "download-cache")
    cached = os.path.join(cache_dir, f"{etag}-{size}")
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, key.rsplit("/", 1)[-1])
    tmp = f"{target}.download.{threading.get_ident()}"
    with _CACHE_LOCK:
        try:
            if not os.path.exists(cached):
                os.makedirs(cache_dir, exist_ok=True)
                with MOTO_LOCK:
                    body = obj.value
                part = f"{cached}.{os.getpid()}.part"
                with open(part, "wb") as fh:
                    fh.write(body)
                os.replace(part, cached)
            os.link(cached, tmp)
        except OSError:
            # no cache (another disk, a removed folder): a plain copy
            with MOTO_LOCK:
                body = obj.value
            with open(tmp, "wb") as fh:
                fh.write(body)
    os.replace(tmp, target)
    return True, f"Content downloaded to {target}"


def plugin_names(document: str) -> tuple[str, ...]:
    return PLUGINS if document == DOCUMENT else ("aws:runShellScript",)


def output_step(document: str) -> str:
    return "runShellScript" if document == DOCUMENT else "0.awsrunShellScript"
