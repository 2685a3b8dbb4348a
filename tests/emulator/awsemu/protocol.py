"""Parsing of incoming AWS requests and building of responses in the wire
shapes of the AWS protocols (JSON 1.1, query/EC2 XML, REST-XML for S3).

The botocore model is the authority for shapes; JSON timestamps are epoch
seconds as numbers, as the JSON protocol wants."""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from .state import DEFAULT_ACCOUNT_ID, DEFAULT_REGION

# X-Amz-Target prefixes of the JSON services the emulator knows by name.
TARGET_PREFIX_SERVICE = {
    "AmazonSSM": "ssm",
    "AWSPriceListService": "pricing",
}

_CRED_RE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_ACCOUNT_KEY_RE = re.compile(r"^\d{12}$")
# Node credentials (node_auth.node_access_key): ASIA + account + instance hex.
_NODE_KEY_RE = re.compile(r"^ASIA\d{12}[0-9A-F]{8,17}$")


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    def wsgi(self, start_response: Any) -> Iterable[bytes]:
        headers = list(self.headers)
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("Content-Length", str(len(self.body))))
        start_response(f"{self.status} {_REASONS.get(self.status, 'Status')}", headers)
        return [self.body]


_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass
class AwsRequest:
    """One incoming request, with what the emulator needs to route it."""

    environ: dict[str, Any]
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]  # lower-case names
    service: str | None  # signing name: ec2, cloudformation, ssm, s3, pricing...
    region: str
    account_id: str
    access_key: str | None
    protocol: str  # "json", "query" or "rest"
    action: str | None
    target: str | None
    form: dict[str, str] = field(default_factory=dict)  # query protocol params
    # (account id, instance id) when signed with node credentials (node_auth)
    node: tuple[str, str] | None = None
    _json: Any = None

    @property
    def json(self) -> dict[str, Any]:
        if self._json is None:
            try:
                self._json = json.loads(self.body or b"{}") or {}
            except ValueError:
                self._json = {}
        return self._json

    @property
    def call_name(self) -> str:
        """"ec2:DescribeInstances"-style name used for counting and throttling."""
        return f"{self.service or 'unknown'}:{self.action or self.method}"


def read_body(environ: dict[str, Any]) -> bytes:
    """Read the request body and put it back so that moto can read it too."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if length > 0:
        body = stream.read(length)
    elif environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" or environ.get(
        "wsgi.input_terminated"
    ):
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return body


def parse_request(environ: dict[str, Any]) -> AwsRequest:
    method = environ.get("REQUEST_METHOD", "GET").upper()
    path = environ.get("PATH_INFO", "") or "/"
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    headers = {
        k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
    }
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    body = read_body(environ)

    service = region = access_key = None
    m = _CRED_RE.search(headers.get("authorization", ""))
    if m:
        access_key, region, service = m.group(1), m.group(2), m.group(3)
    elif "X-Amz-Credential" in query:
        parts = query["X-Amz-Credential"][0].split("/")
        if len(parts) >= 4:
            access_key, region, service = parts[0], parts[2], parts[3]
    elif headers.get("authorization", "").startswith("AWS "):  # SigV2 (S3)
        access_key = headers["authorization"][4:].split(":", 1)[0].strip()
    elif "AWSAccessKeyId" in query:  # SigV2 presigned URL (boto3's default for S3)
        access_key = query["AWSAccessKeyId"][0]

    target = headers.get("x-amz-target")
    form: dict[str, str] = {}
    action = None
    ctype = headers.get("content-type", "")
    if target:
        protocol = "json"
        prefix, _, action = target.partition(".")
        service = service or TARGET_PREFIX_SERVICE.get(prefix)
    elif method == "POST" and ctype.startswith("application/x-www-form-urlencoded") and body:
        protocol = "query"
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        action = form.get("Action")
    elif "Action" in query and (service or "") != "s3":
        protocol = "query"
        form = {k: v[0] for k, v in query.items()}
        action = form.get("Action")
    else:
        protocol = "rest"
        if service in (None, "s3"):
            action = s3_action_name(method, path, query, headers)
            service = service or "s3"

    account_id = headers.get("x-moto-account-id")
    node = None
    if access_key and _NODE_KEY_RE.match(access_key):
        # Node credentials (see node_auth): the account is part of the key
        # (it wins over an x-moto-account-id header); moto sees the request
        # as the account's own (header and key).
        node = (access_key[4:16], "i-" + access_key[16:].lower())
        account_id = node[0]
        environ["HTTP_X_MOTO_ACCOUNT_ID"] = account_id
        headers["x-moto-account-id"] = account_id
        _rewrite_key(environ, headers, access_key, account_id)
    elif not account_id and access_key and _ACCOUNT_KEY_RE.match(access_key):
        # Credentials whose access key id is a 12-digit account id select
        # that account (how commands run by Run Command reach their own
        # account). moto reads the header, so set it.
        account_id = access_key
        environ["HTTP_X_MOTO_ACCOUNT_ID"] = account_id
        headers["x-moto-account-id"] = account_id

    return AwsRequest(
        environ=environ,
        method=method,
        path=path,
        query=query,
        body=body,
        headers=headers,
        service=service,
        region=region or DEFAULT_REGION,
        account_id=account_id or DEFAULT_ACCOUNT_ID,
        access_key=access_key,
        protocol=protocol,
        action=action,
        target=target,
        form=form,
        node=node,
    )


def _rewrite_key(environ: dict[str, Any], headers: dict[str, str], old: str, new: str) -> None:
    """Replace the access key id in the Authorization header or the
    presigned X-Amz-Credential by the account id."""
    auth = environ.get("HTTP_AUTHORIZATION")
    if auth:
        auth = auth.replace(f"Credential={old}/", f"Credential={new}/")
        if auth.startswith(f"AWS {old}:"):
            auth = f"AWS {new}:" + auth[len(f"AWS {old}:"):]
        environ["HTTP_AUTHORIZATION"] = headers["authorization"] = auth
    qs = environ.get("QUERY_STRING", "")
    if old in qs:
        qs = qs.replace(f"X-Amz-Credential={old}", f"X-Amz-Credential={new}")
        environ["QUERY_STRING"] = qs.replace(f"AWSAccessKeyId={old}", f"AWSAccessKeyId={new}")


def s3_action_name(method: str, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> str:
    """Best-effort S3 operation name of a path-style REST request."""
    parts = [p for p in path.split("/") if p]
    has_key = len(parts) > 1
    q = set(query)
    if not parts:
        return "ListBuckets"
    if method == "PUT":
        if has_key:
            if "partNumber" in q:
                return "UploadPart"
            if "x-amz-copy-source" in headers:
                return "CopyObject"
            return "PutObject"
        for sub, name in (("policy", "PutBucketPolicy"), ("tagging", "PutBucketTagging"),
                          ("versioning", "PutBucketVersioning"), ("lifecycle", "PutBucketLifecycleConfiguration")):
            if sub in q:
                return name
        return "CreateBucket"
    if method == "GET":
        if has_key:
            return "ListParts" if "uploadId" in q else "GetObject"
        if "location" in q:
            return "GetBucketLocation"
        if "uploads" in q:
            return "ListMultipartUploads"
        if "versions" in q:
            return "ListObjectVersions"
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "DELETE":
        if has_key:
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        return "DeleteBucket"
    if method == "POST":
        if "delete" in q:
            return "DeleteObjects"
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        return "PostObject"
    return method


def request_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------- JSON 1.1


def json_response(data: dict[str, Any], status: int = 200) -> Response:
    body = json.dumps(data).encode()
    return Response(status, body, [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("x-amzn-RequestId", request_id()),
    ])


def json_error(error_type: str, message: str, status: int = 400) -> Response:
    body = json.dumps({"__type": error_type, "message": message}).encode()
    return Response(status, body, [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("x-amzn-RequestId", request_id()),
        ("x-amzn-ErrorType", error_type),
    ])


# ------------------------------------------------------- query / EC2 XML


def query_error(service: str | None, code: str, message: str, status: int = 400) -> Response:
    rid = request_id()
    if service == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"</Error></Errors><RequestID>{rid}</RequestID></Response>"
        )
    else:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{escape(code)}</Code>"
            f"<Message>{escape(message)}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>"
        )
    return Response(status, body.encode(), [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)])


def s3_error(code: str, message: str, status: int) -> Response:
    rid = request_id()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{rid}</RequestId></Error>"
    )
    return Response(status, body.encode(), [("Content-Type", "application/xml"), ("x-amz-request-id", rid)])


def plain(status: int, text: str, content_type: str = "text/plain") -> Response:
    return Response(status, text.encode(), [("Content-Type", content_type)])


def json_plain(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, indent=1, default=str).encode(), [("Content-Type", "application/json")])
