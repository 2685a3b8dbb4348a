"""Addition 2: DescribeInstanceInformation.

What moto lacks: ``DescribeInstanceInformation`` answers HTTP 500, so no
instance is ever seen as an SSM managed node.

What the emulator does: every running EC2 instance of the account and
region is an Online managed node (as if its SSM agent had registered);
stopped ones are listed as ConnectionLost; terminated ones are not listed.
Filters: ``InstanceInformationFilterList`` (InstanceIds, PingStatus,
PlatformTypes, ResourceType, AgentVersion) and ``Filters`` (the same keys
plus ``tag:<key>`` and ``tag-key``); MaxResults/NextToken paginate.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from .protocol import AwsRequest, Response, json_error, json_response
from .registry import intercept
from .state import MOTO_LOCK, ec2_backend, instance_tags

AGENT_VERSION = "3.3.1142.0"


def _info(instance: Any, now: float) -> dict[str, Any]:
    ip = instance.private_ip or ""
    launched = instance.launch_time
    registered = launched.timestamp() if hasattr(launched, "timestamp") else now
    return {
        "InstanceId": instance.id,
        "PingStatus": "Online" if instance.state == "running" else "ConnectionLost",
        "LastPingDateTime": now if instance.state == "running" else registered,
        "AgentVersion": AGENT_VERSION,
        "IsLatestVersion": True,
        "PlatformType": "Linux",
        "PlatformName": "Amazon Linux",
        "PlatformVersion": "2023",
        "ResourceType": "EC2Instance",
        "IPAddress": ip,
        "ComputerName": f"ip-{ip.replace('.', '-')}.ec2.internal" if ip else instance.id,
        "RegistrationDate": registered,
        "SourceId": instance.id,
        "SourceType": "AWS::EC2::Instance",
    }


def _matches(info: dict[str, Any], tags: dict[str, str], key: str, values: list[str]) -> bool:
    if key.startswith("tag:"):
        return tags.get(key[4:]) in values
    if key == "tag-key":
        return bool(set(values) & set(tags))
    field = {"InstanceIds": "InstanceId", "PingStatus": "PingStatus", "PlatformTypes": "PlatformType",
             "ResourceType": "ResourceType", "AgentVersion": "AgentVersion"}.get(key)
    if field is None:
        raise KeyError(key)
    return info[field] in values


@intercept("ssm", "DescribeInstanceInformation")
def describe_instance_information(req: AwsRequest) -> Response:
    body = req.json
    now = time.time()
    with MOTO_LOCK:
        instances = [i for i in ec2_backend(req.account_id, req.region).all_instances()
                     if i.state in ("running", "stopped", "stopping", "pending")]
        rows = [(_info(i, now), instance_tags(i)) for i in instances]
    filters = [(f.get("key", ""), f.get("valueSet") or []) for f in body.get("InstanceInformationFilterList") or []]
    filters += [(f.get("Key", ""), f.get("Values") or []) for f in body.get("Filters") or []]
    try:
        selected = [info for info, tags in rows if all(_matches(info, tags, k, v) for k, v in filters)]
    except KeyError as err:
        return json_error("InvalidFilterKey", f"The specified key {err.args[0]!r} isn't valid.")
    try:
        start = int(base64.b64decode(body["NextToken"]).decode()) if body.get("NextToken") else 0
    except (ValueError, KeyError):
        return json_error("InvalidNextToken", "The specified token isn't valid.")
    size = int(body.get("MaxResults") or 50)
    out: dict[str, Any] = {"InstanceInformationList": selected[start:start + size]}
    if start + size < len(selected):
        out["NextToken"] = base64.b64encode(str(start + size).encode()).decode()
    return json_response(out)
