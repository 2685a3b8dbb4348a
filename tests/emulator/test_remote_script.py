"""Addition 12: AWS-RunRemoteScript (download as the instance, then run), and
addition 11: the minimal PATH of the commands."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error

import pytest
from botocore.exceptions import ClientError

from awsemu import remote_script
from test_node_auth import BUCKET, make_node

AGENT = b"#!/bin/sh\necho \"agent $*\"\n"
AGENT_KEY = "_infra/bin/abc123/x86_64/infra"
BIN_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/_infra/bin/*"}]}


def node(aws, **kwargs):
    iid = make_node(aws, policy=kwargs.pop("policy", BIN_POLICY), **kwargs)
    aws.client("s3").put_object(Bucket=BUCKET, Key=AGENT_KEY, Body=AGENT)
    aws.client("s3").put_object(Bucket=BUCKET, Key="_ledger/other", Body=b"x")
    return iid


def remote(aws, iid, command_line, path=f"https://s3.amazonaws.com/{BUCKET}/{AGENT_KEY}", **params):
    parameters = {"sourceType": ["S3"], "sourceInfo": [json.dumps({"path": path})],
                  "commandLine": [command_line]}
    parameters.update({k: [v] for k, v in params.items()})
    cmd = aws.client("ssm").send_command(DocumentName="AWS-RunRemoteScript", InstanceIds=[iid],
                                         Parameters=parameters)["Command"]
    return cmd, aws.wait_invocation(cmd["CommandId"], iid, timeout=30)


def sandbox(aws, iid):
    return os.path.join(aws.emu.control("GET", "health")["state_dir"], "instances", iid)


def test_downloads_the_object_into_the_working_directory_and_runs_the_command_line(aws):
    iid = node(aws)
    sha = hashlib.sha256(AGENT).hexdigest()
    line = (f'echo "{sha}  infra" | sha256sum -c --quiet && chmod 0755 infra '
            f'&& mkdir -p "$INFRA_SANDBOX_DIR/bin/{sha}" && mv infra "$INFRA_SANDBOX_DIR/bin/{sha}/infra" '
            f'&& echo "pwd=$(pwd)" && "$INFRA_SANDBOX_DIR/bin/{sha}/infra" installed')
    cmd, inv = remote(aws, iid, line, workingDirectory="work")
    assert inv["Status"] == "Success", inv
    assert inv["ResponseCode"] == 0
    assert inv["DocumentName"] == "AWS-RunRemoteScript"
    assert inv["StandardOutputContent"] == f"pwd={sandbox(aws, iid)}/work\nagent installed\n"
    with open(os.path.join(sandbox(aws, iid), "bin", sha, "infra"), "rb") as fh:
        assert fh.read() == AGENT
    plugins = aws.client("ssm").list_command_invocations(CommandId=cmd["CommandId"], Details=True)[
        "CommandInvocations"][0]["CommandPlugins"]
    assert [(p["Name"], p["Status"]) for p in plugins] == [("downloadContent", "Success"),
                                                            ("runShellScript", "Success")]
    assert "Content downloaded to" in plugins[0]["Output"]
    got = aws.client("ssm").get_command_invocation(CommandId=cmd["CommandId"], InstanceId=iid,
                                                   PluginName="downloadContent")
    assert got["Status"] == "Success" and got["PluginName"] == "downloadContent"


def test_the_working_directory_is_on_path_and_exit_codes_are_kept(aws):
    iid = node(aws)
    _, inv = remote(aws, iid, "chmod +x infra && infra one && exit 7")
    assert inv["Status"] == "Failed" and inv["ResponseCode"] == 7
    assert inv["StandardOutputContent"] == "agent one\n"
    _, inv = remote(aws, iid, "sleep 20", executionTimeout="1")
    assert inv["Status"] == "TimedOut" and inv["StatusDetails"] == "ExecutionTimedOut"


@pytest.mark.parametrize("url", [
    f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{AGENT_KEY}",
    f"https://{BUCKET}.s3.amazonaws.com/{AGENT_KEY}",
    f"https://s3.us-east-1.amazonaws.com/{BUCKET}/{AGENT_KEY}",
    f"https://s3-us-east-1.amazonaws.com/{BUCKET}/_infra/bin/abc123/x86_64/%69nfra",
])
def test_url_forms(aws, url):
    iid = node(aws)
    _, inv = remote(aws, iid, "cat infra", path=url)
    assert inv["Status"] == "Success", inv
    assert inv["StandardOutputContent"].encode() == AGENT


def test_parse_url():
    assert remote_script.parse_url("https://s3.amazonaws.com/b/k/x") == ("b", "k/x")
    assert remote_script.parse_url("https://my.bucket.s3.eu-central-1.amazonaws.com/a%20b") == ("my.bucket", "a b")
    assert remote_script.parse_url("http://127.0.0.1:5000/b/k") == ("b", "k")
    for bad in ("https://example.com/b/k", "https://s3.amazonaws.com/b", "https://s3.amazonaws.com/b/dir/"):
        with pytest.raises(ValueError):
            remote_script.parse_url(bad)


def test_a_denied_download_fails_the_invocation_and_runs_nothing(aws):
    iid = node(aws)
    url = f"https://s3.amazonaws.com/{BUCKET}/_ledger/other"
    cmd, inv = remote(aws, iid, "touch ran", path=url)
    assert inv["Status"] == "Failed" and inv["ResponseCode"] == 1
    assert "AccessDenied" in inv["StandardErrorContent"]
    assert "s3:GetObject" in inv["StandardErrorContent"]
    assert not os.path.exists(os.path.join(sandbox(aws, iid), ".ssm", cmd["CommandId"], "downloads", "ran"))
    assert not os.path.exists(os.path.join(sandbox(aws, iid), ".ssm", cmd["CommandId"], "downloads", "other"))
    plugins = aws.client("ssm").list_command_invocations(CommandId=cmd["CommandId"], Details=True)[
        "CommandInvocations"][0]["CommandPlugins"]
    assert [(p["Name"], p["Status"]) for p in plugins] == [("downloadContent", "Failed"), ("runShellScript", "Failed")]
    assert "AccessDenied" in plugins[0]["Output"]


def test_a_node_without_a_profile_cannot_download(aws):
    iid = node(aws, with_profile=False)
    _, inv = remote(aws, iid, "true")
    assert inv["Status"] == "Failed" and "AccessDenied" in inv["StandardErrorContent"]


def test_a_missing_object_fails_the_invocation(aws):
    iid = node(aws)
    _, inv = remote(aws, iid, "true", path=f"https://s3.amazonaws.com/{BUCKET}/_infra/bin/none/infra")
    assert inv["Status"] == "Failed" and inv["ResponseCode"] == 1
    assert "NoSuchKey" in inv["StandardErrorContent"]


def test_bad_parameters_are_refused_at_send_command(aws):
    iid = node(aws)
    ssm = aws.client("ssm")
    info = json.dumps({"path": f"https://s3.amazonaws.com/{BUCKET}/{AGENT_KEY}"})
    for params in ({"sourceType": ["GitHub"], "sourceInfo": [info], "commandLine": ["x"]},
                   {"sourceType": ["S3"], "sourceInfo": ["not json"], "commandLine": ["x"]},
                   {"sourceType": ["S3"], "sourceInfo": [info]}):
        with pytest.raises(ClientError) as err:
            ssm.send_command(DocumentName="AWS-RunRemoteScript", InstanceIds=[iid], Parameters=params)
        assert err.value.response["Error"]["Code"] == "InvalidParameters"
    with pytest.raises(ClientError) as err:
        ssm.send_command(DocumentName="AWS-ConfigureAWSPackage", InstanceIds=[iid], Parameters={"name": ["x"]})
    assert err.value.response["Error"]["Code"] == "InvalidDocument"


def test_output_goes_to_s3_under_the_run_shell_script_step(aws):
    iid = node(aws)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="ssm-out")
    info = json.dumps({"path": f"https://s3.amazonaws.com/{BUCKET}/{AGENT_KEY}"})
    params = {"sourceType": ["S3"], "sourceInfo": [info], "commandLine": ["sh infra out"]}
    cmd = aws.client("ssm").send_command(DocumentName="AWS-RunRemoteScript", InstanceIds=[iid], Parameters=params,
                                         OutputS3BucketName="ssm-out", OutputS3KeyPrefix="logs")["Command"]
    assert aws.wait_invocation(cmd["CommandId"], iid)["Status"] == "Success"
    key = f"logs/{cmd['CommandId']}/{iid}/awsrunShellScript/runShellScript/stdout"
    assert s3.get_object(Bucket="ssm-out", Key=key)["Body"].read() == b"agent out\n"


# ------------------------------------------------------ minimal PATH (11)


def test_minimal_node_path_has_no_aws_curl_or_python(aws):
    iid = node(aws)
    assert aws.control("POST", "config", {"node_path": "minimal"})["node_path"] == "minimal"
    assert aws.control("GET", "config")["node_path"] == "minimal"
    cmd = aws.client("ssm").send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid], Parameters={
        "commands": ["command -v aws curl wget python3 python; echo missing=$?",
                     "for t in bash sh env cat ls mkdir rm mv cp sleep echo printf sha256sum chmod date head tail "
                     "wc sort tr true false test dirname basename seq kill grep sed; do "
                     "command -v $t >/dev/null || echo absent=$t; done",
                     'echo "path=$PATH"']})["Command"]
    inv = aws.wait_invocation(cmd["CommandId"], iid)
    lines = inv["StandardOutputContent"].splitlines()
    assert lines[0] == "missing=1", inv
    assert [x for x in lines if x.startswith("absent=")] == []
    path = [x for x in lines if x.startswith("path=")][0][5:]
    assert ":" not in path and path.endswith("/node-bin")
    # AWS-RunRemoteScript under it: the download needs no tool on the node
    _, inv = remote(aws, iid, "command -v aws || sh infra minimal")
    assert inv["StandardOutputContent"] == "agent minimal\n", inv


def test_node_path_is_per_account_and_reset_restores_full(aws, emulator):
    from harness import new_account_id

    iid = node(aws)
    aws.control("POST", "config", {"node_path": "minimal"})
    other = new_account_id()
    try:
        assert emulator.control("GET", "config", account_id=other)["node_path"] == "full"
    finally:
        emulator.control("POST", "reset", {"account_id": other})
    with pytest.raises(urllib.error.HTTPError) as err:
        aws.control("POST", "config", {"node_path": "tiny"})
    assert err.value.code == 400
    aws.control("POST", "config", {"node_path": "full"})
    cmd = aws.client("ssm").send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                                         Parameters={"commands": ["command -v aws >/dev/null && echo has-aws"]}
                                         )["Command"]
    assert aws.wait_invocation(cmd["CommandId"], iid)["StandardOutputContent"] == "has-aws\n"
    aws.control("POST", "config", {"node_path": "minimal"})
    aws.control("POST", "reset", {"account_id": aws.account_id})
    assert aws.control("GET", "config")["node_path"] == "full"
