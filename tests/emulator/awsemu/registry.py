"""Registry of the requests the additions intercept, and access to moto."""

from __future__ import annotations

import io
from typing import Any, Callable

from .protocol import AwsRequest, Response
from .state import MOTO_LOCK

Handler = Callable[[AwsRequest], Response]

# (service, action) -> handler. Registered by the additions at import time.
INTERCEPTS: dict[tuple[str, str], Handler] = {}


def intercept(service: str, action: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        INTERCEPTS[(service, action)] = fn
        return fn

    return deco


class MotoCaller:
    """Calls moto's WSGI application and captures its response."""

    def __init__(self, moto_app: Any):
        self.moto_app = moto_app

    def __call__(self, req: AwsRequest) -> Response:
        environ = dict(req.environ)
        environ["wsgi.input"] = io.BytesIO(req.body)
        environ["CONTENT_LENGTH"] = str(len(req.body))
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"] = int(status.split(" ", 1)[0])
            captured["headers"] = headers
            return lambda data: None

        with MOTO_LOCK:
            result = self.moto_app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        # moto's own Content-Length is kept (a HEAD answer has none of the body).
        return Response(captured.get("status", 500), body, list(captured.get("headers", [])))


CALL_MOTO: MotoCaller | None = None


def call_moto(req: AwsRequest) -> Response:
    assert CALL_MOTO is not None
    return CALL_MOTO(req)


