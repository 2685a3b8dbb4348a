"""Addition 9: stack operations that take time (CREATE_IN_PROGRESS and
DELETE_IN_PROGRESS that a client can see, and be killed during)."""

from __future__ import annotations

import time

from harness import wait_until
from test_cloudformation import live_instances, spot_fleet_template


def stack_of(cfn, name):
    return cfn.describe_stacks(StackName=name)["Stacks"][0]


def stack_events(cfn, name):
    """(logical id, status) of the stack's own events, oldest first."""
    events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    return [(e["LogicalResourceId"], e["ResourceStatus"]) for e in reversed(events)
            if e["ResourceType"] == "AWS::CloudFormation::Stack"]


def test_the_delays_are_set_per_account_and_read_back(aws, emulator):
    assert aws.control("GET", "stack-delay") == {"account_id": aws.account_id, "create_seconds": 0.0,
                                                 "delete_seconds": 0.0}
    got = aws.control("POST", "stack-delay", {"create_seconds": 1.5})
    assert (got["create_seconds"], got["delete_seconds"]) == (1.5, 0.0)
    got = aws.control("POST", "stack-delay", {"delete_seconds": 2})
    assert (got["create_seconds"], got["delete_seconds"]) == (1.5, 2.0)
    other = emulator.control("GET", "stack-delay", account_id="210987654321")
    assert other["create_seconds"] == 0.0, "other accounts are not slowed down"
    got = aws.control("POST", "stack-delay", {"create_seconds": 0, "delete_seconds": 0})
    assert (got["create_seconds"], got["delete_seconds"]) == (0.0, 0.0)


def test_a_slow_creation_is_in_progress_without_outputs_then_complete(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    aws.control("POST", "stack-delay", {"create_seconds": 1.5})
    started = time.time()
    stack_id = cfn.create_stack(StackName="slow", TemplateBody=spot_fleet_template(2))["StackId"]
    stack = stack_of(cfn, "slow")
    assert stack["StackStatus"] == "CREATE_IN_PROGRESS"
    assert "Outputs" not in stack
    assert stack_events(cfn, "slow") == [("slow", "CREATE_IN_PROGRESS")]
    assert [s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]] == ["CREATE_IN_PROGRESS"]
    # the fleet is already launching, as in AWS
    assert len(live_instances(ec2)) == 2
    cfn.get_waiter("stack_create_complete").wait(StackName=stack_id, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    assert time.time() - started >= 1.4
    stack = stack_of(cfn, "slow")
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert stack["Outputs"][0]["OutputValue"].startswith("sfr-")
    assert stack_events(cfn, "slow") == [("slow", "CREATE_IN_PROGRESS"), ("slow", "CREATE_COMPLETE")]


def test_a_slow_deletion_accepts_a_second_delete_and_then_deletes(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    cfn.create_stack(StackName="slowdel", TemplateBody=spot_fleet_template(2))
    aws.control("POST", "stack-delay", {"delete_seconds": 1.5})
    cfn.delete_stack(StackName="slowdel")
    stack = stack_of(cfn, "slowdel")
    assert stack["StackStatus"] == "DELETE_IN_PROGRESS"
    assert "Outputs" not in stack
    assert len(live_instances(ec2)) == 2, "nothing is deleted yet"
    cfn.delete_stack(StackName="slowdel")  # accepted, changes nothing
    cfn.delete_stack(StackName=stack["StackId"])
    assert stack_of(cfn, "slowdel")["StackStatus"] == "DELETE_IN_PROGRESS"
    assert wait_until(lambda: cfn.describe_stacks(StackName=stack["StackId"])["Stacks"][0]["StackStatus"]
                      == "DELETE_COMPLETE", timeout=10)
    assert live_instances(ec2) == []
    assert stack_events(cfn, stack["StackId"]) == [
        ("slowdel", "CREATE_IN_PROGRESS"), ("slowdel", "CREATE_COMPLETE"),
        ("slowdel", "DELETE_IN_PROGRESS"), ("slowdel", "DELETE_COMPLETE")]
    assert [s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]] == ["DELETE_COMPLETE"]


def test_deleting_a_stack_being_created_stops_the_creation(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    aws.control("POST", "stack-delay", {"create_seconds": 1.0, "delete_seconds": 0.5})
    stack_id = cfn.create_stack(StackName="halfway", TemplateBody=spot_fleet_template(2))["StackId"]
    cfn.delete_stack(StackName="halfway")
    assert stack_of(cfn, "halfway")["StackStatus"] == "DELETE_IN_PROGRESS"
    time.sleep(1.5)  # past the creation delay: the creation does not come back
    assert cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"] == "DELETE_COMPLETE"
    assert live_instances(ec2) == []
    assert ("halfway", "CREATE_COMPLETE") not in stack_events(cfn, stack_id)
    fleets = ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]
    assert all(f["SpotFleetRequestState"].startswith("cancelled") for f in fleets), fleets


def test_without_a_delay_stacks_are_done_within_the_call(aws):
    cfn = aws.client("cloudformation")
    aws.control("POST", "stack-delay", {"create_seconds": 5})
    aws.control("POST", "reset", {"account_id": aws.account_id})
    cfn.create_stack(StackName="quick", TemplateBody=spot_fleet_template(1))
    assert stack_of(cfn, "quick")["StackStatus"] == "CREATE_COMPLETE"
    cfn.delete_stack(StackName="quick")
    assert [s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]] == ["DELETE_COMPLETE"]
