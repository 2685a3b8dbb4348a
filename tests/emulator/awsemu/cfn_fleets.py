"""Addition 3: spot fleets and EC2 fleets in CloudFormation with launch
templates, and fleet replacement after an interruption.

What moto lacks: an ``AWS::EC2::SpotFleet`` whose
``SpotFleetRequestConfigData`` has ``LaunchTemplateConfigs`` fails with
HTTP 500 (moto reads only ``LaunchSpecifications``) and breaks
DescribeStacks of the whole account; deleting a stack does not cancel its
spot fleet; ``AWS::EC2::EC2Fleet`` is skipped silently; fleets ignore the
launch template's security groups and network interfaces, spot prices and
price caps; a fleet never replaces an interrupted instance.

What the emulator does:

- The launch template (by id or name; ``$Latest``, ``$Default`` or a
  number) is resolved; each of its ``Overrides`` becomes a launch
  specification (InstanceType, SubnetId, AvailabilityZone,
  WeightedCapacity, SpotPrice) over the template (ImageId, KeyName,
  SecurityGroupIds or the primary network interface's Groups and
  SubnetId, UserData, TagSpecifications).
- The fleet (moto's own spot fleet request / EC2 fleet object, so
  DescribeSpotFleetRequests, DescribeSpotFleetInstances, DescribeFleets
  and DescribeFleetInstances show it) launches its target capacity:
  cheapest first by the emulator's spot (or on-demand) prices per unit of
  weight, ``diversified`` round robin, and stops at the price cap
  (``SpotMaxTotalPrice``, ``SpotOptions.MaxTotalPrice``,
  ``OnDemandOptions.MaxTotalPrice``). EC2 fleets honour
  ``SpotTargetCapacity``/``OnDemandTargetCapacity``/
  ``DefaultTargetCapacityType``. Instances carry the template's tags and
  ``aws:ec2spot:fleet-request-id`` (spot fleet) or ``aws:ec2:fleet-id``
  (EC2 fleet); spot ones have lifecycle ``spot``.
- The fleet is a stack resource (ListStackResources); an update that only
  changes the target capacity resizes it, any other update replaces it;
  deleting the stack cancels / deletes it and terminates its instances.
- ``replace_interrupted``: after an injected interruption terminated a
  fleet instance, a ``maintain`` fleet (the default type) launches a
  replacement.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from moto.core.common_models import CloudFormationModel

from . import fabric
from .prices import on_demand_price, spot_price

SPOT_FLEET_TAG = "aws:ec2spot:fleet-request-id"
EC2_FLEET_TAG = "aws:ec2:fleet-id"
LIVE = ("pending", "running", "stopping", "stopped")


# ------------------------------------------------- launch template resolve


def _template_data(ec2: Any, spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("LaunchTemplateId"):
        template = ec2.get_launch_template(spec["LaunchTemplateId"])
    else:
        template = ec2.get_launch_template_by_name(spec["LaunchTemplateName"])
    version = str(spec.get("Version") or "$Default")
    return copy.deepcopy(template.get_version(version).data)


def _normalise(data: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Launch template data + one override -> a LaunchSpecifications entry."""
    out = dict(data)
    nics = data.get("NetworkInterfaces") or []
    groups = list(data.get("SecurityGroupIds") or data.get("SecurityGroups") or [])
    if nics:
        primary = sorted(nics, key=lambda n: int(n.get("DeviceIndex", 0) or 0))[0]
        if primary.get("SubnetId") and "SubnetId" not in out:
            out["SubnetId"] = primary["SubnetId"]
        groups = groups or list(primary.get("Groups") or [])
    out["SecurityGroups"] = groups
    placement = data.get("Placement") or {}
    if placement.get("AvailabilityZone"):
        out["AvailabilityZone"] = placement["AvailabilityZone"]
    for key in ("InstanceType", "SubnetId", "AvailabilityZone", "WeightedCapacity", "SpotPrice", "ImageId",
                "Priority"):
        if override.get(key) not in (None, ""):
            out[key] = override[key]
    profile = data.get("IamInstanceProfile") or {}
    out["IamInstanceProfile"] = {"Arn": profile.get("Arn") or profile.get("Name", "")} if profile else {}
    out.setdefault("ImageId", "ami-emulator")
    out.setdefault("InstanceType", "m5.large")
    return out


def launch_specs_from_config(ec2: Any, config: dict[str, Any]) -> list[dict[str, Any]]:
    """LaunchSpecifications + LaunchTemplateConfigs -> launch specs (dicts)."""
    specs = []
    for spec in config.get("LaunchSpecifications") or []:
        spec = dict(spec)
        if spec.get("SecurityGroups") and isinstance(spec["SecurityGroups"][0], dict):
            spec["SecurityGroups"] = [g.get("GroupId") for g in spec["SecurityGroups"]]
        if spec.get("Placement", {}).get("AvailabilityZone"):
            spec["AvailabilityZone"] = spec["Placement"]["AvailabilityZone"]
        specs.append(spec)
    for cfg in config.get("LaunchTemplateConfigs") or []:
        data = _template_data(ec2, cfg.get("LaunchTemplateSpecification") or {})
        for override in cfg.get("Overrides") or [{}]:
            specs.append(_normalise(data, override))
    return specs


def _spot_fleet_launch_specs(specs: list[dict[str, Any]]) -> list[Any]:
    """Dict specs -> moto SpotFleetLaunchSpec objects."""
    from moto.ec2.models.spot_requests import SpotFleetLaunchSpec
    from moto.ec2.utils import convert_tag_spec

    out = []
    for spec in specs:
        launch_spec = SpotFleetLaunchSpec(
            ebs_optimized=spec.get("EbsOptimized"), group_set=spec.get("SecurityGroups") or [],
            iam_instance_profile=(spec.get("IamInstanceProfile") or {}).get("Arn"),
            image_id=spec["ImageId"], instance_type=spec["InstanceType"], key_name=spec.get("KeyName"),
            monitoring=(spec.get("Monitoring") or {}).get("Enabled", False), spot_price=spec.get("SpotPrice"),
            subnet_id=spec.get("SubnetId"), tag_specifications=convert_tag_spec(spec.get("TagSpecifications") or []),
            user_data=spec.get("UserData"), weighted_capacity=spec.get("WeightedCapacity", 1),
        )
        launch_spec._emu_az = spec.get("AvailabilityZone")
        launch_spec._emu_priority = float(spec.get("Priority", 0) or 0)
        launch_spec._emu_shutdown = spec.get("InstanceInitiatedShutdownBehavior")
        launch_spec._emu_efa = fabric.efa_count(spec.get("NetworkInterfaces"))
        out.append(launch_spec)
    return out


# ------------------------------------------------------------ launching


def _az_of(ec2: Any, spec: Any) -> str | None:
    if getattr(spec, "subnet_id", None):
        try:
            return ec2.get_subnet(spec.subnet_id).availability_zone
        except Exception:
            return None
    return getattr(spec, "_emu_az", None)


def _weight(fleet: Any, instance: Any) -> float:
    for spec in fleet.launch_specs:
        if spec.instance_type == instance.instance_type and spec.subnet_id == instance.subnet_id:
            return spec.weighted_capacity
    return 1.0


def _unit_price(ec2: Any, spec: Any, spot: bool) -> float:
    region = ec2.region_name
    if spot:
        return spot_price(region, spec.instance_type, _az_of(ec2, spec))
    return on_demand_price(region, spec.instance_type) or 0.0


def _launch(fleet: Any, capacity: float, spot: bool, strategy: str, cap: float | None,
            cost_so_far: float, launch_one: Callable[[Any, float], Any]) -> float:
    """The common launch loop: pick specs (cheapest per unit of weight,
    ``diversified`` round robin, ``prioritized`` by Priority), stop at the
    capacity or at the price cap. Returns the capacity added."""
    ec2 = fleet.ec2_backend
    specs = list(fleet.launch_specs)
    if not specs or capacity <= 0:
        return 0.0
    strategy = (strategy or "").lower()
    diversified = strategy == "diversified"
    if strategy == "prioritized":
        specs.sort(key=lambda s: getattr(s, "_emu_priority", 0.0))
    elif not diversified:
        specs.sort(key=lambda s: _unit_price(ec2, s, spot) / max(s.weighted_capacity, 1e-9))
    added, index, cost = 0.0, 0, cost_so_far
    while added < capacity:
        spec = specs[index % len(specs)] if diversified else specs[0]
        price = _unit_price(ec2, spec, spot)
        if cap is not None and cost + price > cap + 1e-9:
            break
        instance = launch_one(spec, price)
        # moto drops the launch spec's instance profile; node_auth needs it.
        profile = getattr(spec, "iam_instance_profile", None)
        instance._emu_profile_arn = profile.get("Arn") if isinstance(profile, dict) else profile
        # the template's InstanceInitiatedShutdownBehavior (addition 15)
        instance._emu_shutdown_behavior = getattr(spec, "_emu_shutdown", None) or "stop"
        # the template's EFA interfaces (addition 17)
        instance._emu_efa = getattr(spec, "_emu_efa", 0)
        if not spec.subnet_id and getattr(spec, "_emu_az", None):
            instance._placement.zone = spec._emu_az
        added += spec.weighted_capacity
        cost += price
        index += 1
    return added


def _request_spot(ec2: Any, fleet_id: str, spec: Any, price: float) -> Any:
    return ec2.request_spot_instances(
        price=spec.spot_price or f"{price:.6f}", image_id=spec.image_id, count=1,
        spot_instance_type="persistent", valid_from=None, valid_until=None, launch_group=None,
        availability_zone_group=None, key_name=spec.key_name, security_groups=spec.group_set,
        user_data=spec.user_data, instance_type=spec.instance_type, placement=None, kernel_id=None,
        ramdisk_id=None, monitoring_enabled=spec.monitoring_enabled, subnet_id=spec.subnet_id,
        tags=copy.deepcopy(spec.tag_specifications), spot_fleet_id=fleet_id, launch_spec=spec,
    )[0]


def _live_cost(ec2: Any, instances: list[Any], spot: bool) -> float:
    region = ec2.region_name
    if spot:
        return sum(spot_price(region, i.instance_type, i.placement) for i in instances)
    return sum(on_demand_price(region, i.instance_type) or 0.0 for i in instances)


# ------------------------------------------------------------ spot fleets


def _spot_fleet_instances(fleet: Any) -> list[Any]:
    return [r.instance for r in fleet.spot_requests if r.instance.state in LIVE]


def launch_spot_capacity(fleet: Any, capacity: float) -> float:
    """Launch spot instances worth ``capacity`` into a moto spot fleet request."""
    ec2 = fleet.ec2_backend

    def launch_one(spec: Any, price: float) -> Any:
        request = _request_spot(ec2, fleet.id, spec, price)
        request.instance.add_tags({SPOT_FLEET_TAG: fleet.id})
        fleet.spot_requests.append(request)
        fleet.fulfilled_capacity += spec.weighted_capacity
        return request.instance

    cost = _live_cost(ec2, _spot_fleet_instances(fleet), True)
    return _launch(fleet, capacity, True, fleet.allocation_strategy, getattr(fleet, "_emu_max_total_price", None),
                   cost, launch_one)


def create_spot_fleet(ec2: Any, config: dict[str, Any]) -> Any:
    """Create a moto spot fleet request from a whole SpotFleetRequestConfigData
    (LaunchSpecifications and/or LaunchTemplateConfigs) and launch it."""
    specs = launch_specs_from_config(ec2, config)
    if not specs:
        raise ValueError("SpotFleetRequestConfigData needs LaunchSpecifications or LaunchTemplateConfigs")
    fleet = ec2.request_spot_fleet(
        spot_price=config.get("SpotPrice"), target_capacity=0, iam_fleet_role=config.get("IamFleetRole", ""),
        allocation_strategy="lowestPrice", launch_specs=specs,  # target 0: moto launches nothing
        instance_interruption_behaviour=config.get("InstanceInterruptionBehavior"),
        tag_specifications=config.get("TagSpecifications") or None,
    )
    fleet.launch_specs = _spot_fleet_launch_specs(specs)
    fleet.target_capacity = int(config.get("TargetCapacity") or 0)
    fleet.allocation_strategy = config.get("AllocationStrategy") or "lowestPrice"
    fleet._emu_type = config.get("Type") or "maintain"
    max_total = config.get("SpotMaxTotalPrice")
    fleet._emu_max_total_price = float(max_total) if max_total not in (None, "") else None
    extra: dict[str, Any] = {"Type": fleet._emu_type}
    for key in ("SpotMaxTotalPrice", "LaunchTemplateConfigs", "InstanceInterruptionBehavior", "ValidUntil"):
        if config.get(key) not in (None, ""):
            extra[key] = config[key]
    fleet._emu_config_extra = extra
    launch_spot_capacity(fleet, fleet.target_capacity)
    return fleet


def cancel_spot_fleet(fleet: Any) -> None:
    """Cancel a spot fleet and terminate all its instances."""
    fleet.state = "cancelled_terminating"
    fleet.target_capacity = 0
    ec2 = fleet.ec2_backend
    ids = [i.id for i in ec2.all_instances() if getattr(i, "_spot_fleet_id", None) == fleet.id and i.state in LIVE]
    if ids:
        ec2.terminate_instances(ids)
    fleet.state = "cancelled"


def _resize_spot_fleet(fleet: Any, target: int) -> None:
    fleet.target_capacity = target
    live = _spot_fleet_instances(fleet)
    have = sum(_weight(fleet, i) for i in live)
    fleet.fulfilled_capacity = have
    if have < target:
        launch_spot_capacity(fleet, target - have)
    extra = [i.id for i in reversed(live)]
    while have > target and extra:
        victim = extra.pop(0)
        have -= _weight(fleet, fleet.ec2_backend.get_instance(victim))
        fleet.ec2_backend.terminate_instances([victim])


# ------------------------------------------------------------- EC2 fleets


def _ec2_fleet_instances(fleet: Any, spot: bool) -> list[Any]:
    if spot:
        return [r.instance for r in fleet.spot_requests if r.instance.state in LIVE]
    return [d["instance"] for d in fleet.on_demand_instances if d["instance"].state in LIVE]


def _ec2_fleet_cap(fleet: Any, spot: bool) -> float | None:
    options = (fleet.spot_options if spot else fleet.on_demand_options) or {}
    value = options.get("MaxTotalPrice")
    return float(value) if value not in (None, "") else None


def launch_ec2_fleet_capacity(fleet: Any, capacity: float, spot: bool) -> float:
    ec2 = fleet.ec2_backend

    def launch_one(spec: Any, price: float) -> Any:
        if spot:
            request = _request_spot(ec2, fleet.id, spec, price)
            instance = request.instance
            fleet.spot_requests.append(request)
            fleet.fulfilled_spot_capacity += spec.weighted_capacity
        else:
            reservation = ec2.run_instances(
                image_id=spec.image_id, count=1, user_data=spec.user_data, security_group_names=[],
                security_group_ids=list(spec.group_set), instance_type=spec.instance_type,
                is_instance_type_default=False, key_name=spec.key_name, subnet_id=spec.subnet_id,
                fleet_id=fleet.id, tags=copy.deepcopy(spec.tag_specifications),
            )
            instance = reservation.instances[0]
            fleet.on_demand_instances.append({"id": reservation.id, "instance": instance, "launch_spec": spec})
            fleet.fulfilled_on_demand_capacity += spec.weighted_capacity
        instance.add_tags({EC2_FLEET_TAG: fleet.id})
        fleet.fulfilled_capacity += spec.weighted_capacity
        return instance

    options = (fleet.spot_options if spot else fleet.on_demand_options) or {}
    strategy = options.get("AllocationStrategy") or "lowest-price"
    cost = _live_cost(ec2, _ec2_fleet_instances(fleet, spot), spot)
    return _launch(fleet, capacity, spot, strategy, _ec2_fleet_cap(fleet, spot), cost, launch_one)


def _ec2_fleet_targets(spec: dict[str, Any]) -> tuple[float, float]:
    """TargetCapacitySpecification -> (spot capacity, on-demand capacity)."""
    total = float(spec.get("TotalTargetCapacity") or 0)
    spot = float(spec.get("SpotTargetCapacity") or 0)
    on_demand = float(spec.get("OnDemandTargetCapacity") or 0)
    rest = max(0.0, total - spot - on_demand)
    if (spec.get("DefaultTargetCapacityType") or "on-demand") == "spot":
        spot += rest
    else:
        on_demand += rest
    return spot, on_demand


def fill_ec2_fleet(fleet: Any) -> None:
    """Launch what a fleet lacks of its spot and on-demand targets."""
    spot_target, on_demand_target = _ec2_fleet_targets(fleet.target_capacity_specification)
    for spot, target in ((True, spot_target), (False, on_demand_target)):
        have = sum(_weight(fleet, i) for i in _ec2_fleet_instances(fleet, spot))
        if target > have:
            launch_ec2_fleet_capacity(fleet, target - have, spot)
    fleet.fulfilled_capacity = sum(_weight(fleet, i) for s in (True, False) for i in _ec2_fleet_instances(fleet, s))


def create_ec2_fleet(ec2: Any, props: dict[str, Any]) -> Any:
    configs = []
    shutdowns: list[str | None] = []
    efas: list[int] = []
    for cfg in props.get("LaunchTemplateConfigs") or []:
        spec = cfg.get("LaunchTemplateSpecification") or {}
        data = _template_data(ec2, spec)
        overrides = []
        for override in cfg.get("Overrides") or [{}]:
            merged = _normalise(data, override)
            overrides.append({**override, "SubnetId": merged.get("SubnetId"),
                              "GroupSet": merged.get("SecurityGroups") or [],
                              "InstanceType": merged["InstanceType"]})
            shutdowns.append(merged.get("InstanceInitiatedShutdownBehavior"))
            efas.append(fabric.efa_count(merged.get("NetworkInterfaces")))
        configs.append({"LaunchTemplateSpecification": spec, "Overrides": overrides})
    spot_options = dict(props.get("SpotOptions") or {})
    spot_options.setdefault("AllocationStrategy", "lowest-price")
    target = dict(props["TargetCapacitySpecification"])
    fleet = ec2.create_fleet(
        on_demand_options=props.get("OnDemandOptions") or {}, spot_options=spot_options,
        target_capacity_specification={"TotalTargetCapacity": 0, "DefaultTargetCapacityType":
                                       target.get("DefaultTargetCapacityType", "on-demand")},
        launch_template_configs=configs,
        excess_capacity_termination_policy=props.get("ExcessCapacityTerminationPolicy", "termination"),
        replace_unhealthy_instances=bool(props.get("ReplaceUnhealthyInstances", False)),
        terminate_instances_with_expiration=bool(props.get("TerminateInstancesWithExpiration", False)),
        fleet_type=props.get("Type") or "maintain", valid_from=None, valid_until=None,
        tag_specifications=props.get("TagSpecifications") or [],
    )
    for launch_spec, raw, how, efa in zip(fleet.launch_specs, [o for c in configs for o in c["Overrides"]],
                                          shutdowns, efas):
        launch_spec._emu_efa = efa
        launch_spec._emu_az = raw.get("AvailabilityZone")
        launch_spec._emu_priority = float(raw.get("Priority", 0) or 0)
        launch_spec._emu_shutdown = how
    fleet.target_capacity_specification = target
    fleet.target_capacity = int(float(target.get("TotalTargetCapacity") or 0))
    fleet.spot_target_capacity = int(float(target.get("SpotTargetCapacity") or 0))
    fleet.on_demand_target_capacity = int(float(target.get("OnDemandTargetCapacity") or 0))
    fill_ec2_fleet(fleet)
    return fleet


def delete_ec2_fleet(fleet: Any) -> None:
    ec2 = fleet.ec2_backend
    fleet.state = "deleted_terminating"
    fleet.target_capacity = 0
    ids = [i.id for i in ec2.all_instances()
           if fleet.id in (getattr(i, "_fleet_id", None), getattr(i, "_spot_fleet_id", None)) and i.state in LIVE]
    if ids:
        ec2.terminate_instances(ids)
    fleet.state = "deleted"


def _resize_ec2_fleet(fleet: Any, target: dict[str, Any]) -> None:
    fleet.target_capacity_specification = dict(target)
    fleet.target_capacity = int(float(target.get("TotalTargetCapacity") or 0))
    spot_target, on_demand_target = _ec2_fleet_targets(target)
    for spot, want in ((True, spot_target), (False, on_demand_target)):
        live = _ec2_fleet_instances(fleet, spot)
        have = sum(_weight(fleet, i) for i in live)
        for instance in reversed(live):
            if have <= want:
                break
            have -= _weight(fleet, instance)
            fleet.ec2_backend.terminate_instances([instance.id])
    fill_ec2_fleet(fleet)


# --------------------------------------------------- CloudFormation hooks


def _only_capacity_changed(old: dict[str, Any], new: dict[str, Any], key: str) -> bool:
    return {k: v for k, v in old.items() if k != key} == {k: v for k, v in new.items() if k != key}


def _spot_fleet_create(cls: Any, resource_name: str, cloudformation_json: Any, account_id: str,
                       region_name: str, **kwargs: Any) -> Any:
    from moto.ec2.models import ec2_backends

    config = cloudformation_json["Properties"]["SpotFleetRequestConfigData"]
    fleet = create_spot_fleet(ec2_backends[account_id][region_name], config)
    fleet._emu_cfn_config = copy.deepcopy(config)
    return fleet


def _spot_fleet_update(cls: Any, original_resource: Any, new_resource_name: str, cloudformation_json: Any,
                       account_id: str, region_name: str) -> Any:
    config = cloudformation_json["Properties"]["SpotFleetRequestConfigData"]
    old = getattr(original_resource, "_emu_cfn_config", {}) or {}
    if _only_capacity_changed(old, config, "TargetCapacity"):
        _resize_spot_fleet(original_resource, int(config.get("TargetCapacity") or 0))
        original_resource._emu_cfn_config = copy.deepcopy(config)
        return original_resource
    replacement = _spot_fleet_create(cls, new_resource_name, cloudformation_json, account_id, region_name)
    cancel_spot_fleet(original_resource)
    return replacement


def _spot_fleet_delete(self: Any, account_id: str, region_name: str) -> None:
    cancel_spot_fleet(self)


class EC2FleetResource(CloudFormationModel):
    """``AWS::EC2::EC2Fleet`` in a stack, backed by moto's EC2 fleet."""

    def __init__(self, fleet: Any, props: dict[str, Any]):
        self.fleet = fleet
        self.id = fleet.id
        self.props = copy.deepcopy(props)

    @property
    def physical_resource_id(self) -> str:
        return self.fleet.id

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::EC2::EC2Fleet"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "FleetId"

    def get_cfn_attribute(self, attribute_name: str) -> str:
        return self.fleet.id

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "EC2FleetResource":
        from moto.ec2.models import ec2_backends

        props = cloudformation_json["Properties"]
        return cls(create_ec2_fleet(ec2_backends[account_id][region_name], props), props)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str,
        region_name: str,
    ) -> "EC2FleetResource":
        props = cloudformation_json["Properties"]
        if _only_capacity_changed(original_resource.props, props, "TargetCapacitySpecification"):
            _resize_ec2_fleet(original_resource.fleet, props["TargetCapacitySpecification"])
            original_resource.props = copy.deepcopy(props)
            return original_resource
        replacement = cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id,
                                                          region_name)
        delete_ec2_fleet(original_resource.fleet)
        return replacement

    def is_created(self) -> bool:
        return True

    def delete(self, account_id: str, region_name: str) -> None:
        delete_ec2_fleet(self.fleet)


# ----------------------------------------------------- fleet replacement


def replace_interrupted(instance: Any) -> None:
    """After an interruption terminated ``instance``: a maintain-type fleet
    launches a replacement (called with MOTO_LOCK held)."""
    ec2 = instance.ec2_backend
    fleet_id = getattr(instance, "_spot_fleet_id", None) or getattr(instance, "_fleet_id", None)
    if not fleet_id:
        return
    spot_fleet = ec2.get_spot_fleet_request(fleet_id)
    if spot_fleet is not None:
        if spot_fleet.state == "active" and getattr(spot_fleet, "_emu_type", "maintain") == "maintain":
            _resize_spot_fleet(spot_fleet, spot_fleet.target_capacity)
        return
    fleet = ec2.get_fleet(fleet_id)
    if fleet is not None and fleet.state == "active" and fleet.fleet_type == "maintain":
        fill_ec2_fleet(fleet)


# -------------------------------------------------------------- install

_installed = False


def install() -> None:
    """Patch moto's SpotFleetRequest CloudFormation hooks and register the
    EC2Fleet resource type (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    from moto.cloudformation import parsing
    from moto.ec2.models.spot_requests import SpotFleetRequest

    SpotFleetRequest.create_from_cloudformation_json = classmethod(_spot_fleet_create)
    SpotFleetRequest.update_from_cloudformation_json = classmethod(_spot_fleet_update)
    SpotFleetRequest.delete = _spot_fleet_delete

    original_config = SpotFleetRequest.spot_fleet_request_config.fget

    def spot_fleet_request_config(self: Any) -> dict[str, Any]:
        config = original_config(self)
        config["TargetCapacity"] = self.target_capacity
        config.update(getattr(self, "_emu_config_extra", {}) or {})
        return config

    SpotFleetRequest.spot_fleet_request_config = property(spot_fleet_request_config)
    SpotFleetRequest.activity_status = property(
        lambda self: "fulfilled" if self.fulfilled_capacity >= self.target_capacity else "pending_fulfillment")
    # get_model_map() is cached; EC2FleetResource must be visible to it.
    parsing.get_model_list.cache_clear()
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
