"""Addition 9: stack operations that take time.

What moto lacks: CreateStack and DeleteStack finish inside the call. A
client never sees a stack in CREATE_IN_PROGRESS or DELETE_IN_PROGRESS, so
nothing can test what happens when the client is killed (or another one
arrives) while CloudFormation is still working, which is minutes in AWS.

What the emulator does, per account, once asked to
(``POST /_emulator/stack-delay {"create_seconds": S, "delete_seconds": D}``;
0 turns a delay off):

- CreateStack: moto creates the resources at once (so a fleet's instances
  may run before the stack is done, as in AWS), but the stack stays
  CREATE_IN_PROGRESS, without Outputs and without its CREATE_COMPLETE
  event, for S seconds; then it is CREATE_COMPLETE. The work goes on
  whatever the client does meanwhile.
- DeleteStack: the call is accepted at once; the stack is
  DELETE_IN_PROGRESS (event "User Initiated", no Outputs) for D seconds,
  then deleted as addition 4 deletes (DELETE_COMPLETE, or DELETE_FAILED).
  DeleteStack of a stack already being deleted is accepted and changes
  nothing, as in AWS. DeleteStack of a stack still being created stops
  the creation (no CREATE_COMPLETE) and deletes it.

An injected CreateStack failure (addition 6) is not delayed. Reset of the
account cancels what is pending.
"""

from __future__ import annotations

import threading
from typing import Any

from .protocol import AwsRequest, Response, request_id
from .registry import call_moto, intercept
from .state import MOTO_LOCK, on_reset

_lock = threading.Lock()
# account -> {"create_seconds": s, "delete_seconds": s}
_delays: dict[str, dict[str, float]] = {}
# (account, stack id) -> pending timer (creation or deletion)
_timers: dict[tuple[str, str], threading.Timer] = {}
_installed = False


def set_delays(account_id: str, create_seconds: float | None = None,
               delete_seconds: float | None = None) -> dict[str, float]:
    with _lock:
        current = dict(_delays.get(account_id, {}))
        if create_seconds is not None:
            current["create_seconds"] = max(0.0, float(create_seconds))
        if delete_seconds is not None:
            current["delete_seconds"] = max(0.0, float(delete_seconds))
        current = {k: v for k, v in current.items() if v > 0}
        if current:
            _delays[account_id] = current
        else:
            _delays.pop(account_id, None)
        return delays(account_id, locked=True)


def delays(account_id: str, locked: bool = False) -> dict[str, float]:
    if not locked:
        with _lock:
            return delays(account_id, locked=True)
    d = _delays.get(account_id, {})
    return {"create_seconds": d.get("create_seconds", 0.0), "delete_seconds": d.get("delete_seconds", 0.0)}


def _backend(account_id: str, region: str) -> Any:
    from moto.cloudformation.models import cloudformation_backends

    return cloudformation_backends[account_id][region]


def _live_stack(backend: Any, name_or_id: str) -> Any:
    for stack in list(backend.stacks.values()):
        if name_or_id in (stack.stack_id, stack.name):
            return stack
    return None


def _start(key: tuple[str, str], seconds: float, fn: Any) -> None:
    def fire() -> None:
        with _lock:
            if _timers.get(key) is not timer:
                return
            _timers.pop(key, None)
        with MOTO_LOCK:
            fn()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    with _lock:
        old = _timers.pop(key, None)
        if old is not None:
            old.cancel()
        _timers[key] = timer
    timer.start()


def _cancel(key: tuple[str, str]) -> bool:
    with _lock:
        timer = _timers.pop(key, None)
    if timer is None:
        return False
    timer.cancel()
    return True


def after_create(req: AwsRequest, name: str) -> None:
    """Called (MOTO_LOCK held) right after moto created stack ``name``:
    hold it in CREATE_IN_PROGRESS for the account's create delay."""
    seconds = delays(req.account_id)["create_seconds"]
    if seconds <= 0:
        return
    stack = _live_stack(_backend(req.account_id, req.region), name)
    if stack is None or stack.status != "CREATE_COMPLETE":
        return
    if stack.events and stack.events[-1].resource_status == "CREATE_COMPLETE" \
            and stack.events[-1].logical_resource_id == stack.name:
        stack.events.pop()
    stack.status = "CREATE_IN_PROGRESS"

    def complete() -> None:
        if stack.status == "CREATE_IN_PROGRESS":
            stack.status = "CREATE_COMPLETE"
            stack._add_stack_event("CREATE_COMPLETE")

    _start((req.account_id, stack.stack_id), seconds, complete)


def _delete_response() -> Response:
    rid = request_id()
    body = ('<DeleteStackResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/">'
            f"<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></DeleteStackResponse>")
    return Response(200, body.encode(), [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)])


@intercept("cloudformation", "DeleteStack")
def _delete_stack(req: AwsRequest) -> Response:
    name = req.form.get("StackName", "")
    seconds = delays(req.account_id)["delete_seconds"]
    with MOTO_LOCK:
        backend = _backend(req.account_id, req.region)
        stack = _live_stack(backend, name)
        if stack is None:
            return call_moto(req)
        key = (req.account_id, stack.stack_id)
        if stack.status == "DELETE_IN_PROGRESS":
            return _delete_response()  # already being deleted: nothing more to do
        _cancel(key)  # a creation still in progress stops here
        if seconds <= 0:
            return call_moto(req)
        stack._add_stack_event("DELETE_IN_PROGRESS", resource_status_reason="User Initiated")
        stack.status = "DELETE_IN_PROGRESS"
        stack_id = stack.stack_id

        def delete() -> None:
            if stack_id in backend.stacks:
                backend.delete_stack(stack_id)

        _start(key, seconds, delete)
    return _delete_response()


def install() -> None:
    """Hide Outputs while a stack is created, and do not announce a
    deletion twice (idempotent; after cfn_delete.install)."""
    global _installed
    if _installed:
        return
    _installed = True
    from moto.cloudformation.models import Stack

    outputs = Stack.outputs.fget
    Stack.outputs = property(lambda self: None if self.status == "CREATE_IN_PROGRESS" else outputs(self))

    original_add = Stack._add_stack_event

    def add_stack_event(self: Any, resource_status: str, *args: Any, **kwargs: Any) -> None:
        # the delayed deletion already announced itself when it was asked for
        if resource_status == "DELETE_IN_PROGRESS" and self.status == "DELETE_IN_PROGRESS" and self.events \
                and self.events[-1].resource_status == "DELETE_IN_PROGRESS":
            return
        original_add(self, resource_status, *args, **kwargs)

    Stack._add_stack_event = add_stack_event


@on_reset
def _reset(account_id: str | None) -> None:
    with _lock:
        if account_id is None:
            _delays.clear()
            keys = list(_timers)
        else:
            _delays.pop(account_id, None)
            keys = [k for k in _timers if k[0] == account_id]
        timers = [_timers.pop(k) for k in keys]
    for timer in timers:
        timer.cancel()
