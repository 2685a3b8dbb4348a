"""Addition 1: Run Command that runs (boto3 and the awscli)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from harness import awscli, wait_until


def send(aws, commands, **kwargs):
    ssm = aws.client("ssm")
    params = {"commands": commands}
    params.update(kwargs.pop("extra_params", {}))
    return ssm.send_command(DocumentName="AWS-RunShellScript", Parameters=params, **kwargs)["Command"]


def test_echo_on_two_instances_found_by_tag_returns_stdout_and_success(aws):
    ids = aws.run_instances(2, tags={"infra:campaign": "c1"})
    aws.run_instances(1, tags={"infra:campaign": "other"})
    cmd = send(aws, ["echo hello from $INFRA_INSTANCE_ID"],
               Targets=[{"Key": "tag:infra:campaign", "Values": ["c1"]}])
    assert cmd["Status"] == "Pending"
    assert cmd["TargetCount"] == 2
    ssm = aws.client("ssm")
    listed = ssm.list_command_invocations(CommandId=cmd["CommandId"])["CommandInvocations"]
    assert sorted(i["InstanceId"] for i in listed) == sorted(ids)
    for iid in ids:
        inv = aws.wait_invocation(cmd["CommandId"], iid)
        assert inv["Status"] == "Success"
        assert inv["StatusDetails"] == "Success"
        assert inv["ResponseCode"] == 0
        assert inv["StandardOutputContent"] == f"hello from {iid}\n"
        assert inv["PluginName"] == "aws:runShellScript"
        assert inv["ExecutionElapsedTime"].startswith("PT")
    summary = ssm.list_commands(CommandId=cmd["CommandId"])["Commands"][0]
    assert summary["Status"] == "Success"
    assert summary["CompletedCount"] == 2 and summary["ErrorCount"] == 0


def test_status_goes_pending_inprogress_success(aws):
    (iid,) = aws.run_instances(1)
    cmd = send(aws, ["sleep 0.6", "echo done"], InstanceIds=[iid])
    ssm = aws.client("ssm")
    seen = set()
    deadline = time.time() + 10
    while time.time() < deadline:
        status = ssm.get_command_invocation(CommandId=cmd["CommandId"], InstanceId=iid)["Status"]
        seen.add(status)
        if status == "Success":
            break
        time.sleep(0.05)
    assert "InProgress" in seen and "Success" in seen


def test_failing_command_returns_failed_with_exit_code(aws):
    (iid,) = aws.run_instances(1)
    cmd = send(aws, ["echo partial", "echo oops >&2", "exit 3"], InstanceIds=[iid])
    inv = aws.wait_invocation(cmd["CommandId"], iid)
    assert inv["Status"] == "Failed"
    assert inv["StatusDetails"] == "Failed"
    assert inv["ResponseCode"] == 3
    assert inv["StandardOutputContent"] == "partial\n"
    assert inv["StandardErrorContent"] == "oops\n"
    summary = aws.client("ssm").list_commands(CommandId=cmd["CommandId"])["Commands"][0]
    assert summary["Status"] == "Failed" and summary["ErrorCount"] == 1


def test_execution_timeout_returns_timed_out(aws):
    (iid,) = aws.run_instances(1)
    start = time.time()
    cmd = send(aws, ["echo started", "sleep 30"], InstanceIds=[iid],
               extra_params={"executionTimeout": ["1"]})
    inv = aws.wait_invocation(cmd["CommandId"], iid)
    assert inv["Status"] == "TimedOut"
    assert inv["StatusDetails"] == "ExecutionTimedOut"
    assert inv["StandardOutputContent"] == "started\n"
    assert time.time() - start < 5


def test_terminated_instance_running_command_does_not_report_success(aws):
    (iid,) = aws.run_instances(1)
    cmd = send(aws, ["sleep 20", "echo never"], InstanceIds=[iid])
    ssm = aws.client("ssm")
    assert wait_until(lambda: ssm.get_command_invocation(
        CommandId=cmd["CommandId"], InstanceId=iid)["Status"] == "InProgress")
    aws.client("ec2").terminate_instances(InstanceIds=[iid])
    inv = aws.wait_invocation(cmd["CommandId"], iid)
    assert inv["Status"] == "Failed"
    assert inv["Status"] != "Success"
    assert inv["ResponseCode"] == -1
    assert "never" not in inv["StandardOutputContent"]


def test_stopped_instance_running_command_fails(aws):
    (iid,) = aws.run_instances(1)
    cmd = send(aws, ["sleep 20"], InstanceIds=[iid])
    ssm = aws.client("ssm")
    assert wait_until(lambda: ssm.get_command_invocation(
        CommandId=cmd["CommandId"], InstanceId=iid)["Status"] == "InProgress")
    aws.client("ec2").stop_instances(InstanceIds=[iid])
    assert aws.wait_invocation(cmd["CommandId"], iid)["Status"] == "Failed"


def test_cancel_command(aws):
    (iid,) = aws.run_instances(1)
    cmd = send(aws, ["sleep 20"], InstanceIds=[iid])
    ssm = aws.client("ssm")
    assert wait_until(lambda: ssm.get_command_invocation(
        CommandId=cmd["CommandId"], InstanceId=iid)["Status"] == "InProgress")
    ssm.cancel_command(CommandId=cmd["CommandId"])
    inv = aws.wait_invocation(cmd["CommandId"], iid)
    assert inv["Status"] == "Cancelled"
    assert ssm.list_commands(CommandId=cmd["CommandId"])["Commands"][0]["Status"] == "Cancelled"
    with pytest.raises(ClientError) as err:
        ssm.cancel_command(CommandId="00000000-0000-0000-0000-000000000000")
    assert err.value.response["Error"]["Code"] == "InvalidCommandId"


def test_instance_ids_are_checked(aws):
    ids = aws.run_instances(2)
    ec2 = aws.client("ec2")
    ec2.terminate_instances(InstanceIds=[ids[1]])
    ssm = aws.client("ssm")
    for bad in (["i-0123456789abcdef0"], [ids[1]], [ids[0], ids[0]]):
        with pytest.raises(ClientError) as err:
            ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=bad,
                             Parameters={"commands": ["true"]})
        expected = "DuplicateInstanceId" if len(bad) == 2 else "InvalidInstanceId"
        assert err.value.response["Error"]["Code"] == expected
    with pytest.raises(ClientError) as err:
        ssm.send_command(DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]})
    assert err.value.response["Error"]["Code"] == "InvalidParameters"


def test_targets_resolve_to_running_instances_only(aws):
    ids = aws.run_instances(3, tags={"role": "worker"})
    ec2 = aws.client("ec2")
    ec2.stop_instances(InstanceIds=[ids[1]])
    ec2.terminate_instances(InstanceIds=[ids[2]])
    cmd = send(aws, ["true"], Targets=[{"Key": "tag:role", "Values": ["worker"]}])
    assert cmd["TargetCount"] == 1
    invs = aws.client("ssm").list_command_invocations(CommandId=cmd["CommandId"])["CommandInvocations"]
    assert [i["InstanceId"] for i in invs] == [ids[0]]


def test_unknown_invocation(aws):
    (iid,) = aws.run_instances(1)
    with pytest.raises(ClientError) as err:
        aws.client("ssm").get_command_invocation(CommandId="00000000-0000-0000-0000-000000000000",
                                                 InstanceId=iid)
    assert err.value.response["Error"]["Code"] == "InvocationDoesNotExist"


def test_list_command_invocations_details_and_pagination(aws):
    ids = aws.run_instances(3, tags={"g": "x"})
    cmd = send(aws, ["echo out", "echo err >&2", "exit 2"], Targets=[{"Key": "tag:g", "Values": ["x"]}])
    for iid in ids:
        aws.wait_invocation(cmd["CommandId"], iid)
    ssm = aws.client("ssm")
    page1 = ssm.list_command_invocations(CommandId=cmd["CommandId"], Details=True, MaxResults=2)
    assert len(page1["CommandInvocations"]) == 2 and page1["NextToken"]
    page2 = ssm.list_command_invocations(CommandId=cmd["CommandId"], Details=True, MaxResults=2,
                                         NextToken=page1["NextToken"])
    invs = page1["CommandInvocations"] + page2["CommandInvocations"]
    assert sorted(i["InstanceId"] for i in invs) == sorted(ids)
    plugin = invs[0]["CommandPlugins"][0]
    assert plugin["Name"] == "aws:runShellScript"
    assert plugin["Status"] == "Failed" and plugin["ResponseCode"] == 2
    assert plugin["Output"].startswith("out\n") and "err" in plugin["Output"]
    paginator = ssm.get_paginator("list_command_invocations")
    total = sum(len(p["CommandInvocations"]) for p in paginator.paginate(
        InstanceId=ids[0], PaginationConfig={"PageSize": 1}))
    assert total == 1
    failed = ssm.list_command_invocations(Filters=[{"key": "Status", "value": "Failed"}])
    assert len(failed["CommandInvocations"]) == 3
    no_details = ssm.list_command_invocations(CommandId=cmd["CommandId"])["CommandInvocations"][0]
    assert no_details["CommandPlugins"] == []


def test_output_truncated_and_whole_output_in_s3(aws):
    (iid,) = aws.run_instances(1)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="ssm-out")
    script = ("python3 -c \"import sys; sys.stdout.write('a'*30000); "
              "sys.stderr.write('b'*9000)\"")
    cmd = send(aws, [script], InstanceIds=[iid], OutputS3BucketName="ssm-out", OutputS3KeyPrefix="runs")
    inv = aws.wait_invocation(cmd["CommandId"], iid)
    assert inv["Status"] == "Success"
    assert inv["StandardOutputContent"] == "a" * 24000
    assert inv["StandardErrorContent"] == "b" * 8000
    base = f"runs/{cmd['CommandId']}/{iid}/awsrunShellScript/0.awsrunShellScript"
    assert s3.get_object(Bucket="ssm-out", Key=f"{base}/stdout")["Body"].read() == b"a" * 30000
    assert s3.get_object(Bucket="ssm-out", Key=f"{base}/stderr")["Body"].read() == b"b" * 9000
    assert inv["StandardOutputUrl"].endswith(f"/ssm-out/{base}/stdout")


def test_commands_reach_the_emulator_and_metadata(aws):
    """Inside a command, the awscli talks to the emulator (same account and
    region) and the metadata endpoint knows the instance."""
    (iid,) = aws.run_instances(1, tags={"Name": "node-1"})
    script = [
        "set -e",
        "aws ec2 describe-instances --instance-ids $INFRA_INSTANCE_ID "
        "--query 'Reservations[0].Instances[0].Tags[?Key==`Name`].Value' --output text",
        "python3 -c \"import urllib.request,os; "
        "print(urllib.request.urlopen(os.environ['INFRA_IMDS_URL']+'/latest/meta-data/instance-id').read().decode())\"",
        "pwd",
        "echo $AWS_REGION",
    ]
    cmd = send(aws, script, InstanceIds=[iid], extra_params={"executionTimeout": ["60"]})
    inv = aws.wait_invocation(cmd["CommandId"], iid, timeout=30)
    assert inv["Status"] == "Success", inv["StandardErrorContent"]
    lines = inv["StandardOutputContent"].splitlines()
    assert lines[0] == "node-1"
    assert lines[1] == iid
    assert lines[2].endswith(f"/instances/{iid}")
    assert lines[3] == "us-east-1"


def test_sandbox_is_kept_between_commands_of_an_instance(aws):
    ids = aws.run_instances(2)
    first = send(aws, ["echo $INFRA_INSTANCE_ID > marker"], InstanceIds=[ids[0]])
    aws.wait_invocation(first["CommandId"], ids[0])
    second = send(aws, ["cat marker 2>/dev/null || echo none"], InstanceIds=ids)
    assert aws.wait_invocation(second["CommandId"], ids[0])["StandardOutputContent"] == f"{ids[0]}\n"
    assert aws.wait_invocation(second["CommandId"], ids[1])["StandardOutputContent"] == "none\n"


def test_awscli_send_command_and_get_invocation(aws):
    (iid,) = aws.run_instances(1, tags={"infra:campaign": "cli"})
    env = aws.env()
    out = subprocess.run(
        [awscli(), "ssm", "send-command", "--document-name", "AWS-RunShellScript",
         "--targets", "Key=tag:infra:campaign,Values=cli",
         "--parameters", json.dumps({"commands": ["echo via-cli"]}), "--output", "json"],
        env=env, capture_output=True, text=True, check=True)
    command_id = json.loads(out.stdout)["Command"]["CommandId"]
    inv = aws.wait_invocation(command_id, iid)
    assert inv["Status"] == "Success"
    assert inv["StandardOutputContent"] == "via-cli\n"
