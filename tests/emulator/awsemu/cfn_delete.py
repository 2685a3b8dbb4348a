"""Addition 4: stack deletion that deletes.

What moto lacks: deleting a stack that holds a RouteTable fails with
DependencyViolation (moto cannot delete route tables, routes, subnet
associations nor gateway attachments of a stack), the VPC, its route
tables, internet gateway, NAT gateway, Elastic IP, VPC endpoint and
security groups are leaked, and the stack
disappears from DescribeStacks/ListStacks -- so the delete waiter reports
success while everything stays behind.

What the emulator does: before moto deletes a stack's resources, it removes
the stack's VPC endpoints, routes, subnet route table associations, route
tables, NAT gateways, Elastic IPs, internet gateway attachments and internet
gateways (moto has no working delete for them); then moto deletes the rest
(instances, fleets, subnets, security groups, the VPC). If something is still
left, a second pass retries it. A deleted stack no longer re-creates its
resources when its Outputs are read (moto's lazy resource map did) and has
no Outputs, like in AWS. The stack ends DELETE_COMPLETE (listed by
ListStacks, found by its stack id); if a resource really cannot be deleted
the stack stays, in DELETE_FAILED, with the reason in its events.

Likewise, a resource that moto fails to create no longer answers HTTP 500
(leaving a stack that breaks DescribeStacks): the stack rolls back to
ROLLBACK_COMPLETE with the error as the resource's CREATE_FAILED reason
(``roll_back_stack``, also used by the injected CreateStack failure).
"""

from __future__ import annotations

from typing import Any

_installed = False


def _ec2(resource_map: Any) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[resource_map._account_id][resource_map._region_name]


def _retained(resource_map: Any, logical_id: str) -> bool:
    return resource_map._resource_json_map.get(logical_id, {}).get("DeletionPolicy") == "Retain"


def _quietly(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except Exception:
        return False


def remove_network_links(resource_map: Any) -> None:
    """Delete the routes, subnet associations, route tables, VPC endpoints,
    NAT gateways, Elastic IPs, IGW attachments and IGWs of a stack, which
    moto cannot delete itself."""
    ec2 = _ec2(resource_map)
    parsed = resource_map._parsed_resources
    by_type: dict[str, list[tuple[str, Any]]] = {}
    for logical_id, res in list(parsed.items()):
        rtype = getattr(res, "cf_resource_type", None)
        if rtype and not _retained(resource_map, logical_id):
            by_type.setdefault(rtype, []).append((logical_id, res))

    for logical_id, endpoint in by_type.get("AWS::EC2::VPCEndpoint", []):
        _quietly(ec2.delete_vpc_endpoints, [endpoint.id])
        parsed.pop(logical_id, None)

    for logical_id, route in by_type.get("AWS::EC2::Route", []):
        table = getattr(route, "route_table", None)
        if table is not None:
            table._routes.pop(route.id, None)
        parsed.pop(logical_id, None)

    for logical_id, assoc in by_type.get("AWS::EC2::SubnetRouteTableAssociation", []):
        table = ec2.route_tables.get(assoc.route_table_id)
        if table is not None:
            for assoc_id, subnet_id in list(table._associations.items()):
                if subnet_id == assoc.subnet_id:
                    table._associations.pop(assoc_id, None)
        parsed.pop(logical_id, None)

    for logical_id, table in by_type.get("AWS::EC2::RouteTable", []):
        live = ec2.route_tables.get(table.id)
        if live is not None:
            live._associations.clear()
            ec2.route_tables.pop(table.id, None)
        parsed.pop(logical_id, None)

    for logical_id, attachment in by_type.get("AWS::EC2::VPCGatewayAttachment", []):
        igw_id = getattr(attachment, "gateway_id", None)
        igw = ec2.internet_gateways.get(igw_id) if igw_id else None
        if igw is not None:
            igw.vpc = None
        parsed.pop(logical_id, None)

    for logical_id, nat in by_type.get("AWS::EC2::NatGateway", []):
        _quietly(ec2.delete_nat_gateway, nat.id)
        parsed.pop(logical_id, None)

    for logical_id, eip in by_type.get("AWS::EC2::EIP", []):
        if eip in ec2.addresses:
            if not _quietly(ec2.release_address, None, eip.allocation_id or None) and eip in ec2.addresses:
                ec2.addresses.remove(eip)
        parsed.pop(logical_id, None)

    for logical_id, igw in by_type.get("AWS::EC2::InternetGateway", []):
        live = ec2.internet_gateways.get(igw.id)
        if live is not None:
            live.vpc = None
            ec2.internet_gateways.pop(igw.id, None)
        parsed.pop(logical_id, None)


def _leftover_sweep(resource_map: Any) -> None:
    """Second pass: detach and delete what still blocks the stack's VPCs."""
    ec2 = _ec2(resource_map)
    parsed = resource_map._parsed_resources
    vpc_ids = {res.id for lid, res in parsed.items()
               if getattr(res, "cf_resource_type", None) == "AWS::EC2::VPC" and not _retained(resource_map, lid)}
    for vpc_id in vpc_ids:
        for inst in ec2.all_instances():
            if inst.state != "terminated" and getattr(inst, "vpc_id", None) == vpc_id:
                ec2.terminate_instances([inst.id])
        for igw in list(ec2.internet_gateways.values()):
            if igw.vpc is not None and igw.vpc.id == vpc_id:
                igw.vpc = None
        for table in list(ec2.route_tables.values()):
            if table.vpc_id == vpc_id and not table.main_association_id:
                table._associations.clear()
                ec2.route_tables.pop(table.id, None)


def install() -> None:
    """Patch moto's ResourceMap.delete, Stack.delete and
    CloudFormationBackend.delete_stack (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    from moto.cloudformation.models import CloudFormationBackend, Stack
    from moto.cloudformation.parsing import ResourceMap

    original_delete = ResourceMap.delete
    original_getitem = ResourceMap.__getitem__

    def delete(self: Any) -> None:
        remove_network_links(self)
        try:
            original_delete(self)
        except Exception:
            _leftover_sweep(self)
            original_delete(self)
        self._emu_deleted = True

    def getitem(self: Any, key: str) -> Any:
        # moto's resource map creates resources lazily on lookup: after a
        # delete, evaluating the Outputs (DescribeStacks) would re-create the
        # deleted resources (a whole spot fleet). A deleted map creates nothing.
        if getattr(self, "_emu_deleted", False) and key not in self._parsed_resources:
            return None
        return original_getitem(self, key)

    ResourceMap.delete = delete
    ResourceMap.__getitem__ = getitem

    original_outputs = Stack.outputs.fget

    def outputs(self: Any) -> Any:
        if self.status in ("DELETE_COMPLETE", "ROLLBACK_COMPLETE", "DELETE_IN_PROGRESS",
                           "ROLLBACK_IN_PROGRESS"):
            return None
        return original_outputs(self)

    Stack.outputs = property(outputs)

    def stack_delete(self: Any) -> None:
        self._add_stack_event("DELETE_IN_PROGRESS", resource_status_reason="User Initiated")
        try:
            self.resource_map.delete()
        except Exception as exc:
            reason = f"The following resource(s) failed to delete: {exc}"
            self._add_stack_event("DELETE_FAILED", resource_status_reason=reason)
            self.status = "DELETE_FAILED"
            self.status_reason = reason
            return
        self._add_stack_event("DELETE_COMPLETE")
        self.status = "DELETE_COMPLETE"

    Stack.delete = stack_delete

    original_create_resources = Stack.create_resources

    def create_resources(self: Any) -> None:
        # A resource that moto fails to create used to answer HTTP 500 and
        # leave a CREATE_IN_PROGRESS stack that broke DescribeStacks; roll
        # the stack back instead, as CloudFormation does.
        try:
            original_create_resources(self)
        except Exception as exc:
            roll_back_stack(self, f"Resource creation failed: {exc}")

    Stack.create_resources = create_resources

    original_delete_stack = CloudFormationBackend.delete_stack

    def delete_stack(self: Any, name_or_stack_id: str) -> None:
        original_delete_stack(self, name_or_stack_id)
        for stack_id, stack in list(self.deleted_stacks.items()):
            if stack.status == "DELETE_FAILED":
                self.deleted_stacks.pop(stack_id)
                self.stacks[stack_id] = stack

    CloudFormationBackend.delete_stack = delete_stack


def roll_back_stack(stack: Any, reason: str, failed_logical_id: str | None = None) -> None:
    """Fail a stack being created the way CloudFormation does: a
    CREATE_FAILED event for the resource with ``reason``, ROLLBACK_IN_PROGRESS,
    its resources deleted, ROLLBACK_COMPLETE with StackStatusReason."""
    from moto.cloudformation.models import Event

    resources = (stack.template_dict or {}).get("Resources", {}) or {}
    if failed_logical_id is None:
        parsed = stack.resource_map._parsed_resources
        failed_logical_id = next((lid for lid in resources if lid not in parsed), None)
        failed_logical_id = failed_logical_id or next(iter(resources), stack.name)
    rtype = resources.get(failed_logical_id, {}).get("Type", "AWS::CloudFormation::Stack")
    stack.events.append(Event(
        stack_id=stack.stack_id, stack_name=stack.name, logical_resource_id=failed_logical_id,
        physical_resource_id="", resource_type=rtype, resource_status="CREATE_FAILED",
        resource_status_reason=reason, resource_properties=None,
    ))
    rollback_reason = (f"The following resource(s) failed to create: [{failed_logical_id}]. "
                       "Rollback requested by user.")
    stack.status = "ROLLBACK_IN_PROGRESS"
    stack._add_stack_event("ROLLBACK_IN_PROGRESS", resource_status_reason=rollback_reason)
    try:
        stack.resource_map.delete()
    except Exception:
        stack.resource_map._emu_deleted = True
    stack.status = "ROLLBACK_COMPLETE"
    stack.status_reason = rollback_reason
    stack._add_stack_event("ROLLBACK_COMPLETE")
