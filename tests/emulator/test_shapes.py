"""The JSON responses of the emulator's own handlers follow the botocore
model exactly (the Rust SDK is stricter than boto3): every key is a member
of the output shape and every value has the wire type of its shape
(timestamps are epoch numbers in the JSON protocol)."""

from __future__ import annotations

import json

import botocore.session

_session = botocore.session.get_session()


def check(shape, value, path="$"):
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(value, dict), path
        for key, item in value.items():
            assert key in shape.members, f"{path}.{key} is not in {shape.name}"
            check(shape.members[key], item, f"{path}.{key}")
    elif kind == "list":
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            check(shape.member, item, f"{path}[{i}]")
    elif kind == "map":
        assert isinstance(value, dict), path
        for k, item in value.items():
            check(shape.value, item, f"{path}.{k}")
    elif kind == "string":
        assert isinstance(value, str), f"{path}: {value!r} is not a string"
    elif kind in ("integer", "long"):
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: {value!r}"
    elif kind in ("double", "float"):
        assert isinstance(value, (int, float)), path
    elif kind == "boolean":
        assert isinstance(value, bool), path
    elif kind == "timestamp":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: {value!r}"


def raw_calls(client):
    captured = []

    def grab(http_response, model, **_):
        captured.append((model, http_response.content))

    client.meta.events.register("after-call.*.*", grab)
    return captured


def assert_shapes(captured):
    assert captured
    for model, body in captured:
        check(model.output_shape, json.loads(body), model.name)


def test_run_command_shapes(aws):
    ids = aws.run_instances(2, tags={"k": "v"})
    ssm = aws.client("ssm")
    captured = raw_calls(ssm)
    aws.client("s3").create_bucket(Bucket="shape-out")
    cmd = ssm.send_command(DocumentName="AWS-RunShellScript", Targets=[{"Key": "tag:k", "Values": ["v"]}],
                           Parameters={"commands": ["echo a; echo b >&2; exit 1"]},
                           OutputS3BucketName="shape-out", Comment="shape")["Command"]
    for iid in ids:
        aws.wait_invocation(cmd["CommandId"], iid)
    ssm.get_command_invocation(CommandId=cmd["CommandId"], InstanceId=ids[0])
    ssm.list_command_invocations(CommandId=cmd["CommandId"], Details=True, MaxResults=1)
    ssm.list_command_invocations(Details=False)
    ssm.list_commands()
    ssm.cancel_command(CommandId=cmd["CommandId"])
    ssm.describe_instance_information()
    assert_shapes(captured)


def test_pricing_shapes(aws):
    pricing = aws.client("pricing")
    captured = raw_calls(pricing)
    pricing.get_products(ServiceCode="AmazonEC2", MaxResults=3)
    pricing.describe_services(ServiceCode="AmazonEC2")
    pricing.get_attribute_values(ServiceCode="AmazonEC2", AttributeName="instanceType", MaxResults=5)
    assert_shapes(captured)
