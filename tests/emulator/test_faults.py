"""Addition 6: fault injection (interruption, throttling) and call counts.
(The injected CreateStack failure is in test_cloudformation.py.)"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from harness import wait_until
from test_cloudformation import ec2_fleet_template, live_instances, spot_fleet_template


def imds_get(emulator, instance_id, path, token=True):
    base = f"{emulator.url}/_imds/{instance_id}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {}
    if token:
        req = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        headers["X-aws-ec2-metadata-token"] = opener.open(req).read().decode()
    try:
        with opener.open(urllib.request.Request(f"{base}/latest/meta-data/{path}", headers=headers)) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def state_of(ec2, instance_id):
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def test_interruption_notice_visible_before_termination(aws, emulator):
    (iid,) = aws.run_instances(1, InstanceMarketOptions={"MarketType": "spot"})
    ec2 = aws.client("ec2")
    assert imds_get(emulator, iid, "spot/instance-action") == (404, "")
    assert imds_get(emulator, iid, "instance-id", token=False) == (200, iid)
    assert imds_get(emulator, iid, "instance-life-cycle") == (200, "spot")

    result = aws.control("POST", "interrupt", {"instance_id": iid, "delay_seconds": 1.0})
    assert result["notice"]["action"] == "terminate"
    status, body = imds_get(emulator, iid, "spot/instance-action")
    assert status == 200
    notice = json.loads(body)
    assert notice["action"] == "terminate" and notice["time"].endswith("Z")
    assert state_of(ec2, iid)["State"]["Name"] == "running"

    assert wait_until(lambda: state_of(ec2, iid)["State"]["Name"] == "terminated", timeout=5)
    inst = state_of(ec2, iid)
    assert inst["StateReason"]["Code"] == "Server.SpotInstanceTermination"


def test_interrupted_instance_seen_by_a_running_command(aws):
    """A command polling the metadata endpoint sees the notice; the command
    is then cut short by the termination and does not report Success."""
    (iid,) = aws.run_instances(1)
    ssm = aws.client("ssm")
    script = [
        "python3 - <<'EOF'",
        "import os, time, urllib.request, urllib.error",
        "url = os.environ['INFRA_IMDS_URL'] + '/latest/meta-data/spot/instance-action'",
        "for _ in range(100):",
        "    try:",
        "        print(urllib.request.urlopen(url).read().decode()); print('NOTICE', flush=True)",
        "    except urllib.error.HTTPError:",
        "        pass",
        "    time.sleep(0.1)",
        "EOF",
    ]
    cmd = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                           Parameters={"commands": script, "executionTimeout": ["30"]})["Command"]
    assert wait_until(lambda: ssm.get_command_invocation(
        CommandId=cmd["CommandId"], InstanceId=iid)["Status"] == "InProgress")
    aws.control("POST", "interrupt", {"instance_id": iid, "delay_seconds": 1.0})
    inv = aws.wait_invocation(cmd["CommandId"], iid)
    assert inv["Status"] == "Failed"
    assert "NOTICE" in inv["StandardOutputContent"]
    assert '"action": "terminate"' in inv["StandardOutputContent"]


def test_maintain_spot_fleet_replaces_interrupted_instance(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    cfn.create_stack(StackName="fleet", TemplateBody=spot_fleet_template(2))
    before = {i["InstanceId"] for i in live_instances(ec2)}
    victim = sorted(before)[0]
    aws.control("POST", "interrupt", {"instance_id": victim, "delay_seconds": 0.2})
    assert wait_until(lambda: state_of(ec2, victim)["State"]["Name"] == "terminated", timeout=5)
    after = {i["InstanceId"] for i in live_instances(ec2)}
    assert len(after) == 2 and victim not in after
    (new,) = after - before
    tags = {t["Key"]: t["Value"] for t in state_of(ec2, new)["Tags"]}
    assert tags["infra:campaign"] == "camp-1"
    cfn.delete_stack(StackName="fleet")
    assert live_instances(ec2) == []


def test_maintain_ec2_fleet_replaces_interrupted_instance(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    cfn.create_stack(StackName="ec2fleet", TemplateBody=ec2_fleet_template(2))
    before = {i["InstanceId"] for i in live_instances(ec2)}
    victim = sorted(before)[0]
    aws.control("POST", "interrupt", {"instance_id": victim, "delay_seconds": 0.2})
    assert wait_until(lambda: state_of(ec2, victim)["State"]["Name"] == "terminated", timeout=5)
    after = {i["InstanceId"] for i in live_instances(ec2)}
    assert len(after) == 2 and victim not in after
    fleet_id = ec2.describe_fleets()["Fleets"][0]["FleetId"]
    (new,) = after - before
    assert {"Key": "aws:ec2:fleet-id", "Value": fleet_id} in state_of(ec2, new)["Tags"]


def test_an_interruption_without_capacity_left_is_not_replaced(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    cfn.create_stack(StackName="nocap", TemplateBody=ec2_fleet_template(2))
    before = {i["InstanceId"] for i in live_instances(ec2)}
    victim = sorted(before)[0]
    result = aws.control("POST", "interrupt", {"instance_id": victim, "delay_seconds": 0.2, "replace": False})
    assert result["replace"] is False
    assert wait_until(lambda: state_of(ec2, victim)["State"]["Name"] == "terminated", timeout=5)
    time.sleep(0.3)
    assert {i["InstanceId"] for i in live_instances(ec2)} == before - {victim}
    assert state_of(ec2, victim)["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    cfn.delete_stack(StackName="nocap")
    assert live_instances(ec2) == []


def test_interrupt_unknown_instance_is_404(aws):
    with pytest.raises(urllib.error.HTTPError) as err:
        aws.control("POST", "interrupt", {"instance_id": "i-0000000000000000f"})
    assert err.value.code == 404


def test_throttle_ec2_with_sdk_retries(aws):
    aws.run_instances(1)
    aws.control("POST", "throttle", {"action": "DescribeInstances", "count": 2})
    no_retry = aws.client("ec2", config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    with pytest.raises(ClientError) as err:
        no_retry.describe_instances()
    assert err.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    # one throttled call left: an SDK with retries gets through
    retrying = aws.client("ec2", config=Config(retries={"total_max_attempts": 3, "mode": "standard"}))
    assert len(retrying.describe_instances()["Reservations"]) == 1
    assert no_retry.describe_instances()  # no throttle left


def test_throttle_json_and_query_protocols(aws):
    aws.control("POST", "throttle", {"action": "ssm:DescribeInstanceInformation", "count": 1})
    aws.control("POST", "throttle", {"action": "DescribeStacks", "count": 1})
    with pytest.raises(ClientError) as err:
        aws.client("ssm").describe_instance_information()
    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    with pytest.raises(ClientError) as err:
        aws.client("cloudformation").describe_stacks()
    assert err.value.response["Error"]["Code"] == "Throttling"
    aws.client("ssm").describe_instance_information()
    aws.client("cloudformation").describe_stacks()


def test_call_counts(aws):
    ec2 = aws.client("ec2")
    aws.control("DELETE", "calls")
    ec2.describe_instances()
    ec2.describe_instances()
    aws.client("ssm").describe_instance_information()
    counts = aws.control("GET", "calls")
    assert counts["account_id"] == aws.account_id
    assert counts["calls"] == {"ec2:DescribeInstances": 2, "ssm:DescribeInstanceInformation": 1}
    assert counts["total"] == 3


def test_default_interruption_delay_is_configurable(aws, emulator):
    (iid,) = aws.run_instances(1)
    old = emulator.control("GET", "config")["interruption_delay"]
    try:
        assert emulator.control("POST", "config", {"interruption_delay": 0.3})["interruption_delay"] == 0.3
        start = time.time()
        aws.control("POST", "interrupt", {"instance_id": iid})
        ec2 = aws.client("ec2")
        assert wait_until(lambda: state_of(ec2, iid)["State"]["Name"] == "terminated", timeout=5)
        assert time.time() - start < 2
    finally:
        emulator.control("POST", "config", {"interruption_delay": old})
