"""Addition 1: Run Command that runs.

What moto lacks: moto's SendCommand executes nothing (every invocation is
"Success" at once, with empty output), adds every instance of the region
when no Targets are given, and ListCommandInvocations / CancelCommand
answer HTTP 500.

What the emulator does instead, as a simulated SSM agent would:

- ``SendCommand`` with ``AWS-RunShellScript`` (or ``AWS-RunRemoteScript``,
  see ``remote_script``) checks ``InstanceIds`` (each
  must be a running instance of the account and region, at most 50, no
  duplicates: ``InvalidInstanceId`` / ``DuplicateInstanceId`` otherwise)
  or resolves ``Targets`` (``tag:<key>``, ``tag-key``, ``InstanceIds``) to
  running instances only; then, for every target instance, runs the
  joined ``commands`` with ``bash`` in a subprocess whose working folder is
  the instance's own sandbox folder (``<state-dir>/instances/<id>``, also
  its ``$HOME``; ``workingDirectory`` is taken inside it).
- Statuses go Pending -> InProgress -> Success / Failed (exit code) /
  TimedOut (``executionTimeout``, default 3600 s; StatusDetails
  ``ExecutionTimedOut``) / Cancelled (``CancelCommand``). When the instance
  is stopped or terminated while the command runs, the process group is
  killed and the invocation ends Failed (ResponseCode -1); an invocation
  whose instance is gone before it starts is Failed/``Undeliverable``.
- ``GetCommandInvocation`` (``InvocationDoesNotExist`` when unknown) and
  ``ListCommandInvocations`` (``Details=true`` adds ``CommandPlugins`` with
  Output, ResponseCode, Status, StatusDetails) return the real status, exit
  code, and stdout / stderr truncated at 24,000 / 8,000 characters;
  ``ListCommands`` and ``CancelCommand`` work; filters and
  MaxResults/NextToken are supported.
- With ``OutputS3BucketName`` (and ``OutputS3KeyPrefix``) the whole stdout
  and stderr go to ``<prefix>/<command-id>/<instance-id>/awsrunShellScript/
  0.awsrunShellScript/stdout`` and ``.../stderr`` in the emulator's S3; the
  ``StandardOutputUrl``/``StandardErrorUrl`` are path-style URLs of the
  emulator.
- The commands see an environment in which the awscli and the SDKs reach
  the emulator itself: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (the instance's node
  credentials, see ``node_auth``: they route the calls to the instance's
  account, and S3 calls are checked against the instance role's
  policies), ``AWS_REGION``/``AWS_DEFAULT_REGION``,
  ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` and ``INFRA_IMDS_URL`` (the
  instance's simulated metadata endpoint, see ``imds``),
  ``INFRA_INSTANCE_ID``, ``INFRA_SANDBOX_DIR``, ``INFRA_EMULATOR_ACCOUNT``
  (the account id); ``PATH`` is the emulator's, or only basic tools (see
  ``node_path``).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import fabric, imds, node_auth, node_path, remote_script, shutdown
from .protocol import AwsRequest, Response, json_error, json_response
from .registry import intercept
from .state import CONFIG, MOTO_LOCK, ec2_backend, find_instance, instance_tags, iso_z, on_reset, sandbox_dir

STDOUT_LIMIT = 24000
STDERR_LIMIT = 8000
PLUGIN_NAME = "aws:runShellScript"
DOCUMENTS = {"AWS-RunShellScript", remote_script.DOCUMENT}
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}
ERROR_MARKER = "\n----------ERROR-------\n"


@dataclass
class Invocation:
    command: "Command"
    instance_id: str
    instance: Any
    status: str = "Pending"
    details: str = "Pending"
    response_code: int = -1
    started: float | None = None
    ended: float | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_url: str = ""
    stderr_url: str = ""
    trace: str = ""
    # AWS-RunRemoteScript's downloadContent step: (status, output)
    download: tuple[str, str] | None = None
    cancel_requested: bool = False
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class Command:
    command_id: str
    account_id: str
    region: str
    document_name: str
    document_version: str
    comment: str
    parameters: dict[str, list[str]]
    instance_ids: list[str]
    targets: list[dict[str, Any]]
    requested: float
    timeout_seconds: int
    bucket: str
    prefix: str
    max_concurrency: str
    max_errors: str
    service_role: str
    notification: dict[str, Any]
    cloudwatch: dict[str, Any]
    invocations: dict[str, Invocation] = field(default_factory=dict)

    @property
    def document(self) -> str:
        """The document's name (without the ARN part)."""
        return self.document_name.rsplit("/", 1)[-1] if self.document_name.startswith("arn:") else self.document_name

    @property
    def remote(self) -> bool:
        return self.document == remote_script.DOCUMENT


_lock = threading.RLock()
# (account, region) -> {command_id: Command}, in creation order
_commands: dict[tuple[str, str], dict[str, Command]] = {}


def _store(account_id: str, region: str) -> dict[str, Command]:
    return _commands.setdefault((account_id, region), {})


# ------------------------------------------------------------ validation


class ApiError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _running_instances(account_id: str, region: str) -> list[Any]:
    with MOTO_LOCK:
        return [i for i in ec2_backend(account_id, region).all_instances() if i.state == "running"]


def _all_instances(account_id: str, region: str) -> dict[str, Any]:
    with MOTO_LOCK:
        return {i.id: i for i in ec2_backend(account_id, region).all_instances()}


def resolve_targets(account_id: str, region: str, targets: list[dict[str, Any]]) -> list[Any]:
    """Targets (AND between keys, OR between values) -> running instances."""
    if len(targets) > 5:
        raise ApiError("InvalidParameters", "You can specify at most 5 targets.")
    selected = _running_instances(account_id, region)
    for target in targets:
        key = target.get("Key", "")
        values = set(target.get("Values") or [])
        if key.startswith("tag:"):
            tag = key[4:]
            selected = [i for i in selected if instance_tags(i).get(tag) in values]
        elif key == "tag-key":
            selected = [i for i in selected if values & set(instance_tags(i))]
        elif key in ("InstanceIds", "instanceids"):
            selected = [i for i in selected if i.id in values]
        else:
            raise ApiError("InvalidParameters", f"Target key {key!r} is not supported by the emulator.")
    return selected


def _check_instance_ids(account_id: str, region: str, ids: list[str]) -> list[Any]:
    if len(ids) > 50:
        raise ApiError("ValidationException",
                       "1 validation error detected: Value at 'instanceIds' failed to satisfy constraint: "
                       "Member must have length less than or equal to 50")
    if len(set(ids)) != len(ids):
        raise ApiError("DuplicateInstanceId", "You can't specify a managed node ID more than once.")
    known = _all_instances(account_id, region)
    bad = [i for i in ids if i not in known or known[i].state != "running"]
    if bad:
        raise ApiError("InvalidInstanceId",
                       f"Instances [[{', '.join(bad)}]] not in a valid state for account {account_id}")
    return [known[i] for i in ids]


# -------------------------------------------------------------- execution


def command_env(inv: Invocation, sandbox: str) -> dict[str, str]:
    """The environment of a command (see ``instance_env``)."""
    cmd = inv.command
    return instance_env(cmd.account_id, cmd.region, inv.instance_id, sandbox,
                        node_path.mode(cmd.account_id) == "minimal")


def instance_env(account_id: str, region: str, instance_id: str, sandbox: str,
                 minimal: bool = False) -> dict[str, str]:
    """The environment of a process on an instance: the emulator's own
    environment without its AWS_* settings, plus what a process on the
    instance would need to reach "AWS" (the emulator, with the instance's
    node credentials) and the instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("INFRA_")}
    endpoint = CONFIG.endpoint_url()
    url = imds.imds_url(instance_id)
    no_proxy = ",".join(x for x in ("127.0.0.1", "localhost", env.get("NO_PROXY", "")) if x)
    if minimal:
        # holds the shutdown (addition 15) and fabric (addition 17) shims too
        path = node_path.minimal_dir()
    else:
        # shutdown/poweroff/halt act on this instance (addition 13), never on
        # the host; fi_info / fi_pingpong see its EFA devices (addition 17);
        # then the awscli installed with the emulator's interpreter.
        path = os.pathsep.join(p for p in (shutdown.shim_dir(), fabric.shim_dir(),
                                           os.path.dirname(sys.executable), env.get("PATH", "")) if p)
    found = find_instance(instance_id, account_id)
    env.update(fabric.env_for(found[0] if found else None, instance_id))
    env.update({
        "PATH": path,
        "HOME": sandbox,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": node_auth.node_access_key(account_id, instance_id),
        "AWS_SECRET_ACCESS_KEY": node_auth.SECRET,
        "AWS_SESSION_TOKEN": node_auth.session_token(instance_id),
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_CONFIG_FILE": os.path.join(sandbox, ".aws", "config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(sandbox, ".aws", "credentials"),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": url + "/",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4",
        "AWS_PAGER": "",
        "INFRA_IMDS_URL": url,
        "INFRA_INSTANCE_ID": instance_id,
        "INFRA_SANDBOX_DIR": sandbox,
        "INFRA_EMULATOR_URL": endpoint,
        "INFRA_EMULATOR_ACCOUNT": account_id,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    })
    return env


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _execution_timeout(params: dict[str, list[str]]) -> float:
    raw = (params.get("executionTimeout") or ["3600"])[0]
    try:
        return max(1.0, min(float(raw), 172800.0))
    except ValueError:
        return 3600.0


def _run(inv: Invocation) -> None:
    try:
        _run_invocation(inv)
    except Exception as exc:  # never leave an invocation InProgress for ever
        if inv.proc is not None:
            _kill(inv.proc)
        inv.stderr += f"\n[emulator] {exc!r}\n"
        _finish(inv, "Failed", "Failed", -1)


def _run_invocation(inv: Invocation) -> None:
    cmd = inv.command
    if inv.cancel_requested:
        _finish(inv, "Cancelled", "Cancelled", -1)
        return
    if inv.instance.state != "running":
        _finish(inv, "Failed", "Undeliverable", -1)
        return
    sandbox = sandbox_dir(inv.instance_id)
    workdir = sandbox
    wd = (cmd.parameters.get("workingDirectory") or [""])[0]
    if wd:
        workdir = os.path.join(sandbox, wd.lstrip("/"))
    run_dir = os.path.join(sandbox, ".ssm", cmd.command_id)
    os.makedirs(run_dir, exist_ok=True)
    if cmd.remote and not wd:
        workdir = os.path.join(run_dir, "downloads")
    script = os.path.join(run_dir, "_script.sh")
    with open(script, "w") as fh:
        if cmd.remote:
            fh.write(remote_script.script(cmd.parameters))
        else:
            fh.write("\n".join(cmd.parameters.get("commands") or []) + "\n")
    out_path, err_path = os.path.join(run_dir, "stdout"), os.path.join(run_dir, "stderr")
    with _lock:
        if inv.cancel_requested:
            _finish(inv, "Cancelled", "Cancelled", -1)
            return
        inv.status = inv.details = "InProgress"
        inv.started = time.time()
    if cmd.remote:
        ok, message = remote_script.download(cmd.account_id, inv.instance_id, cmd.parameters, workdir)
        inv.download = ("Success" if ok else "Failed", message)
        if not ok:
            with open(err_path, "w") as fh:
                fh.write(message + "\n")
            open(out_path, "w").close()
            _collect(inv, out_path, err_path)
            _upload(inv)
            _finish(inv, "Failed", "Failed", 1)
            return
    if not os.path.isdir(workdir):
        with open(err_path, "w") as fh:
            fh.write(f"Working directory {wd} does not exist\n")
        open(out_path, "w").close()
        _collect(inv, out_path, err_path)
        _finish(inv, "Failed", "Failed", 1)
        return
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        inv.proc = subprocess.Popen(
            [node_path.bash(), script], cwd=workdir, env=command_env(inv, sandbox),
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
        )
    deadline = inv.started + _execution_timeout(cmd.parameters)
    outcome: tuple[str, str, int] | None = None
    note = ""
    while True:
        rc = inv.proc.poll()
        if rc is not None and inv.instance.state not in ("running", "pending"):
            # killed with its instance (addition 13): the instance went away
            outcome = ("Failed", "Failed", -1)
            note = f"\n[emulator] instance {inv.instance_id} became {inv.instance.state} while the command was running\n"
            break
        if rc is not None:
            outcome = ("Success", "Success", 0) if rc == 0 else ("Failed", "Failed", rc)
            break
        if inv.cancel_requested:
            _kill(inv.proc)
            outcome = ("Cancelled", "Cancelled", -1)
            break
        if time.time() >= deadline:
            _kill(inv.proc)
            outcome = ("TimedOut", "ExecutionTimedOut", -1)
            break
        state = inv.instance.state
        if state != "running":
            _kill(inv.proc)
            outcome = ("Failed", "Failed", -1)
            note = f"\n[emulator] instance {inv.instance_id} became {state} while the command was running\n"
            break
        time.sleep(CONFIG.poll_interval)
    _collect(inv, out_path, err_path, note)
    _upload(inv)
    _finish(inv, *outcome)


def _collect(inv: Invocation, out_path: str, err_path: str, note: str = "") -> None:
    with open(out_path, "rb") as fh:
        inv.stdout = fh.read().decode("utf-8", "replace")
    with open(err_path, "rb") as fh:
        inv.stderr = fh.read().decode("utf-8", "replace") + note


def _finish(inv: Invocation, status: str, details: str, code: int) -> None:
    with _lock:
        inv.status, inv.details, inv.response_code = status, details, code
        inv.ended = time.time()
        inv.proc = None


def _output_key(inv: Invocation, stream: str) -> str:
    prefix = inv.command.prefix.strip("/")
    parts = [p for p in (prefix, inv.command.command_id, inv.instance_id) if p]
    return "/".join(parts + ["awsrunShellScript", remote_script.output_step(inv.command.document), stream])


def _upload(inv: Invocation) -> None:
    cmd = inv.command
    if not cmd.bucket:
        return
    from moto.s3.models import s3_backends

    try:
        with MOTO_LOCK:
            s3 = s3_backends[cmd.account_id]["aws"]
            for stream, text in (("stdout", inv.stdout), ("stderr", inv.stderr)):
                key = _output_key(inv, stream)
                s3.put_object(cmd.bucket, key, text.encode("utf-8"))
                url = f"{CONFIG.endpoint_url()}/{cmd.bucket}/{key}"
                if stream == "stdout":
                    inv.stdout_url = url
                else:
                    inv.stderr_url = url
    except Exception as exc:  # bucket missing: the agent logs it, the command still counts
        inv.trace = f"failed to upload output to s3://{cmd.bucket}: {exc!r}"


# ------------------------------------------------------------- shapes


def _command_status(cmd: Command) -> tuple[str, str]:
    invs = list(cmd.invocations.values())
    if not invs:
        return "Success", "Success"
    statuses = [i.status for i in invs]
    if any(s not in TERMINAL for s in statuses):
        if all(s == "Pending" for s in statuses):
            return "Pending", "Pending"
        if any(i.cancel_requested for i in invs):
            return "Cancelling", "Cancelling"
        return "InProgress", "InProgress"
    if "Cancelled" in statuses:
        return "Cancelled", "Cancelled"
    delivered = [i for i in invs if i.details != "Undeliverable"]
    if not delivered:
        return "Failed", "Undeliverable"
    if any(i.status == "Failed" for i in delivered):
        return "Failed", "Failed"
    if "TimedOut" in statuses:
        return "TimedOut", "TimedOut"
    return "Success", "Success"


def _command_shape(cmd: Command) -> dict[str, Any]:
    status, details = _command_status(cmd)
    invs = list(cmd.invocations.values())
    return {
        "CommandId": cmd.command_id,
        "DocumentName": cmd.document_name,
        "DocumentVersion": cmd.document_version,
        "Comment": cmd.comment,
        "ExpiresAfter": cmd.requested + cmd.timeout_seconds,
        "Parameters": cmd.parameters,
        "InstanceIds": cmd.instance_ids,
        "Targets": cmd.targets,
        "RequestedDateTime": cmd.requested,
        "Status": status,
        "StatusDetails": details,
        "OutputS3Region": cmd.region,
        "OutputS3BucketName": cmd.bucket,
        "OutputS3KeyPrefix": cmd.prefix,
        "MaxConcurrency": cmd.max_concurrency,
        "MaxErrors": cmd.max_errors,
        "TargetCount": len(invs),
        "CompletedCount": sum(1 for i in invs if i.terminal),
        "ErrorCount": sum(1 for i in invs if i.status in ("Failed", "TimedOut") and i.details != "Undeliverable"),
        "DeliveryTimedOutCount": 0,
        "ServiceRole": cmd.service_role,
        "NotificationConfig": cmd.notification,
        "CloudWatchOutputConfig": cmd.cloudwatch,
        "TimeoutSeconds": cmd.timeout_seconds,
    }


def _stdout(inv: Invocation) -> str:
    return inv.stdout[:STDOUT_LIMIT] if inv.terminal else ""


def _stderr(inv: Invocation) -> str:
    return inv.stderr[:STDERR_LIMIT] if inv.terminal else ""


def _plugin_shapes(inv: Invocation) -> list[dict[str, Any]]:
    """CommandPlugins: one for AWS-RunShellScript, downloadContent and
    runShellScript for AWS-RunRemoteScript."""
    if not inv.command.remote:
        return [_plugin_shape(inv, PLUGIN_NAME)]
    download = _plugin_shape(inv, "downloadContent")
    run = _plugin_shape(inv, "runShellScript")
    if inv.download is None:
        return [download, run]
    status, message = inv.download
    download.update({"Status": status, "StatusDetails": status, "ResponseCode": 0 if status == "Success" else 1,
                     "Output": message if inv.terminal else "", "StandardOutputUrl": "", "StandardErrorUrl": ""})
    if status != "Success":
        run.update({"Status": "Failed", "StatusDetails": "Failed", "ResponseCode": -1, "Output": "",
                    "StandardOutputUrl": "", "StandardErrorUrl": ""})
    return [download, run]


def _plugin_shape(inv: Invocation, name: str) -> dict[str, Any]:
    cmd = inv.command
    output = _stdout(inv)
    if _stderr(inv):
        output += ERROR_MARKER + _stderr(inv)
    shape: dict[str, Any] = {
        "Name": name,
        "Status": inv.status if inv.status in ("Pending", "InProgress", "Success", "TimedOut", "Cancelled",
                                               "Failed") else "InProgress",
        "StatusDetails": inv.details,
        "ResponseCode": inv.response_code,
        "Output": output,
        "StandardOutputUrl": inv.stdout_url,
        "StandardErrorUrl": inv.stderr_url,
        "OutputS3Region": cmd.region,
        "OutputS3BucketName": cmd.bucket,
        "OutputS3KeyPrefix": cmd.prefix,
    }
    if inv.started is not None:
        shape["ResponseStartDateTime"] = inv.started
    if inv.ended is not None:
        shape["ResponseFinishDateTime"] = inv.ended
    return shape


def _invocation_shape(inv: Invocation, details: bool) -> dict[str, Any]:
    cmd = inv.command
    shape: dict[str, Any] = {
        "CommandId": cmd.command_id,
        "InstanceId": inv.instance_id,
        "InstanceName": "",
        "Comment": cmd.comment,
        "DocumentName": cmd.document_name,
        "DocumentVersion": cmd.document_version,
        "RequestedDateTime": cmd.requested,
        "Status": inv.status,
        "StatusDetails": inv.details,
        "TraceOutput": inv.trace,
        "StandardOutputUrl": inv.stdout_url,
        "StandardErrorUrl": inv.stderr_url,
        "CommandPlugins": _plugin_shapes(inv) if details else [],
        "ServiceRole": cmd.service_role,
        "NotificationConfig": cmd.notification,
        "CloudWatchOutputConfig": cmd.cloudwatch,
    }
    return shape


def _elapsed(inv: Invocation) -> str:
    if inv.started is None:
        return ""
    end = inv.ended if inv.ended is not None else time.time()
    return f"PT{end - inv.started:.3f}S"


# ------------------------------------------------------------- pagination


def _page(items: list[Any], req: AwsRequest, default_max: int = 50) -> tuple[list[Any], str | None]:
    body = req.json
    try:
        start = int(base64.b64decode(body["NextToken"]).decode()) if body.get("NextToken") else 0
    except (ValueError, KeyError):
        raise ApiError("InvalidNextToken", "The specified token isn't valid.")
    size = int(body.get("MaxResults") or default_max)
    page = items[start:start + size]
    token = base64.b64encode(str(start + size).encode()).decode() if start + size < len(items) else None
    return page, token


def _filter_by(cmd_or_inv_status: str, requested: float, document: str, filters: list[dict[str, str]]) -> bool:
    from datetime import datetime

    for f in filters or []:
        key, value = f.get("key"), f.get("value", "")
        if key in ("InvokedAfter", "InvokedBefore"):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ApiError("InvalidFilterValue", f"Invalid value {value!r} for filter {key}")
            if key == "InvokedAfter" and requested < when:
                return False
            if key == "InvokedBefore" and requested > when:
                return False
        elif key == "Status":
            if cmd_or_inv_status != value:
                return False
        elif key == "DocumentName":
            if document != value:
                return False
        elif key == "ExecutionStage":
            executing = cmd_or_inv_status in ("Pending", "InProgress", "Cancelling")
            if (value == "Executing") != executing:
                return False
        else:
            raise ApiError("InvalidFilterKey", f"The specified key {key!r} isn't valid.")
    return True


# ------------------------------------------------------------- handlers


def _api(fn: Any) -> Any:
    def wrapper(req: AwsRequest) -> Response:
        try:
            return json_response(fn(req))
        except ApiError as err:
            return json_error(err.code, err.message)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@intercept("ssm", "SendCommand")
@_api
def send_command(req: AwsRequest) -> dict[str, Any]:
    body = req.json
    doc = body.get("DocumentName", "")
    doc_name = doc.rsplit("/", 1)[-1] if doc.startswith("arn:") else doc
    if doc_name not in DOCUMENTS:
        raise ApiError("InvalidDocument", f"Document {doc} does not exist in the emulator "
                                          "(only AWS-RunShellScript and AWS-RunRemoteScript run).")
    params = {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in
              (body.get("Parameters") or {}).items()}
    if doc_name == remote_script.DOCUMENT:
        try:
            remote_script.source(params)
        except ValueError as err:
            raise ApiError("InvalidParameters", str(err))
    elif not params.get("commands"):
        raise ApiError("InvalidParameters", "Parameter \"commands\" is required.")
    ids = body.get("InstanceIds") or []
    targets = body.get("Targets") or []
    if ids and targets:
        raise ApiError("InvalidParameters", "Specify either InstanceIds or Targets, not both.")
    if not ids and not targets:
        raise ApiError("InvalidParameters", "Either InstanceIds or Targets must be specified.")
    instances = (_check_instance_ids(req.account_id, req.region, ids) if ids
                 else resolve_targets(req.account_id, req.region, targets))
    cmd = Command(
        command_id=str(uuid.uuid4()),
        account_id=req.account_id,
        region=req.region,
        document_name=doc,
        document_version=body.get("DocumentVersion") or "$DEFAULT",
        comment=body.get("Comment", ""),
        parameters=params,
        instance_ids=list(ids),
        targets=targets,
        requested=time.time(),
        timeout_seconds=int(body.get("TimeoutSeconds") or 3600),
        bucket=body.get("OutputS3BucketName", ""),
        prefix=body.get("OutputS3KeyPrefix", ""),
        max_concurrency=str(body.get("MaxConcurrency") or "50"),
        max_errors=str(body.get("MaxErrors") or "0"),
        service_role=body.get("ServiceRoleArn", ""),
        notification=body.get("NotificationConfig") or {"NotificationArn": "", "NotificationEvents": [],
                                                        "NotificationType": ""},
        cloudwatch=body.get("CloudWatchOutputConfig") or {"CloudWatchLogGroupName": "",
                                                          "CloudWatchOutputEnabled": False},
    )
    with _lock:
        for inst in instances:
            cmd.invocations[inst.id] = Invocation(cmd, inst.id, inst)
        _store(req.account_id, req.region)[cmd.command_id] = cmd
        shape = _command_shape(cmd)
    for inv in cmd.invocations.values():
        inv.thread = threading.Thread(target=_run, args=(inv,), daemon=True,
                                      name=f"ssm-{cmd.command_id[:8]}-{inv.instance_id}")
        inv.thread.start()
    return {"Command": shape}


def _get_command(req: AwsRequest, command_id: str) -> Command:
    cmd = _store(req.account_id, req.region).get(command_id)
    if cmd is None:
        raise ApiError("InvalidCommandId", "")
    return cmd


@intercept("ssm", "GetCommandInvocation")
@_api
def get_command_invocation(req: AwsRequest) -> dict[str, Any]:
    body = req.json
    with _lock:
        cmd = _store(req.account_id, req.region).get(body.get("CommandId", ""))
        inv = cmd.invocations.get(body.get("InstanceId", "")) if cmd else None
        if inv is None or time.time() - cmd.requested < CONFIG.invocation_visibility_delay:
            raise ApiError("InvocationDoesNotExist", "")
        plugin = body.get("PluginName")
        plugins = remote_script.plugin_names(cmd.document)
        if plugin and plugin not in plugins:
            raise ApiError("InvalidPluginName", "The plugin name isn't valid.")
        if plugin == "downloadContent":
            shape = _plugin_shapes(inv)[0]
            return {
                "CommandId": cmd.command_id, "InstanceId": inv.instance_id, "Comment": cmd.comment,
                "DocumentName": cmd.document_name, "DocumentVersion": cmd.document_version,
                "PluginName": plugin, "ResponseCode": shape["ResponseCode"],
                "ExecutionStartDateTime": iso_z(inv.started) if inv.started else "",
                "ExecutionElapsedTime": _elapsed(inv),
                "ExecutionEndDateTime": iso_z(inv.ended) if inv.ended else "",
                "Status": shape["Status"], "StatusDetails": shape["StatusDetails"],
                "StandardOutputContent": shape["Output"], "StandardOutputUrl": "",
                "StandardErrorContent": "", "StandardErrorUrl": "", "CloudWatchOutputConfig": cmd.cloudwatch,
            }
        return {
            "CommandId": cmd.command_id,
            "InstanceId": inv.instance_id,
            "Comment": cmd.comment,
            "DocumentName": cmd.document_name,
            "DocumentVersion": cmd.document_version,
            "PluginName": plugin or plugins[-1],
            "ResponseCode": inv.response_code,
            "ExecutionStartDateTime": iso_z(inv.started) if inv.started else "",
            "ExecutionElapsedTime": _elapsed(inv),
            "ExecutionEndDateTime": iso_z(inv.ended) if inv.ended else "",
            "Status": inv.status,
            "StatusDetails": inv.details,
            "StandardOutputContent": _stdout(inv),
            "StandardOutputUrl": inv.stdout_url,
            "StandardErrorContent": _stderr(inv),
            "StandardErrorUrl": inv.stderr_url,
            "CloudWatchOutputConfig": cmd.cloudwatch,
        }


@intercept("ssm", "ListCommandInvocations")
@_api
def list_command_invocations(req: AwsRequest) -> dict[str, Any]:
    body = req.json
    with _lock:
        commands = list(_store(req.account_id, req.region).values())
        if body.get("CommandId"):
            commands = [c for c in commands if c.command_id == body["CommandId"]]
            if not commands:
                raise ApiError("InvalidCommandId", "")
        invs = [i for c in reversed(commands) for i in c.invocations.values()]
        if body.get("InstanceId"):
            invs = [i for i in invs if i.instance_id == body["InstanceId"]]
        invs = [i for i in invs if _filter_by(i.status, i.command.requested, i.command.document_name,
                                                body.get("Filters") or [])]
        page, token = _page(invs, req)
        out: dict[str, Any] = {"CommandInvocations": [_invocation_shape(i, bool(body.get("Details")))
                                                      for i in page]}
    if token:
        out["NextToken"] = token
    return out


@intercept("ssm", "ListCommands")
@_api
def list_commands(req: AwsRequest) -> dict[str, Any]:
    body = req.json
    with _lock:
        commands = list(reversed(list(_store(req.account_id, req.region).values())))
        if body.get("CommandId"):
            commands = [c for c in commands if c.command_id == body["CommandId"]]
            if not commands:
                raise ApiError("InvalidCommandId", "")
        if body.get("InstanceId"):
            commands = [c for c in commands if body["InstanceId"] in c.invocations]
        commands = [c for c in commands if _filter_by(_command_status(c)[0], c.requested, c.document_name,
                                                      body.get("Filters") or [])]
        page, token = _page(commands, req)
        out: dict[str, Any] = {"Commands": [_command_shape(c) for c in page]}
    if token:
        out["NextToken"] = token
    return out


@intercept("ssm", "CancelCommand")
@_api
def cancel_command(req: AwsRequest) -> dict[str, Any]:
    body = req.json
    with _lock:
        cmd = _get_command(req, body.get("CommandId", ""))
        ids = body.get("InstanceIds") or list(cmd.invocations)
        for iid in ids:
            inv = cmd.invocations.get(iid)
            if inv is None:
                raise ApiError("InvalidInstanceId", f"Instance {iid} is not a target of the command.")
            if not inv.terminal:
                inv.cancel_requested = True
                if inv.status == "Pending":
                    inv.details = "Cancelling"
    return {}


def wait_all(timeout: float = 10.0) -> None:
    """Test helper: wait for every running invocation thread."""
    deadline = time.time() + timeout
    with _lock:
        threads = [i.thread for cmds in _commands.values() for c in cmds.values()
                   for i in c.invocations.values() if i.thread]
    for t in threads:
        t.join(max(0.0, deadline - time.time()))


@on_reset
def _reset(account_id: str | None) -> None:
    with _lock:
        keys = [k for k in _commands if account_id is None or k[0] == account_id]
        for key in keys:
            for cmd in _commands.pop(key).values():
                for inv in cmd.invocations.values():
                    inv.cancel_requested = True
                    if inv.proc is not None:
                        _kill(inv.proc)


def kill_all() -> None:
    """Kill every running command (at emulator exit)."""
    _reset(None)
