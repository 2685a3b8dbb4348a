"""Addition 10: node credentials and IAM enforcement for them.

What moto lacks: moto accepts any credentials (no IAM evaluation unless its
global ``INITIAL_NO_AUTH_ACTION_COUNT`` switch is set, which would then
check every request of every test, the controller's too). A process on an
instance therefore could do anything the account can; the instance role's
policies are stored but never consulted.

What the emulator does instead:

- Commands run by Run Command (and the instance metadata's
  ``iam/security-credentials/<role>``) get *node credentials* that
  identify their instance: access key id ``ASIA<account-id><INSTANCE-HEX>``
  (``ASIA``, the 12-digit account, then the instance id without ``i-`` in
  upper case; e.g. ``ASIA1234567890120123456789ABCDEF01`` for
  ``i-0123456789abcdef01`` of account 123456789012), secret key
  ``testing`` and session token ``emulator-node/<instance-id>``.
- Every S3 request signed with such a key (``Authorization: ...
  Credential=<key>/...`` or a presigned ``X-Amz-Credential``) is evaluated
  against the IAM policies of the role of the instance's instance profile
  (the role's inline policies and its attached managed policies, as moto's
  IAM backend holds them): an explicit ``Deny`` wins, else an ``Allow``
  whose Action (``*``/``?`` wildcards, case-insensitive) / NotAction and
  Resource (wildcards) / NotResource match and whose Condition holds; no
  match -> S3 ``AccessDenied`` (403, S3 XML error). Conditions:
  ``StringEquals``, ``StringNotEquals``, ``StringEqualsIgnoreCase``,
  ``StringNotEqualsIgnoreCase``, ``StringLike``, ``StringNotLike``,
  ``Null``, ``Bool``, each with ``...IfExists`` and the
  ``ForAnyValue:``/``ForAllValues:`` prefixes; keys ``s3:prefix``,
  ``s3:delimiter``, ``s3:max-keys`` (ListBucket, ListBucketVersions),
  ``s3:VersionId``, ``aws:SecureTransport`` (true, as on AWS over HTTPS), ``aws:PrincipalAccount``,
  ``ec2:SourceInstanceARN``. A condition with another operator makes an
  Allow statement not apply and a Deny statement apply (fails closed).
  Policy variables (``${aws:username}`` ...) are not substituted.
- An allowed request is passed to moto in the instance's account (as with
  a 12-digit access key id). The instance is found in any region of that
  account; an instance that no longer exists, has no instance profile, or
  whose profile has no role: every S3 request denied.
- The instance profile of an instance is its IamInstanceProfile
  association (RunInstances), else the one of the launch template of the
  fleet that launched it (addition 3).
- Requests of other services signed with node credentials are allowed
  (not evaluated) and routed to the instance's account. Requests with any
  other key (the 12-digit account id, ``x-moto-account-id``) are never
  checked.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import unquote

from .protocol import AwsRequest, Response, query_error, s3_error
from .state import MOTO_LOCK, find_instance

NODE_KEY_RE = re.compile(r"^ASIA(\d{12})([0-9A-F]{8,17})$")
SECRET = "testing"


def node_access_key(account_id: str, instance_id: str) -> str:
    return f"ASIA{account_id}{instance_id[2:].upper()}"


def session_token(instance_id: str) -> str:
    return f"emulator-node/{instance_id}"


def parse_node_key(key: str | None) -> tuple[str, str] | None:
    """Node access key id -> (account id, instance id), else None."""
    m = NODE_KEY_RE.match(key or "")
    if not m:
        return None
    return m.group(1), "i-" + m.group(2).lower()


# ------------------------------------------------------------ the role


def _iam(account_id: str) -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[account_id]["aws"]


def _profile_by_arn_or_name(account_id: str, ref: Any) -> Any:
    if ref is None:
        return None
    if not isinstance(ref, str):
        if hasattr(ref, "roles"):
            return ref
        ref = (ref.get("Arn") or ref.get("Name")) if isinstance(ref, dict) else None
        if not ref:
            return None
    name = ref.rsplit("/", 1)[-1]
    for profile in list(_iam(account_id).instance_profiles.values()):
        if ref.startswith("arn:") and getattr(profile, "arn", None) == ref:
            return profile
        if profile.name == name:
            return profile
    return None


def instance_profile(account_id: str, instance_id: str) -> Any:
    """The moto InstanceProfile of an instance (or None)."""
    found = find_instance(instance_id, account_id)
    if found is None:
        return None
    inst, _, _ = found
    with MOTO_LOCK:
        assoc = inst.ec2_backend.iam_instance_profile_associations.get(instance_id)
        if assoc is not None:
            return assoc.iam_instance_profile
        for ref in (getattr(inst, "_emu_profile_arn", None), getattr(inst, "iam_instance_profile", None)):
            profile = _profile_by_arn_or_name(account_id, ref)
            if profile is not None:
                return profile
    return None


def instance_role(account_id: str, instance_id: str) -> Any:
    profile = instance_profile(account_id, instance_id)
    if profile is None or not profile.roles:
        return None
    return profile.roles[0]


def _doc(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(unquote(raw) if isinstance(raw, str) and raw.startswith("%7B") else raw)
    except (TypeError, ValueError):
        return {}


def role_policies(role: Any) -> list[dict[str, Any]]:
    """The policy documents of a role: inline ones, then attached managed
    ones (their default version)."""
    docs = [_doc(p) for p in list(role.policies.values())]
    for policy in list(role.managed_policies.values()):
        version = next((v for v in policy.versions if v.version_id == policy.default_version_id), None)
        if version is not None:
            docs.append(_doc(version.document))
    return docs


# ------------------------------------------------------------ evaluation


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _wild(pattern: str, value: str, ignore_case: bool) -> bool:
    """IAM wildcard match: ``*`` any run of characters, ``?`` one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


class _Unsupported(Exception):
    pass


_OPERATORS = {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
              "StringLike", "StringNotLike", "Bool", "Null"}


def _string_op(op: str, wanted: list[str], have: str) -> bool:
    if op in ("StringEquals", "StringNotEquals"):
        hit = have in wanted
    elif op in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        hit = have.lower() in [w.lower() for w in wanted]
    elif op in ("StringLike", "StringNotLike"):
        hit = any(_wild(w, have, False) for w in wanted)
    elif op == "Bool":
        hit = have.lower() in [w.lower() for w in wanted]
    else:
        raise _Unsupported(op)
    return not hit if "Not" in op else hit


def _condition_holds(condition: dict[str, Any], context: dict[str, list[str]]) -> bool:
    for raw_op, block in (condition or {}).items():
        if not isinstance(block, dict):
            raise _Unsupported(raw_op)
        qualifier, _, op = raw_op.rpartition(":")
        if_exists = op.endswith("IfExists")
        if if_exists:
            op = op[: -len("IfExists")]
        if op not in _OPERATORS or qualifier not in ("", "ForAnyValue", "ForAllValues"):
            raise _Unsupported(raw_op)
        for key, wanted in block.items():
            wanted = [str(w).lower() if isinstance(w, bool) else str(w) for w in _as_list(wanted)]
            have = context.get(key.lower())
            if op == "Null":
                present = have is not None
                if not any((w.lower() == "true") != present for w in wanted):
                    return False
                continue
            if have is None:
                if if_exists or "Not" in op:
                    continue
                return False
            if qualifier == "ForAllValues":
                ok = all(_string_op(op, wanted, h) for h in have)
            else:  # single-valued keys and ForAnyValue
                ok = any(_string_op(op, wanted, h) for h in have)
            if not ok:
                return False
    return True


def _matches(stmt: dict[str, Any], action: str, resource: str, context: dict[str, list[str]], effect: str) -> bool:
    if "Action" in stmt:
        if not any(_wild(a, action, True) for a in _as_list(stmt["Action"])):
            return False
    elif "NotAction" in stmt:
        if any(_wild(a, action, True) for a in _as_list(stmt["NotAction"])):
            return False
    else:
        return False
    if "Resource" in stmt:
        if not any(_wild(r, resource, False) for r in _as_list(stmt["Resource"])):
            return False
    elif "NotResource" in stmt:
        if any(_wild(r, resource, False) for r in _as_list(stmt["NotResource"])):
            return False
    try:
        return _condition_holds(stmt.get("Condition") or {}, context)
    except _Unsupported:
        return effect == "Deny"


def evaluate(policies: list[dict[str, Any]], action: str, resource: str,
             context: dict[str, list[str]] | None = None) -> str:
    """``"Deny"`` (explicit), ``"Allow"``, or ``"ImplicitDeny"``."""
    ctx = {k.lower(): v for k, v in (context or {}).items()}
    allowed = False
    for doc in policies:
        for stmt in _as_list(doc.get("Statement")):
            if not isinstance(stmt, dict):
                continue
            effect = stmt.get("Effect")
            if effect not in ("Allow", "Deny"):
                continue
            if _matches(stmt, action, resource, ctx, effect):
                if effect == "Deny":
                    return "Deny"
                allowed = True
    return "Allow" if allowed else "ImplicitDeny"


# ------------------------------------------------------- S3 -> IAM actions

_OBJECT_SUBRESOURCES = {
    "GET": {"tagging": "s3:GetObjectTagging", "acl": "s3:GetObjectAcl", "retention": "s3:GetObjectRetention",
            "legal-hold": "s3:GetObjectLegalHold", "attributes": "s3:GetObject",
            "uploadId": "s3:ListMultipartUploadParts"},
    "PUT": {"tagging": "s3:PutObjectTagging", "acl": "s3:PutObjectAcl", "retention": "s3:PutObjectRetention",
            "legal-hold": "s3:PutObjectLegalHold"},
    "DELETE": {"tagging": "s3:DeleteObjectTagging", "uploadId": "s3:AbortMultipartUpload"},
}

_BUCKET_SUBRESOURCES = {
    "GET": {"location": "s3:GetBucketLocation", "versioning": "s3:GetBucketVersioning",
            "policy": "s3:GetBucketPolicy", "tagging": "s3:GetBucketTagging",
            "lifecycle": "s3:GetLifecycleConfiguration", "acl": "s3:GetBucketAcl",
            "encryption": "s3:GetEncryptionConfiguration", "cors": "s3:GetBucketCORS",
            "logging": "s3:GetBucketLogging", "notification": "s3:GetBucketNotification",
            "object-lock": "s3:GetBucketObjectLockConfiguration",
            "ownershipControls": "s3:GetBucketOwnershipControls",
            "publicAccessBlock": "s3:GetBucketPublicAccessBlock", "website": "s3:GetBucketWebsite",
            "replication": "s3:GetReplicationConfiguration", "accelerate": "s3:GetAccelerateConfiguration",
            "requestPayment": "s3:GetBucketRequestPayment", "policyStatus": "s3:GetBucketPolicyStatus",
            "uploads": "s3:ListBucketMultipartUploads", "versions": "s3:ListBucketVersions"},
    "PUT": {"versioning": "s3:PutBucketVersioning", "policy": "s3:PutBucketPolicy",
            "tagging": "s3:PutBucketTagging", "lifecycle": "s3:PutLifecycleConfiguration",
            "acl": "s3:PutBucketAcl", "encryption": "s3:PutEncryptionConfiguration",
            "cors": "s3:PutBucketCORS", "logging": "s3:PutBucketLogging",
            "notification": "s3:PutBucketNotification", "object-lock": "s3:PutBucketObjectLockConfiguration",
            "ownershipControls": "s3:PutBucketOwnershipControls",
            "publicAccessBlock": "s3:PutBucketPublicAccessBlock", "website": "s3:PutBucketWebsite",
            "replication": "s3:PutReplicationConfiguration", "accelerate": "s3:PutAccelerateConfiguration",
            "requestPayment": "s3:PutBucketRequestPayment"},
    "DELETE": {"policy": "s3:DeleteBucketPolicy", "tagging": "s3:PutBucketTagging",
               "lifecycle": "s3:PutLifecycleConfiguration", "cors": "s3:PutBucketCORS",
               "encryption": "s3:PutEncryptionConfiguration", "website": "s3:DeleteBucketWebsite",
               "ownershipControls": "s3:PutBucketOwnershipControls",
               "publicAccessBlock": "s3:PutBucketPublicAccessBlock", "replication": "s3:PutReplicationConfiguration"},
}

Check = tuple[str, str, dict[str, list[str]]]


def _object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _copy_source(value: str) -> tuple[str, str, str | None] | None:
    src = unquote(value.split("?", 1)[0]).lstrip("/")
    version = None
    if "?versionId=" in value:
        version = value.split("?versionId=", 1)[1]
    bucket, _, key = src.partition("/")
    return (bucket, key, version) if bucket and key else None


def _list_context(query: dict[str, list[str]]) -> dict[str, list[str]]:
    ctx: dict[str, list[str]] = {}
    for name in ("prefix", "delimiter", "max-keys"):
        if name in query:
            ctx[f"s3:{name}"] = [query[name][0]]
    return ctx


def _delete_keys(body: bytes) -> list[tuple[str, str | None]]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return []
    out = []
    for obj in root.iter():
        if obj.tag.rsplit("}", 1)[-1] != "Object":
            continue
        key = version = None
        for child in obj:
            tag = child.tag.rsplit("}", 1)[-1]
            if tag == "Key":
                key = child.text or ""
            elif tag == "VersionId":
                version = child.text
        if key is not None:
            out.append((key, version))
    return out


def s3_checks(req: AwsRequest) -> list[Check]:
    """The (IAM action, resource ARN, condition context) a path-style S3
    request needs, all of them."""
    parts = req.path.lstrip("/").split("/", 1)  # PATH_INFO: percent-decoded already
    bucket = parts[0] if parts and parts[0] else ""
    key = parts[1] if len(parts) > 1 and parts[1] else ""
    q = req.query
    method = req.method
    if not bucket:
        return [("s3:ListAllMyBuckets", "arn:aws:s3:::*", {})]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if key:
        arn = _object_arn(bucket, key)
        version = q.get("versionId", [None])[0]
        vctx = {"s3:versionid": [version]} if version else {}
        for sub, action in _OBJECT_SUBRESOURCES.get(method, {}).items():
            if sub in q:
                if version and action in ("s3:GetObjectTagging", "s3:PutObjectTagging",
                                          "s3:DeleteObjectTagging", "s3:GetObjectAcl", "s3:PutObjectAcl"):
                    action = action.replace("Object", "ObjectVersion", 1)
                return [(action, arn, vctx)]
        if method in ("GET", "HEAD"):
            return [("s3:GetObjectVersion" if version else "s3:GetObject", arn, vctx)]
        if method == "PUT":
            checks: list[Check] = [("s3:PutObject", arn, {})]
            source = req.headers.get("x-amz-copy-source")
            if source:
                parsed = _copy_source(source)
                if parsed:
                    sb, sk, sv = parsed
                    checks.append(("s3:GetObjectVersion" if sv else "s3:GetObject", _object_arn(sb, sk),
                                   {"s3:versionid": [sv]} if sv else {}))
            return checks
        if method == "POST":  # CreateMultipartUpload, CompleteMultipartUpload, restore...
            if "restore" in q:
                return [("s3:RestoreObject", arn, {})]
            return [("s3:PutObject", arn, {})]
        if method == "DELETE":
            return [("s3:DeleteObjectVersion" if version else "s3:DeleteObject", arn, vctx)]
        return [(f"s3:{method}", arn, {})]
    for sub, action in _BUCKET_SUBRESOURCES.get(method, {}).items():
        if sub in q:
            ctx = _list_context(q) if action == "s3:ListBucketVersions" else {}
            return [(action, bucket_arn, ctx)]
    if method == "GET":
        return [("s3:ListBucket", bucket_arn, _list_context(q))]
    if method == "HEAD":
        return [("s3:ListBucket", bucket_arn, {})]
    if method == "PUT":
        return [("s3:CreateBucket", bucket_arn, {})]
    if method == "DELETE":
        return [("s3:DeleteBucket", bucket_arn, {})]
    if method == "POST" and "delete" in q:
        return [("s3:DeleteObjectVersion" if v else "s3:DeleteObject", _object_arn(bucket, k),
                 {"s3:versionid": [v]} if v else {}) for k, v in _delete_keys(req.body)]
    return [(f"s3:{method}", bucket_arn, {})]


# ------------------------------------------------------------ decisions


def authorize(account_id: str, instance_id: str, action: str, resource: str,
              context: dict[str, list[str]] | None = None) -> tuple[bool, str]:
    """(allowed, reason) for one IAM action of an instance's credentials."""
    role = instance_role(account_id, instance_id)
    if role is None:
        return False, (f"instance {instance_id} has no instance profile with a role "
                       f"(or no longer exists) in account {account_id}")
    # The nodes would use HTTPS on AWS; the emulator is plain HTTP.
    ctx = {"aws:securetransport": ["true"], "aws:principalaccount": [account_id],
           "ec2:sourceinstancearn": [f"arn:aws:ec2:*:{account_id}:instance/{instance_id}"]}
    ctx.update({k.lower(): v for k, v in (context or {}).items()})
    decision = evaluate(role_policies(role), action, resource, ctx)
    principal = f"arn:aws:sts::{account_id}:assumed-role/{role.name}/{instance_id}"
    if decision == "Allow":
        return True, ""
    why = "with an explicit deny in an identity-based policy" if decision == "Deny" \
        else "because no identity-based policy allows the " + action + " action"
    return False, f"User: {principal} is not authorized to perform: {action} on resource: \"{resource}\" {why}"


# ------------------------------------------------------- EC2 -> IAM checks

# actions whose resources are listed in the request: (parameter prefix, ARN kind)
_EC2_TARGETS = {
    "DeleteFleets": ("FleetId.", "fleet"),
    "ModifyFleet": ("FleetId", "fleet"),
    "TerminateInstances": ("InstanceId.", "instance"),
    "StopInstances": ("InstanceId.", "instance"),
    "StartInstances": ("InstanceId.", "instance"),
    "RebootInstances": ("InstanceId.", "instance"),
    "ModifyInstanceAttribute": ("InstanceId", "instance"),
}


def _ec2_tags(account_id: str, region: str, resource_id: str) -> dict[str, list[str]]:
    from moto.ec2.models import ec2_backends

    try:
        tags = ec2_backends[account_id][region].describe_tags(filters={"resource-id": [resource_id]})
    except Exception:
        return {}
    out: dict[str, list[str]] = {}
    for t in tags:
        for prefix in ("aws:ResourceTag/", "ec2:ResourceTag/"):
            out[f"{prefix}{t['key']}"] = [t["value"]]
    return out


def ec2_checks(req: AwsRequest, account_id: str) -> list[Check]:
    """(IAM action, resource ARN, context) of an EC2 request with node
    credentials: the listed fleets / instances with their tags as
    ``aws:ResourceTag/<key>``, else ``*``."""
    action = req.action or ""
    iam_action = f"ec2:{action}"
    target = _EC2_TARGETS.get(action)
    if target is None:
        return [(iam_action, "*", {})]
    prefix, kind = target
    ids = [v for k, v in req.form.items() if k == prefix or (prefix.endswith(".") and k.startswith(prefix))]
    return [(iam_action, f"arn:aws:ec2:{req.region}:{account_id}:{kind}/{i}", _ec2_tags(account_id, req.region, i))
            for i in ids] or [(iam_action, "*", {})]


def check(req: AwsRequest) -> Response | None:
    """None when the request may go on; else the error response. Only
    requests signed with node credentials are checked, and of those S3
    requests and EC2 requests other than Describe*/Get* (addition 15)."""
    node = getattr(req, "node", None)
    if node is None:
        return None
    if req.service == "ec2" and not (req.action or "").startswith(("Describe", "Get")):
        account_id, instance_id = node
        for action, resource, ctx in ec2_checks(req, account_id):
            ok, reason = authorize(account_id, instance_id, action, resource, ctx)
            if not ok:
                return query_error("ec2", "UnauthorizedOperation",
                                   f"You are not authorized to perform this operation. {reason}", 403)
        return None
    if req.service != "s3":
        return None
    account_id, instance_id = node
    if req.method == "POST" and "delete" in req.query and len(req.path.strip("/").split("/")) == 1:
        return _delete_objects(req, account_id, instance_id)
    for action, resource, ctx in s3_checks(req):
        ok, reason = authorize(account_id, instance_id, action, resource, ctx)
        if not ok:
            return s3_error("AccessDenied", reason, 403)
    return None


def _delete_objects(req: AwsRequest, account_id: str, instance_id: str) -> Response | None:
    """DeleteObjects is authorized key by key, as on AWS: denied keys come
    back as ``<Error>`` entries (AccessDenied) of a 200 answer, the others
    are deleted."""
    from xml.sax.saxutils import escape

    from . import registry

    denied = [k for (action, resource, ctx), (k, _) in zip(s3_checks(req), _delete_keys(req.body))
              if not authorize(account_id, instance_id, action, resource, ctx)[0]]
    if not denied:
        return None
    errors = "".join(f"<Error><Key>{escape(k)}</Key><Code>AccessDenied</Code><Message>Access Denied</Message>"
                     "</Error>" for k in denied)
    root = ET.fromstring(req.body)
    for obj in list(root):
        if obj.tag.rsplit("}", 1)[-1] != "Object":
            continue
        key = next((c.text or "" for c in obj if c.tag.rsplit("}", 1)[-1] == "Key"), None)
        if key in denied:
            root.remove(obj)
    if not any(o.tag.rsplit("}", 1)[-1] == "Object" for o in root):
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{errors}</DeleteResult>')
        return Response(200, body.encode(), [("Content-Type", "application/xml")])
    ET.register_namespace("", "http://s3.amazonaws.com/doc/2006-03-01/")
    req.body = ET.tostring(root)
    for name in [k for k in req.environ if k in ("HTTP_CONTENT_MD5",) or k.startswith("HTTP_X_AMZ_CHECKSUM_")]:
        del req.environ[name]
    resp = registry.call_moto(req)
    if resp.status == 200 and b"</DeleteResult>" in resp.body:
        resp.body = resp.body.replace(b"</DeleteResult>", errors.encode() + b"</DeleteResult>")
        resp.headers = [(k, v) for k, v in resp.headers if k.lower() != "content-length"]
    return resp


# ------------------------------------------------- ManagedPolicyArns in CFN

_installed = False


def install() -> None:
    """moto 5.2.1's ``AWS::IAM::Role`` ignores ``ManagedPolicyArns``: attach
    those that exist in the account (customer managed policies, e.g. a
    ``{"Ref": "<AWS::IAM::ManagedPolicy>"}``; AWS managed ones that moto did
    not load are skipped)."""
    global _installed
    if _installed:
        return
    _installed = True
    from moto.iam.models import Role, iam_backends

    original = Role.create_from_cloudformation_json.__func__

    def create(cls: Any, resource_name: str, cloudformation_json: dict[str, Any], account_id: str,
               region_name: str, **kwargs: Any) -> Any:
        role = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        backend = iam_backends[account_id]["aws"]
        for arn in (cloudformation_json.get("Properties") or {}).get("ManagedPolicyArns") or []:
            try:
                backend.attach_role_policy(arn, role.name)
            except Exception:
                pass
        return role

    Role.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign]
