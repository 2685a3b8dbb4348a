"""Addition 8: two resource types that moto's CloudFormation skips.

What moto lacks: ``AWS::EC2::SecurityGroupEgress`` and
``AWS::EC2::PlacementGroup`` are skipped silently (and ListStackResources
shows them as rows with an empty logical and physical id), so a template's
self-referencing egress rule (needed by EFA) cannot be checked.

What the emulator does:

- SecurityGroupEgress: authorizes the egress rule on the group (CidrIp,
  CidrIpv6, DestinationSecurityGroupId, IpProtocol, FromPort, ToPort), so
  DescribeSecurityGroups shows it; deleting the stack revokes it.
- PlacementGroup: recorded by name (``GroupName`` or a generated one) as a
  stack resource; moto has no placement group API, so nothing else sees it.
"""

from __future__ import annotations

from typing import Any

from moto.core.common_models import CloudFormationModel


class SecurityGroupEgressResource(CloudFormationModel):
    def __init__(self, group_id: str, rule: dict[str, Any], backend: Any):
        self.group_id = group_id
        self.rule = rule
        self.backend = backend

    @property
    def physical_resource_id(self) -> str:
        return f"{self.group_id}|egress|{self.rule['ip_protocol']}"

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::EC2::SecurityGroupEgress"

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "SecurityGroupEgressResource":
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[account_id][region_name]
        props = cloudformation_json["Properties"]
        ip_ranges = []
        if props.get("CidrIp"):
            ip_ranges.append({"CidrIp": props["CidrIp"], "Description": props.get("Description")})
        if props.get("CidrIpv6"):
            ip_ranges.append({"CidrIpv6": props["CidrIpv6"], "Description": props.get("Description")})
        groups = [{"GroupId": props["DestinationSecurityGroupId"]}] if props.get("DestinationSecurityGroupId") else []
        rule = {
            "group_name_or_id": props["GroupId"],
            "ip_protocol": str(props.get("IpProtocol", "-1")),
            "from_port": props.get("FromPort"),
            "to_port": props.get("ToPort"),
            "ip_ranges": ip_ranges,
            "source_groups": groups,
        }
        backend.authorize_security_group_egress(**rule)
        return cls(props["GroupId"], rule, backend)

    def delete(self, account_id: str, region_name: str) -> None:
        try:
            self.backend.revoke_security_group_egress(**self.rule)
        except Exception:
            pass  # the group may be gone already


class PlacementGroupResource(CloudFormationModel):
    def __init__(self, name: str, strategy: str):
        self.name = name
        self.strategy = strategy

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @staticmethod
    def cloudformation_name_type() -> str:
        return "GroupName"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::EC2::PlacementGroup"

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "PlacementGroupResource":
        props = cloudformation_json.get("Properties") or {}
        return cls(props.get("GroupName") or resource_name, props.get("Strategy", "cluster"))

    def delete(self, account_id: str, region_name: str) -> None:
        pass
