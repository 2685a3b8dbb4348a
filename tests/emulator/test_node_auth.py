"""Addition 10: node credentials, and the instance role's policies enforced
on S3 requests made with them (boto3 and the awscli inside commands)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from awsemu import node_auth

BUCKET = "nodes-bucket"

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "Objects", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": f"arn:aws:s3:::{BUCKET}/allowed/*"},
        {"Sid": "ReadBin", "Effect": "Allow", "Action": "S3:Get*",
         "Resource": f"arn:aws:s3:::{BUCKET}/bin/*"},
        {"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}",
         "Condition": {"StringLike": {"s3:prefix": ["allowed/*", "bin/*"]}}},
        {"Sid": "NotSecrets", "Effect": "Deny", "Action": "s3:*",
         "Resource": f"arn:aws:s3:::{BUCKET}/allowed/secret/*"},
    ],
}


def make_node(aws, policy=POLICY, with_profile=True, name="node"):
    """A role with ``policy``, its instance profile, a running instance with
    it, and the bucket. Returns the instance id."""
    iam, s3 = aws.client("iam"), aws.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except ClientError:
        pass
    if not with_profile:
        return aws.run_instances(1)[0]
    iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))
    iam.put_role_policy(RoleName=f"{name}-role", PolicyName="bucket", PolicyDocument=json.dumps(policy))
    iam.create_instance_profile(InstanceProfileName=f"{name}-profile")
    iam.add_role_to_instance_profile(InstanceProfileName=f"{name}-profile", RoleName=f"{name}-role")
    return aws.run_instances(1, IamInstanceProfile={"Name": f"{name}-profile"})[0]


def run(aws, iid, lines, timeout=30.0):
    cmd = aws.client("ssm").send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                                         Parameters={"commands": lines})["Command"]
    return aws.wait_invocation(cmd["CommandId"], iid, timeout=timeout)


def outcomes(inv):
    """``name=rc`` lines printed by ``try`` below -> {name: "ok" | "failed"}."""
    pairs = (line.split("=", 1) for line in inv["StandardOutputContent"].split() if "=" in line)
    return {name: "ok" if rc == "0" else "failed" for name, rc in pairs}


TRY = 'try() { name=$1; shift; "$@" >/dev/null 2>>"$HOME/err.log"; echo "$name=$?"; }'


def node_client(aws, iid, service="s3"):
    """A boto3 client with the instance's node credentials (as from IMDS)."""
    return boto3.client(service, endpoint_url=aws.emu.url, region_name="us-east-1",
                        aws_access_key_id=node_auth.node_access_key(aws.account_id, iid),
                        aws_secret_access_key="testing", aws_session_token=node_auth.session_token(iid),
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                      s3={"addressing_style": "path"}))


def test_node_credentials_identify_the_instance_and_account_stays_available(aws):
    iid = make_node(aws)
    inv = run(aws, iid, ['echo "$AWS_ACCESS_KEY_ID $AWS_SESSION_TOKEN $INFRA_EMULATOR_ACCOUNT"'])
    key, token, account = inv["StandardOutputContent"].split()
    assert key == node_auth.node_access_key(aws.account_id, iid)
    assert key.startswith("ASIA") and node_auth.parse_node_key(key) == (aws.account_id, iid)
    assert token == f"emulator-node/{iid}"
    assert account == aws.account_id


def test_awscli_put_to_an_allowed_key_succeeds_and_to_a_forbidden_key_is_denied(aws):
    iid = make_node(aws)
    inv = run(aws, iid, [
        TRY, "echo data > f",
        f"try allowed aws s3 cp f s3://{BUCKET}/allowed/a.txt",
        f"try forbidden aws s3 cp f s3://{BUCKET}/forbidden/a.txt",
        f"try denied_by_deny aws s3 cp f s3://{BUCKET}/allowed/secret/a.txt",
        f"try get_allowed aws s3 cp s3://{BUCKET}/allowed/a.txt got",
        "cat $HOME/err.log >&2",
    ])
    assert outcomes(inv) == {"allowed": "ok", "forbidden": "failed", "denied_by_deny": "failed",
                             "get_allowed": "ok"}, inv
    assert "AccessDenied" in inv["StandardErrorContent"]
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == ["allowed/a.txt"]


def test_list_bucket_with_a_prefix_condition(aws):
    iid = make_node(aws)
    aws.client("s3").put_object(Bucket=BUCKET, Key="allowed/x", Body=b"1")
    aws.client("s3").put_object(Bucket=BUCKET, Key="other/y", Body=b"2")
    inv = run(aws, iid, [
        TRY,
        f"try ls_allowed aws s3 ls s3://{BUCKET}/allowed/",
        f"try ls_other aws s3 ls s3://{BUCKET}/other/",
        f"try ls_root aws s3 ls s3://{BUCKET}/",
        f"try api_prefix aws s3api list-objects-v2 --bucket {BUCKET} --prefix allowed/x",
        f"try api_none aws s3api list-objects-v2 --bucket {BUCKET}",
    ])
    assert outcomes(inv) == {"ls_allowed": "ok", "ls_other": "failed", "ls_root": "failed", "api_prefix": "ok",
                             "api_none": "failed"}, inv


def test_explicit_deny_wins_over_an_allow(aws):
    iid = make_node(aws)
    s3 = node_client(aws, iid)
    s3.put_object(Bucket=BUCKET, Key="allowed/ok", Body=b"x")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=BUCKET, Key="allowed/secret/k", Body=b"x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "explicit deny" in err.value.response["Error"]["Message"]
    assert f"assumed-role/node-role/{iid}" in err.value.response["Error"]["Message"]


def test_wildcard_actions_are_case_insensitive_and_other_actions_are_denied(aws):
    iid = make_node(aws)
    aws.client("s3").put_object(Bucket=BUCKET, Key="bin/tool", Body=b"#!/bin/sh\n")
    s3 = node_client(aws, iid)
    assert s3.get_object(Bucket=BUCKET, Key="bin/tool")["Body"].read() == b"#!/bin/sh\n"
    assert s3.head_object(Bucket=BUCKET, Key="bin/tool")["ContentLength"] == 10
    for call in (lambda: s3.put_object(Bucket=BUCKET, Key="bin/tool", Body=b"evil"),
                 lambda: s3.delete_object(Bucket=BUCKET, Key="bin/tool"),
                 lambda: s3.copy_object(Bucket=BUCKET, Key="bin/copy", CopySource=f"{BUCKET}/allowed/none"),
                 lambda: s3.get_bucket_location(Bucket=BUCKET),
                 lambda: s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"}),
                 lambda: s3.list_buckets()):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert aws.client("s3").get_object(Bucket=BUCKET, Key="bin/tool")["Body"].read() == b"#!/bin/sh\n"


def test_delete_objects_is_authorized_key_by_key(aws):
    iid = make_node(aws, policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": f"arn:aws:s3:::{BUCKET}/results/*"}]})
    s3 = aws.client("s3")
    for key in ("results/a", "results/b", "_ledger/x"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"1")
    node = node_client(aws, iid)
    out = node.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "results/a"}, {"Key": "_ledger/x"},
                                                                 {"Key": "results/b"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["results/a", "results/b"]
    assert [(e["Key"], e["Code"]) for e in out["Errors"]] == [("_ledger/x", "AccessDenied")]
    out = node.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "_ledger/x"}], "Quiet": True})
    assert [(e["Key"], e["Code"]) for e in out["Errors"]] == [("_ledger/x", "AccessDenied")]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["_ledger/x"]


def test_copy_needs_get_on_the_source_and_put_on_the_destination(aws):
    iid = make_node(aws)
    aws.client("s3").put_object(Bucket=BUCKET, Key="bin/tool", Body=b"t")
    aws.client("s3").put_object(Bucket=BUCKET, Key="other/x", Body=b"o")
    s3 = node_client(aws, iid)
    s3.copy_object(Bucket=BUCKET, Key="allowed/tool", CopySource=f"{BUCKET}/bin/tool")
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=BUCKET, Key="allowed/x", CopySource=f"{BUCKET}/other/x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_presigned_url_with_node_credentials_is_checked(aws):
    iid = make_node(aws)
    aws.client("s3").put_object(Bucket=BUCKET, Key="allowed/p", Body=b"yes")
    aws.client("s3").put_object(Bucket=BUCKET, Key="other/p", Body=b"no")
    s3 = node_client(aws, iid)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    ok = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "allowed/p"})
    assert opener.open(ok, timeout=10).read() == b"yes"
    bad = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "other/p"})
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(bad, timeout=10)
    assert err.value.code == 403
    assert b"<Code>AccessDenied</Code>" in err.value.read()


def test_instance_without_a_profile_is_denied_every_s3_request(aws):
    iid = make_node(aws, with_profile=False)
    aws.client("s3").put_object(Bucket=BUCKET, Key="allowed/x", Body=b"1")
    inv = run(aws, iid, [
        TRY,
        f"try get aws s3 cp s3://{BUCKET}/allowed/x got",
        f"try ls aws s3 ls s3://{BUCKET}/allowed/",
        "try buckets aws s3 ls",
        "try ec2 aws ec2 describe-instances --instance-ids $INFRA_INSTANCE_ID",
        "cat $HOME/err.log >&2",
    ])
    assert outcomes(inv) == {"get": "failed", "ls": "failed", "buckets": "failed", "ec2": "ok"}, inv
    assert "has no instance profile" in inv["StandardErrorContent"]


def test_controller_requests_stay_unchecked(aws):
    make_node(aws)
    s3 = aws.client("s3")
    s3.put_object(Bucket=BUCKET, Key="_ledger/entry", Body=b"1")
    acct = boto3.client("s3", endpoint_url=aws.emu.url, region_name="us-east-1",
                        aws_access_key_id=aws.account_id, aws_secret_access_key="testing")
    acct.put_object(Bucket=BUCKET, Key="_ledger/entry2", Body=b"2")
    assert len(s3.list_objects_v2(Bucket=BUCKET, Prefix="_ledger/")["Contents"]) == 2


def test_imds_hands_out_the_same_node_credentials_for_the_role(aws):
    iid = make_node(aws)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    base = f"{aws.emu.url}/_imds/{iid}/latest/meta-data/iam/"
    assert opener.open(base + "security-credentials/", timeout=10).read().decode() == "node-role"
    creds = json.loads(opener.open(base + "security-credentials/node-role", timeout=10).read())
    assert creds["AccessKeyId"] == node_auth.node_access_key(aws.account_id, iid)
    assert creds["Token"] == f"emulator-node/{iid}"
    info = json.loads(opener.open(base + "info", timeout=10).read())
    assert info["InstanceProfileArn"].endswith(":instance-profile/node-profile")
    bare = make_node(aws, with_profile=False)
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(f"{aws.emu.url}/_imds/{bare}/latest/meta-data/iam/security-credentials/", timeout=10)
    assert err.value.code == 404


def test_sdk_in_a_command_uses_the_imds_credentials_when_the_environment_has_none(aws):
    iid = make_node(aws)
    aws.client("s3").put_object(Bucket=BUCKET, Key="allowed/x", Body=b"1")
    inv = run(aws, iid, [
        TRY, "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN",
        f"try get aws s3 cp s3://{BUCKET}/allowed/x got",
        f"try other aws s3 cp got s3://{BUCKET}/other/x",
    ])
    assert outcomes(inv) == {"get": "ok", "other": "failed"}, inv


def test_attached_managed_policy_counts(aws):
    iid = make_node(aws, policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}]})
    iam = aws.client("iam")
    arn = iam.create_policy(PolicyName="no-ledger", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:PutObject",
                                                "NotResource": f"arn:aws:s3:::{BUCKET}/results/*"}]}))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName="node-role", PolicyArn=arn)
    s3 = node_client(aws, iid)
    s3.put_object(Bucket=BUCKET, Key="results/t/attempt-1/out", Body=b"r")
    with pytest.raises(ClientError):
        s3.put_object(Bucket=BUCKET, Key="_ledger/x", Body=b"-1000")


# ---------------------------------------------------------- the evaluator


def test_evaluate_wildcards_not_action_and_conditions():
    ev = node_auth.evaluate
    doc = {"Statement": [
        {"Effect": "Allow", "Action": "s3:Get?bject", "Resource": "arn:aws:s3:::b/p/*"},
        {"Effect": "Allow", "NotAction": "s3:Delete*", "Resource": "arn:aws:s3:::b/any/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
         "Condition": {"StringEquals": {"s3:prefix": ["exact/"]}}},
        {"Effect": "Deny", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
         "Condition": {"StringNotLike": {"s3:prefix": ["exact/*", "ok/*"]}}},
    ]}
    assert ev([doc], "s3:GETOBJECT", "arn:aws:s3:::b/p/k") == "Allow"
    assert ev([doc], "s3:GetObject", "arn:aws:s3:::B/p/k") == "ImplicitDeny"  # resources are case-sensitive
    assert ev([doc], "s3:PutObject", "arn:aws:s3:::b/any/k") == "Allow"
    assert ev([doc], "s3:DeleteObject", "arn:aws:s3:::b/any/k") == "ImplicitDeny"
    assert ev([doc], "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ["exact/"]}) == "Allow"
    assert ev([doc], "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ["ok/x"]}) == "ImplicitDeny"
    assert ev([doc], "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ["no/"]}) == "Deny"
    # a negated operator with the key missing applies
    assert ev([doc], "s3:ListBucket", "arn:aws:s3:::b") == "Deny"


def test_evaluate_unknown_condition_operator_fails_closed():
    allow = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*",
                            "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]}
    deny = {"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*",
                           "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}}]}
    everything = {"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}
    assert node_auth.evaluate([allow], "s3:GetObject", "arn:aws:s3:::b/k") == "ImplicitDeny"
    assert node_auth.evaluate([everything, deny], "s3:GetObject", "arn:aws:s3:::b/k") == "Deny"
    assert node_auth.evaluate([everything], "s3:GetObject", "arn:aws:s3:::b/k") == "Allow"


def test_fleet_instances_of_a_stack_get_the_launch_template_profile_and_its_policies(aws):
    """The project's kind of stacks (test_project_stacks): the role's inline
    policy (Fn::Sub resolved by CloudFormation) lets the fleets' nodes read
    the bucket's objects and nothing else."""
    from test_cloudformation import live_instances
    from test_project_stacks import base_template, compute_template

    cfn, ec2, s3 = aws.client("cloudformation"), aws.client("ec2"), aws.client("s3")
    cfn.create_stack(StackName="infra-demo-base", TemplateBody=base_template(), Capabilities=["CAPABILITY_IAM"])
    cfn.create_stack(StackName="infra-demo-p1", TemplateBody=compute_template(workers=1),
                     Parameters=[{"ParameterKey": "ValidUntil", "ParameterValue": "2030-01-01T00:00:00Z"}])
    bucket = f"infra-demo-{aws.account_id}-us-east-1"
    s3.put_object(Bucket=bucket, Key="p1/_bundle/run.sh", Body=b"echo hi\n")
    nodes = live_instances(ec2, **{"tag:infra:project": "demo"})
    assert len(nodes) == 2  # one spot worker, one on-demand trainer
    for node in nodes:
        inv = run(aws, node["InstanceId"], [
            TRY,
            f"try get aws s3 cp s3://{bucket}/p1/_bundle/run.sh run.sh",
            f"try put aws s3 cp run.sh s3://{bucket}/p1/_bundle/run.sh",
        ])
        assert outcomes(inv) == {"get": "ok", "put": "failed"}, inv
    assert s3.get_object(Bucket=bucket, Key="p1/_bundle/run.sh")["Body"].read() == b"echo hi\n"
    cfn.delete_stack(StackName="infra-demo-p1")
    cfn.delete_stack(StackName="infra-demo-base")


def test_managed_policy_arns_of_a_role_in_a_template_are_attached(aws):
    cfn, s3 = aws.client("cloudformation"), aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    template = {"Resources": {
        "NodePolicy": {"Type": "AWS::IAM::ManagedPolicy", "Properties": {"PolicyDocument": {
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"},
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{BUCKET}/_ledger/*"}]}}},
        "Role": {"Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
            "ManagedPolicyArns": [{"Ref": "NodePolicy"},
                                  "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]}},
        "Profile": {"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "Role"}]}}},
        "Outputs": {"Profile": {"Value": {"Ref": "Profile"}}}}
    cfn.create_stack(StackName="roles", TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM"])
    stack = cfn.describe_stacks(StackName="roles")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    profile = stack["Outputs"][0]["OutputValue"]
    (iid,) = aws.run_instances(1, IamInstanceProfile={"Name": profile})
    node = node_client(aws, iid)
    node.put_object(Bucket=BUCKET, Key="p/results/t/out", Body=b"1")
    with pytest.raises(ClientError) as err:
        node.put_object(Bucket=BUCKET, Key="_ledger/forged", Body=b"-1000")
    assert "explicit deny" in err.value.response["Error"]["Message"]


def test_keys_with_special_characters_are_matched_decoded_once(aws):
    iid = make_node(aws)
    node = node_client(aws, iid)
    node.put_object(Bucket=BUCKET, Key="allowed/a b%20c+d", Body=b"1")
    assert aws.client("s3").get_object(Bucket=BUCKET, Key="allowed/a b%20c+d")["Body"].read() == b"1"
    with pytest.raises(ClientError):
        node.put_object(Bucket=BUCKET, Key="allowed%2Fx", Body=b"1")
