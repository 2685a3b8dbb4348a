"""The control API, ``/_emulator/...`` on the emulator's own port, and
addition 7 (isolation).

Isolation: moto keeps one global state. Tests either reset it between tests
(``POST /_emulator/reset``, which also kills running commands and clears
the additions' state) or give each test its own account: every request
with header ``x-moto-account-id: <12 digits>`` (or whose access key id is a
12-digit number) lives in that account, and ``POST /_emulator/reset`` with
an ``account_id`` resets that account only -- so tests can run in
parallel on one emulator.

Endpoints (JSON bodies; the account is ``account_id`` in the body or query,
else the ``x-moto-account-id`` header, else 123456789012):

- ``GET  /_emulator/health`` -> ``{"status": "ok", "endpoint": ...}``
- ``POST /_emulator/reset`` ``{"account_id"?}`` -> everything, or one account
- ``GET  /_emulator/calls`` -> ``{"account_id", "total", "calls":
  {"ec2:DescribeInstances": 3, ...}}`` (``?all=1``: every account);
  ``DELETE /_emulator/calls`` clears the counts
- ``POST /_emulator/interrupt`` ``{"instance_id", "delay_seconds"?,
  "action"?: "terminate"|"stop", "replace"?: false}``
- ``POST /_emulator/efa-fault`` ``{"instance_id", "fault": "no-device"|"unreachable"|"none"}``
  (addition 17: what ``fi_info`` / ``fi_pingpong`` on the instance see)
- ``POST /_emulator/throttle`` ``{"action": "DescribeInstances" or
  "ec2:DescribeInstances", "count": N}``; ``GET`` lists them
- ``POST /_emulator/fail-create-stack`` ``{"stack_name", "reason"?}``
- ``GET|POST /_emulator/stack-delay`` ``{"create_seconds"?, "delete_seconds"?}``
  (addition 9: stacks stay CREATE_IN_PROGRESS / DELETE_IN_PROGRESS that long)
- ``POST /_emulator/instance-command`` ``{"instance_id", "command", "args"}``
  (addition 14: what the ``systemctl``/``shutdown``/``poweroff``/``halt``
  shims of a controller instance's user data ask for)
- ``GET|POST /_emulator/config`` ``{"interruption_delay",
  "invocation_visibility_delay", "poll_interval", "node_path"}``
  (``node_path`` ``"minimal"|"full"``: for the account when one is given,
  else the default of every account; see ``node_path``)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from . import cfn_timing, faults, node_path
from .protocol import Response, json_plain, read_body
from .state import CONFIG, DEFAULT_ACCOUNT_ID, MOTO_LOCK, run_reset_hooks


def reset_moto(account_id: str | None) -> None:
    """Drop moto's backends of one account (or of all accounts)."""
    from moto.core.base_backend import BackendDict, BaseBackend
    from moto.core.model_instances import reset_model_data

    with MOTO_LOCK:
        seen: set[int] = set()
        for backend_dict in list(BackendDict._instances):
            if id(backend_dict) in seen:
                continue
            seen.add(id(backend_dict))
            accounts = [account_id] if account_id is not None else list(backend_dict.keys())
            for acct in accounts:
                if acct not in backend_dict:
                    continue
                for backend in list(dict.__getitem__(backend_dict, acct).values()):
                    # BaseBackend.reset only re-creates the backend (slow for
                    # EC2); call the ones that release something (S3 files).
                    if type(backend).reset is not BaseBackend.reset:
                        backend.reset()
                dict.__delitem__(backend_dict, acct)
            bucket_accounts = getattr(backend_dict, "bucket_accounts", None)
            if isinstance(bucket_accounts, dict):
                for bucket, (_, acct) in list(bucket_accounts.items()):
                    if account_id is None or acct == account_id:
                        bucket_accounts.pop(bucket, None)
        if account_id is None:
            BackendDict._instances.clear()
            reset_model_data()


def reset(account_id: str | None) -> None:
    run_reset_hooks(account_id)
    reset_moto(account_id)


def handle(environ: dict[str, Any]) -> Response:
    import json

    path = environ.get("PATH_INFO", "").rstrip("/")
    method = environ.get("REQUEST_METHOD", "GET").upper()
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    raw = read_body(environ)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return json_plain({"error": "body must be JSON"}, 400)
    if not isinstance(body, dict):
        return json_plain({"error": "body must be a JSON object"}, 400)
    header_account = environ.get("HTTP_X_MOTO_ACCOUNT_ID")
    explicit = body.get("account_id") or query.get("account_id") or header_account
    account = explicit or DEFAULT_ACCOUNT_ID
    name = path[len("/_emulator"):].lstrip("/")

    if name == "health":
        return json_plain({"status": "ok", "endpoint": CONFIG.endpoint_url(), "state_dir": CONFIG.state_dir})
    if name == "reset" and method == "POST":
        reset(explicit)
        return json_plain({"reset": explicit or "all"})
    if name == "calls":
        if method == "DELETE":
            faults.clear_calls(explicit)
            return json_plain({"cleared": explicit or "all"})
        if query.get("all"):
            return json_plain(faults.call_counts(None))
        return json_plain(faults.call_counts(account))
    if name == "interrupt" and method == "POST":
        if not body.get("instance_id"):
            return json_plain({"error": "instance_id is required"}, 400)
        try:
            result = faults.interrupt_instance(body["instance_id"], body.get("delay_seconds"),
                                               explicit, body.get("action") or "terminate",
                                               body.get("replace", True) is not False)
        except KeyError as err:
            return json_plain({"error": str(err)}, 404)
        except ValueError as err:
            return json_plain({"error": str(err)}, 409)
        return json_plain(result)
    if name == "efa-fault" and method == "POST":
        from . import fabric, state

        if not body.get("instance_id"):
            return json_plain({"error": "instance_id is required"}, 400)
        if state.find_instance(body["instance_id"], explicit) is None:
            return json_plain({"error": f"instance {body['instance_id']} not found"}, 404)
        try:
            return json_plain(fabric.set_fault(account, body["instance_id"], str(body.get("fault") or "")))
        except ValueError as err:
            return json_plain({"error": str(err)}, 400)
    if name == "instance-shutdown" and method == "POST":
        from . import shutdown

        if not body.get("instance_id"):
            return json_plain({"error": "instance_id is required"}, 400)
        try:
            result = shutdown.request_shutdown(body["instance_id"], explicit,
                                               float(body.get("delay_seconds") or 0), bool(body.get("cancel")))
        except KeyError as err:
            return json_plain({"error": str(err)}, 404)
        except ValueError as err:
            return json_plain({"error": str(err)}, 409)
        return json_plain(result)
    if name == "throttle":
        if method == "POST":
            if not body.get("action"):
                return json_plain({"error": "action is required"}, 400)
            faults.throttle(account, body["action"], int(body.get("count", 1)))
        return json_plain({"account_id": account, "throttles": faults.throttles(account)})
    if name == "fail-create-stack" and method == "POST":
        if not body.get("stack_name"):
            return json_plain({"error": "stack_name is required"}, 400)
        faults.fail_next_create_stack(account, body["stack_name"], body.get("reason"))
        return json_plain({"account_id": account, "stack_name": body["stack_name"]})
    if name == "stack-delay":
        if method == "POST":
            try:
                result = cfn_timing.set_delays(account, body.get("create_seconds"), body.get("delete_seconds"))
            except (TypeError, ValueError):
                return json_plain({"error": "create_seconds and delete_seconds must be numbers"}, 400)
        else:
            result = cfn_timing.delays(account)
        return json_plain({"account_id": account, **result})
    if name == "config":
        if method == "POST":
            if "node_path" in body:
                try:
                    node_path.set_mode(explicit, body["node_path"])
                except ValueError as err:
                    return json_plain({"error": str(err)}, 400)
            for key in ("interruption_delay", "invocation_visibility_delay", "poll_interval"):
                if key in body:
                    setattr(CONFIG, key, float(body[key]))
        return json_plain({"interruption_delay": CONFIG.interruption_delay,
                           "invocation_visibility_delay": CONFIG.invocation_visibility_delay,
                           "poll_interval": CONFIG.poll_interval,
                           "account_id": account, "node_path": node_path.mode(account)})
    if name == "instance-command" and method == "POST":
        from . import user_data

        status, answer = user_data.handle_command(body)
        return json_plain(answer, status)
    return json_plain({"error": f"unknown control endpoint {method} {path}"}, 404)
