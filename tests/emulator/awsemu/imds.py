"""Simulated instance metadata service (IMDS), one per instance.

moto has a single, instance-less ``/latest/meta-data`` stub. Commands run
by Run Command need their own instance's metadata, and tests need the spot
interruption notice. The emulator serves, for every instance,

    http://127.0.0.1:<port>/_imds/<instance-id>/latest/...

- ``PUT  latest/api/token`` (IMDSv2 token; tokens are accepted, not required)
- ``GET  latest/meta-data/`` and ``instance-id``, ``instance-type``,
  ``ami-id``, ``hostname``, ``local-hostname``, ``local-ipv4``,
  ``public-ipv4``, ``mac``, ``instance-life-cycle``, ``placement/region``,
  ``placement/availability-zone``, ``placement/availability-zone-id``,
  ``tags/instance/<key>``, ``iam/info`` and ``iam/security-credentials/<role>``
  (the role of the instance's profile, with the node credentials of
  ``node_auth``; absent without a profile)
- ``GET  latest/meta-data/spot/instance-action`` -- 404 until an
  interruption is injected, then ``{"action": "terminate", "time": ...}``;
  ``spot/termination-time`` likewise
- ``GET  latest/meta-data/events/recommendations/rebalance`` -- 404 until
  an interruption is injected
- ``GET  latest/dynamic/instance-identity/document``

Run Command gives the URL to commands as ``INFRA_IMDS_URL`` and as
``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (the SDKs' IMDS endpoint setting).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from .protocol import Response, plain, read_body
from .state import find_instance, instance_tags, iso_z, on_reset

_lock = threading.Lock()
_spot_notices: dict[str, dict[str, str]] = {}
_rebalance: dict[str, dict[str, str]] = {}

def set_spot_notice(instance_id: str, notice: dict[str, str]) -> None:
    with _lock:
        _spot_notices[instance_id] = notice


def set_rebalance(instance_id: str, notice: dict[str, str]) -> None:
    with _lock:
        _rebalance[instance_id] = notice


def spot_notice(instance_id: str) -> dict[str, str] | None:
    with _lock:
        return _spot_notices.get(instance_id)


def imds_url(instance_id: str) -> str:
    from .state import CONFIG

    return f"{CONFIG.endpoint_url()}/_imds/{instance_id}"


def az_id(region: str, az: str) -> str:
    from .prices import zone_map

    for zone_id, name in zone_map(region).items():
        if name == az:
            return zone_id
    return ""


def _metadata(instance: Any, account_id: str, region: str) -> dict[str, str]:
    az = instance.placement or f"{region}a"
    ip = instance.private_ip or "10.0.0.10"
    tags = instance_tags(instance)
    data = {
        "ami-id": instance.image_id or "",
        "ami-launch-index": str(getattr(instance, "ami_launch_index", 0)),
        "hostname": f"ip-{ip.replace('.', '-')}.ec2.internal",
        "local-hostname": f"ip-{ip.replace('.', '-')}.ec2.internal",
        "local-ipv4": ip,
        "instance-id": instance.id,
        "instance-type": instance.instance_type,
        "instance-life-cycle": "spot" if getattr(instance, "lifecycle", None) == "spot" else "on-demand",
        "mac": "0e:00:00:00:00:01",
        "placement/region": region,
        "placement/availability-zone": az,
        "placement/availability-zone-id": az_id(region, az),
        "reservation-id": "r-emulator",
        "security-groups": "\n".join(getattr(g, "name", "") for g in getattr(instance, "security_groups", [])),
    }
    if instance.public_ip:
        data["public-ipv4"] = instance.public_ip
    for key, value in tags.items():
        data[f"tags/instance/{key}"] = value
    data["tags/instance"] = "\n".join(tags)
    return data


def _listing(keys: list[str], prefix: str) -> str:
    children: list[str] = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if not rest:
            continue
        head, sep, _ = rest.partition("/")
        entry = head + ("/" if sep else "")
        if entry not in children:
            children.append(entry)
    return "\n".join(children)


def handle(environ: dict[str, Any]) -> Response:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET").upper()
    read_body(environ)
    parts = path.split("/", 3)  # ['', '_imds', '<id>', 'latest/...']
    if len(parts) < 3 or not parts[2]:
        return plain(404, "Not Found")
    instance_id = parts[2]
    rest = parts[3] if len(parts) > 3 else ""
    if rest == "latest/api/token":
        if method != "PUT":
            return plain(405, "Method Not Allowed")
        ttl = environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN_TTL_SECONDS", "21600")
        return Response(200, f"emu-{uuid.uuid4().hex}".encode(),
                        [("Content-Type", "text/plain"), ("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl)])
    found = find_instance(instance_id)
    if found is None:
        return plain(404, "Not Found")
    instance, account_id, region = found
    if instance.state != "running":
        return plain(404, "Not Found")
    if rest in ("latest", "latest/"):
        return plain(200, "dynamic\nmeta-data\n")
    if rest.startswith("latest/dynamic/instance-identity/document"):
        doc = {
            "accountId": account_id, "architecture": getattr(instance, "architecture", "x86_64"),
            "availabilityZone": instance.placement or f"{region}a", "imageId": instance.image_id,
            "instanceId": instance.id, "instanceType": instance.instance_type,
            "pendingTime": iso_z(instance.launch_time, millis=False) if hasattr(instance.launch_time, "year")
            else str(instance.launch_time),
            "privateIp": instance.private_ip, "region": region, "version": "2017-09-30",
            "billingProducts": None, "devpayProductCodes": None, "marketplaceProductCodes": None,
            "kernelId": None, "ramdiskId": None,
        }
        return plain(200, json.dumps(doc, indent=2), "application/json")
    if not rest.startswith("latest/meta-data"):
        return plain(404, "Not Found")
    key = rest[len("latest/meta-data"):].lstrip("/")
    with _lock:
        notice = _spot_notices.get(instance_id)
        rebalance = _rebalance.get(instance_id)
    data = _metadata(instance, account_id, region)
    if notice:
        data["spot/instance-action"] = json.dumps(notice)
        data["spot/termination-time"] = notice["time"]
    if rebalance:
        data["events/recommendations/rebalance"] = json.dumps(rebalance)
    # The role of the instance's profile hands out the same node
    # credentials as Run Command's environment (see node_auth); an instance
    # without a profile has no iam/ entries (404, as on EC2).
    from . import node_auth

    profile = node_auth.instance_profile(account_id, instance.id)
    role = profile.roles[0].name if profile is not None and profile.roles else None
    if role:
        data[f"iam/security-credentials/{role}"] = json.dumps({
            "Code": "Success", "LastUpdated": iso_z(instance.launch_time, millis=False)
            if hasattr(instance.launch_time, "year") else "", "Type": "AWS-HMAC",
            "AccessKeyId": node_auth.node_access_key(account_id, instance.id),
            "SecretAccessKey": node_auth.SECRET, "Token": node_auth.session_token(instance.id),
            "Expiration": "2099-01-01T00:00:00Z",
        })
        data["iam/info"] = json.dumps({"Code": "Success", "InstanceProfileArn": profile.arn,
                                       "InstanceProfileId": profile.id})
    if key in data and not key.endswith("/"):
        return plain(200, data[key])
    listing = _listing(sorted(data), key.rstrip("/") + "/" if key else "")
    if listing:
        return plain(200, listing)
    return plain(404, "Not Found")


@on_reset
def _reset(account_id: str | None) -> None:
    with _lock:
        if account_id is None:
            _spot_notices.clear()
            _rebalance.clear()
