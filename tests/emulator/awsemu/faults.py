"""Addition 6: fault injection for tests, and API call counting.

moto has no way to make a real API misbehave on demand. The emulator adds,
per account (``x-moto-account-id``):

- ``interrupt_instance``: a spot interruption. The notice appears at once at
  the instance's metadata endpoint (``spot/instance-action``, plus a
  rebalance recommendation) and the instance is terminated after a short
  configurable delay instead of two minutes, with the state reason real EC2
  gives (``Server.SpotInstanceTermination``). A maintain-type spot fleet
  then launches a replacement (see ``cfn_fleets.replace_interrupted``),
  unless told there is no capacity for one (``replace=False``).
- ``throttle``: the next N calls of a named API fail with the throttling
  error of their protocol (EC2: ``RequestLimitExceeded`` HTTP 503; other
  query APIs: ``Throttling`` HTTP 400; JSON APIs: ``ThrottlingException``
  HTTP 400; S3: ``SlowDown`` HTTP 503). The SDKs retry these, so N calls
  are consumed by retries too.
- ``fail_next_create_stack``: the next CreateStack of a given stack name is
  accepted, then fails the way CloudFormation fails: one resource reports
  CREATE_FAILED with the reason, the stack rolls back (its resources are
  deleted) and ends in ROLLBACK_COMPLETE with StackStatusReason set.
- call counts per account and API since the last reset (for benchmarks).
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from typing import Any

from . import imds
from .registry import call_moto, intercept
from .protocol import AwsRequest, Response, json_error, query_error, s3_error
from .state import CONFIG, MOTO_LOCK, find_instance, iso_z, on_reset, utcnow

_lock = threading.Lock()
_calls: dict[str, Counter[str]] = defaultdict(Counter)
_throttles: dict[str, dict[str, int]] = defaultdict(dict)
_failing_stacks: dict[str, dict[str, str]] = defaultdict(dict)
_interrupt_timers: dict[str, threading.Timer] = {}


# ------------------------------------------------------------ call counts


def count_call(req: AwsRequest) -> None:
    with _lock:
        _calls[req.account_id][req.call_name] += 1


def call_counts(account_id: str | None) -> dict[str, Any]:
    with _lock:
        if account_id is None:
            return {acct: dict(c) for acct, c in _calls.items()}
        counts = dict(_calls.get(account_id, {}))
    return {"account_id": account_id, "total": sum(counts.values()), "calls": counts}


def clear_calls(account_id: str | None) -> None:
    with _lock:
        if account_id is None:
            _calls.clear()
        else:
            _calls.pop(account_id, None)


# -------------------------------------------------------------- throttling


def throttle(account_id: str, action: str, count: int) -> None:
    """Fail the next ``count`` calls of ``action`` ("DescribeInstances" or
    "ec2:DescribeInstances") in the account; count 0 removes the throttle."""
    with _lock:
        if count <= 0:
            _throttles[account_id].pop(action, None)
        else:
            _throttles[account_id][action] = count


def throttles(account_id: str) -> dict[str, int]:
    with _lock:
        return dict(_throttles.get(account_id, {}))


def throttle_response(req: AwsRequest) -> Response | None:
    with _lock:
        table = _throttles.get(req.account_id)
        if not table:
            return None
        for key in (req.call_name, req.action or ""):
            if table.get(key, 0) > 0:
                table[key] -= 1
                if table[key] == 0:
                    del table[key]
                break
        else:
            return None
    if req.protocol == "json":
        return json_error("ThrottlingException", "Rate exceeded", 400)
    if req.service == "ec2":
        return query_error("ec2", "RequestLimitExceeded", "Request limit exceeded.", 503)
    if req.protocol == "query":
        return query_error(req.service, "Throttling", "Rate exceeded", 400)
    return s3_error("SlowDown", "Please reduce your request rate.", 503)


# -------------------------------------------------------- spot interruption


def interrupt_instance(instance_id: str, delay_seconds: float | None = None,
                       account_id: str | None = None, action: str = "terminate",
                       replace: bool = True) -> dict[str, Any]:
    """Post a spot interruption notice for the instance and terminate (or
    stop) it after ``delay_seconds`` (default: the server's
    ``interruption_delay``); its fleet replaces it unless ``replace`` is
    false (the fleet finds no capacity)."""
    found = find_instance(instance_id, account_id)
    if found is None:
        raise KeyError(f"instance {instance_id} not found")
    instance, acct, region = found
    if instance.state != "running":
        raise ValueError(f"instance {instance_id} is {instance.state}, not running")
    delay = CONFIG.interruption_delay if delay_seconds is None else float(delay_seconds)
    when = utcnow().timestamp() + delay
    notice = {"action": action, "time": iso_z(when, millis=False)}
    imds.set_spot_notice(instance_id, notice)
    imds.set_rebalance(instance_id, {"noticeTime": iso_z(utcnow(), millis=False)})

    def fire() -> None:
        _interrupt_timers.pop(instance_id, None)
        _terminate_interrupted(instance, action, replace)

    timer = threading.Timer(max(delay, 0.0), fire)
    timer.daemon = True
    _interrupt_timers[instance_id] = timer
    timer.start()
    return {"instance_id": instance_id, "account_id": acct, "region": region, "notice": notice,
            "lifecycle": getattr(instance, "lifecycle", None) or "on-demand", "replace": replace}


def _terminate_interrupted(instance: Any, action: str, replace: bool = True) -> None:
    from moto.ec2.models.instances import StateReason

    from . import cfn_fleets

    with MOTO_LOCK:
        if instance.state in ("terminated", "shutting-down"):
            return
        backend = instance.ec2_backend
        try:
            if action == "stop":
                backend.stop_instances([instance.id])
            else:
                backend.terminate_instances([instance.id])
        except Exception:
            return
        instance.state_reason = StateReason(
            "Server.SpotInstanceTermination: Spot instance termination",
            "Server.SpotInstanceTermination",
        )
        instance._reason = "Server.SpotInstanceTermination: Spot instance termination"
        for req in list(getattr(backend, "spot_instance_requests", {}).values()):
            if getattr(req, "instance", None) is instance:
                req.state = "closed" if action == "terminate" else "disabled"
                req._status_code = "instance-terminated-no-capacity"
                req.status_message = "Spot Instance terminated due to lack of capacity."
        if replace:
            cfn_fleets.replace_interrupted(instance)


# ------------------------------------------------------ failing CreateStack


def fail_next_create_stack(account_id: str, stack_name: str, reason: str | None = None) -> None:
    with _lock:
        _failing_stacks[account_id][stack_name] = reason or "Resource creation cancelled (injected failure)"


def pop_failing_stack(account_id: str, stack_name: str) -> str | None:
    with _lock:
        return _failing_stacks.get(account_id, {}).pop(stack_name, None)


@intercept("cloudformation", "CreateStack")
def _create_stack(req: AwsRequest) -> Response:
    """CreateStack passes to moto; an injected failure then rolls it back;
    else the account's creation delay (addition 9) holds it in progress."""
    from . import cfn_timing

    name = req.form.get("StackName", "")
    reason = pop_failing_stack(req.account_id, name)
    with MOTO_LOCK:
        resp = call_moto(req)
        if reason is not None and resp.status == 200:
            fail_created_stack(req.account_id, req.region, name, reason)
        elif resp.status == 200:
            cfn_timing.after_create(req, name)
    return resp


def fail_created_stack(account_id: str, region: str, stack_name: str, reason: str) -> None:
    """Turn a just-created moto stack into a rolled-back one."""
    from moto.cloudformation.models import cloudformation_backends

    from . import cfn_delete

    with MOTO_LOCK:
        backend = cloudformation_backends[account_id][region]
        stack = next((s for s in backend.stacks.values() if s.name == stack_name), None)
        if stack is None or stack.status != "CREATE_COMPLETE":
            return
        first = next(iter((stack.template_dict or {}).get("Resources", {}) or {}), None)
        cfn_delete.roll_back_stack(stack, reason, first)


# ------------------------------------------------------------------ reset


@on_reset
def _reset(account_id: str | None) -> None:
    with _lock:
        if account_id is None:
            _calls.clear()
            _throttles.clear()
            _failing_stacks.clear()
        else:
            _calls.pop(account_id, None)
            _throttles.pop(account_id, None)
            _failing_stacks.pop(account_id, None)
    if account_id is None:
        for timer in list(_interrupt_timers.values()):
            timer.cancel()
        _interrupt_timers.clear()


def parse_body(environ: dict[str, Any]) -> dict[str, Any]:
    from .protocol import read_body

    raw = read_body(environ)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}

