"""The WSGI middleware in front of moto's server application.

Every request is parsed once (service, region, account, action), counted,
checked against injected throttles, and then either handled by one of the
emulator's additions (by ``X-Amz-Target`` for JSON protocols, by
``Action=`` for query protocols) or passed on to moto unchanged.
Requests signed with node credentials are checked against the instance
role's policies first (``node_auth``). Paths ``/_emulator/...`` (control API) and ``/_imds/<instance-id>/...``
(simulated instance metadata) never reach moto."""

from __future__ import annotations

import sys
import traceback
from typing import Any, Iterable

from . import control, faults, imds, node_auth, registry
from .protocol import AwsRequest, Response, json_error, parse_request, query_error, read_body
from .state import MOTO_LOCK


class EmulatorApp:
    def __init__(self, moto_app: Any, verbose: bool = False):
        self.moto_app = moto_app
        registry.CALL_MOTO = registry.MotoCaller(moto_app)
        self.verbose = verbose
        # Import the additions so that they register their intercepts and patches.
        from . import (addresses, cfn_delete, cfn_extra_types, cfn_fleets, cfn_instances,  # noqa: F401
                       cfn_timing, instance_info, prices, runcommand, shutdown, user_data)

        cfn_fleets.install()
        cfn_instances.install()
        cfn_delete.install()
        cfn_timing.install()
        prices.install()
        node_auth.install()
        shutdown.install()
        addresses.install()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        try:
            if path.startswith("/_emulator"):
                return control.handle(environ).wsgi(start_response)
            if path.startswith("/_imds/"):
                return imds.handle(environ).wsgi(start_response)
            if path.startswith("/moto-api"):
                # moto's own API; its reset also resets the additions' state.
                if path.rstrip("/") == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
                    control.reset(None)
                read_body(environ)
                with MOTO_LOCK:
                    return list(self.moto_app(environ, start_response))
            req = parse_request(environ)
            return self.dispatch(req).wsgi(start_response)
        except Exception as exc:  # pragma: no cover - last resort
            traceback.print_exc(file=sys.stderr)
            return Response(500, f"emulator error: {exc!r}".encode(), [("Content-Type", "text/plain")]).wsgi(
                start_response
            )

    def dispatch(self, req: AwsRequest) -> Response:
        faults.count_call(req)
        throttled = faults.throttle_response(req)
        if throttled is not None:
            return throttled
        denied = node_auth.check(req)
        if denied is not None:
            if self.verbose:
                print(f"{req.call_name} -> 403 (node credentials of {req.node})", file=sys.stderr)
            return denied
        handler = registry.INTERCEPTS.get((req.service or "", req.action or ""))
        if handler is not None:
            try:
                return handler(req)
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                if req.protocol == "json":
                    return json_error("InternalServerError", f"emulator: {exc!r}", 500)
                return query_error(req.service, "InternalFailure", f"emulator: {exc!r}", 500)
        resp = registry.call_moto(req)
        if self.verbose:
            print(f"{req.call_name} -> {resp.status}", file=sys.stderr)
        return resp
