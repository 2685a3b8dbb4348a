"""Addition 13: ``AWS::EC2::Instance`` launched from a launch template in a
stack.

What moto lacks: moto's ``AWS::EC2::Instance`` reads only its own
properties (``ImageId`` is required, ``LaunchTemplate`` is ignored), so an
instance whose image, type, user data, tags and instance profile come from
a launch template fails to create or comes up without them; its
``IamInstanceProfile`` is taken by name only.

What the emulator does: when the properties carry ``LaunchTemplate``
(``LaunchTemplateId`` or ``LaunchTemplateName``, ``Version`` a number,
``$Latest`` or ``$Default``), the template's ``ImageId``, ``InstanceType``,
``UserData``, ``SubnetId`` (or the primary network interface's), its
instance ``TagSpecifications`` and ``IamInstanceProfile`` (``Arn`` or
``Name``) fill what the properties do not say; the instance profile is
associated with the instance (so addition 10 evaluates its role). Then
addition 14 (``user_data``) boots the instance if it is an infra
controller. Security groups, metadata options and block devices of the
template are not applied (moto's instance keeps its defaults).
"""

from __future__ import annotations

from typing import Any

from . import cfn_fleets, fabric

_installed = False


def _merge(ec2: Any, props: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Properties + their launch template -> (properties for moto, profile)."""
    lt = props.get("LaunchTemplate") or {}
    data = cfn_fleets._template_data(ec2, {
        "LaunchTemplateId": lt.get("LaunchTemplateId"),
        "LaunchTemplateName": lt.get("LaunchTemplateName"),
        "Version": lt.get("Version"),
    })
    merged = {k: v for k, v in props.items() if k != "LaunchTemplate"}
    for key in ("ImageId", "InstanceType", "UserData", "KeyName"):
        if key not in merged and data.get(key) not in (None, ""):
            merged[key] = data[key]
    nics = data.get("NetworkInterfaces") or []
    if "SubnetId" not in merged:
        if data.get("SubnetId"):
            merged["SubnetId"] = data["SubnetId"]
        elif nics:
            primary = sorted(nics, key=lambda n: int(n.get("DeviceIndex", 0) or 0))[0]
            if primary.get("SubnetId"):
                merged["SubnetId"] = primary["SubnetId"]
    tags = {t["Key"]: t["Value"] for spec in data.get("TagSpecifications") or []
            if spec.get("ResourceType") == "instance" for t in spec.get("Tags") or []}
    tags.update({t["Key"]: t["Value"] for t in props.get("Tags") or []})
    merged["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    merged.setdefault("ImageId", "ami-emulator")
    profile = merged.pop("IamInstanceProfile", None)
    if profile is None:
        profile = data.get("IamInstanceProfile") or {}
    elif isinstance(profile, str):
        profile = {"Name": profile}
    return merged, profile


def _efa_nics(ec2: Any, props: dict[str, Any]) -> list[dict[str, Any]]:
    """The launch template's network interfaces (addition 17 counts EFA)."""
    try:
        spec = props.get("LaunchTemplate") or {}
        return list(cfn_fleets._template_data(ec2, spec).get("NetworkInterfaces") or [])
    except Exception:
        return []


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import Instance

    original = Instance.create_from_cloudformation_json.__func__

    def create(cls: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
               **kwargs: Any) -> Any:
        from . import user_data

        props = cloudformation_json.get("Properties") or {}
        if not props.get("LaunchTemplate"):
            instance = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        else:
            ec2 = ec2_backends[account_id][region_name]
            merged, profile = _merge(ec2, props)
            instance = original(cls, resource_name, {**cloudformation_json, "Properties": merged}, account_id,
                                region_name, **kwargs)
            instance._emu_efa = fabric.efa_count(_efa_nics(ec2, props))
            if profile.get("Arn") or profile.get("Name"):
                ec2.associate_iam_instance_profile(instance_id=instance.id,
                                                   iam_instance_profile_name=profile.get("Name"),
                                                   iam_instance_profile_arn=profile.get("Arn"))
        user_data.boot_if_controller(instance, account_id, region_name)
        return instance

    Instance.create_from_cloudformation_json = classmethod(create)
