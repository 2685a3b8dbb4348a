"""Addition 13: instances that shut themselves down (shutdown/poweroff in
their commands), InstanceInitiatedShutdownBehavior, maintain fleets that
replace them unless deleted with no-terminate, processes that die with
their instance, and EC2 write actions of node credentials evaluated."""

from __future__ import annotations

import json
import os
import time

from botocore.exceptions import ClientError

from harness import wait_until
from test_cloudformation import live_instances, network_resources
from test_node_auth import node_client, run

FLEET_TAGS = [{"Key": "infra:project", "Value": "proj"}, {"Key": "infra:phase", "Value": "p1"}]


def fleet_stack(aws, capacity=2, name="idle", policy=None):
    """A stack like infra's compute stack: a role with ``policy``, a launch
    template that terminates on shutdown, a maintain EC2 fleet tagged with
    the phase. Returns (fleet id, instance ids)."""
    resources = network_resources()
    statements = policy or [{"Effect": "Allow", "Action": "ec2:DeleteFleets",
                             "Resource": "arn:aws:ec2:*:*:fleet/*",
                             "Condition": {"StringEquals": {"aws:ResourceTag/infra:phase": "p1"}}}]
    resources["Role"] = {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        "Policies": [{"PolicyName": "p", "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}}]}}
    resources["Profile"] = {"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "Role"}]}}
    data = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    data["InstanceInitiatedShutdownBehavior"] = "terminate"
    data["IamInstanceProfile"] = {"Arn": {"Fn::GetAtt": ["Profile", "Arn"]}}
    resources["Fleet"] = {"Type": "AWS::EC2::EC2Fleet", "Properties": {
        "Type": "maintain",
        "TargetCapacitySpecification": {"TotalTargetCapacity": capacity, "DefaultTargetCapacityType": "spot"},
        "SpotOptions": {"AllocationStrategy": "price-capacity-optimized"},
        "LaunchTemplateConfigs": [{
            "LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "LaunchTemplate"}, "Version": "$Latest"},
            "Overrides": [{"InstanceType": "c6i.xlarge", "SubnetId": {"Ref": "Subnet"}}]}],
        "TagSpecifications": [{"ResourceType": "fleet", "Tags": FLEET_TAGS}],
    }}
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    cfn.create_stack(StackName=name, TemplateBody=json.dumps({"Resources": resources}),
                     Capabilities=["CAPABILITY_IAM"])
    fleet_id = [r["PhysicalResourceId"] for r in cfn.list_stack_resources(StackName=name)[
        "StackResourceSummaries"] if r["LogicalResourceId"] == "Fleet"][0]
    return fleet_id, sorted(i["InstanceId"] for i in live_instances(ec2))


def state(ec2, iid):
    i = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return i["State"]["Name"], i.get("StateReason", {}).get("Code")


def test_shutdown_in_a_command_terminates_the_instance_and_a_maintain_fleet_replaces_it(aws):
    ec2 = aws.client("ec2")
    _, ids = fleet_stack(aws)
    inv = run(aws, ids[0], ["command -v shutdown", "shutdown -h now", "sleep 30", "echo survived"])
    assert inv["Status"] == "Failed" and "survived" not in inv["StandardOutputContent"], inv
    assert "node-sbin/shutdown" in inv["StandardOutputContent"], inv
    assert wait_until(lambda: state(ec2, ids[0])[0] == "terminated")
    assert state(ec2, ids[0])[1] == "Client.InstanceInitiatedShutdown"
    # the other node runs on; the fleet brings the capacity back
    assert state(ec2, ids[1])[0] == "running"
    assert wait_until(lambda: len(live_instances(ec2)) == 2)
    assert ids[0] not in {i["InstanceId"] for i in live_instances(ec2)}


def test_a_fleet_deleted_without_terminating_stops_replacing(aws):
    ec2 = aws.client("ec2")
    fleet_id, ids = fleet_stack(aws)
    # the node itself deletes its fleet (its role allows that on fleets of its phase)
    out = node_client(aws, ids[0], "ec2").delete_fleets(FleetIds=[fleet_id], TerminateInstances=False)
    assert [f["FleetId"] for f in out["SuccessfulFleetDeletions"]] == [fleet_id]
    assert ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"][0]["FleetState"] == "deleted_running"
    assert {i["InstanceId"] for i in live_instances(ec2)} == set(ids)
    run(aws, ids[0], ["poweroff"])
    assert wait_until(lambda: state(ec2, ids[0])[0] == "terminated")
    time.sleep(1)
    assert [i["InstanceId"] for i in live_instances(ec2)] == [ids[1]]


def test_node_credentials_may_delete_only_fleets_their_role_allows(aws):
    fleet_id, ids = fleet_stack(aws, capacity=1, name="other", policy=[
        {"Effect": "Allow", "Action": "ec2:DeleteFleets", "Resource": "arn:aws:ec2:*:*:fleet/*",
         "Condition": {"StringEquals": {"aws:ResourceTag/infra:phase": "p2"}}}])
    ec2 = node_client(aws, ids[0], "ec2")
    for call in (lambda: ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=False),
                 lambda: ec2.terminate_instances(InstanceIds=ids),
                 lambda: ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)):
        try:
            call()
            raise AssertionError("allowed")
        except ClientError as err:
            assert err.response["Error"]["Code"] == "UnauthorizedOperation", err.response
            assert "is not authorized to perform: ec2:" in err.response["Error"]["Message"]
    # describing stays unchecked
    assert ec2.describe_instances(InstanceIds=ids)["Reservations"]
    assert aws.client("ec2").describe_fleets(FleetIds=[fleet_id])["Fleets"][0]["FleetState"] == "active"


def test_default_behaviour_is_stop_and_a_scheduled_shutdown_can_be_cancelled(aws):
    ec2 = aws.client("ec2")
    iid = aws.run_instances(1)[0]
    inv = run(aws, iid, ["shutdown -P +5", "shutdown -c", "echo still"])
    assert inv["Status"] == "Success" and "still" in inv["StandardOutputContent"], inv
    time.sleep(0.5)
    assert state(ec2, iid)[0] == "running"
    assert run(aws, iid, ["shutdown -r now"])["Status"] == "Failed"
    run(aws, iid, ["halt"])
    assert wait_until(lambda: state(ec2, iid)[0] == "stopped")
    assert state(ec2, iid)[1] == "Client.InstanceInitiatedShutdown"


def test_an_instance_s_processes_die_with_it(aws):
    ec2 = aws.client("ec2")
    iid = aws.run_instances(1)[0]
    inv = run(aws, iid, ["setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"])
    pid = int(inv["StandardOutputContent"].split()[0])
    os.kill(pid, 0)  # a daemon outlives its command
    ec2.terminate_instances(InstanceIds=[iid])

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    assert wait_until(gone, timeout=5)
