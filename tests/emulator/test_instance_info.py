"""Addition 2: DescribeInstanceInformation."""

from __future__ import annotations


def test_running_instances_are_online_managed_nodes(aws):
    ids = aws.run_instances(3, tags={"infra:campaign": "c9"})
    ec2 = aws.client("ec2")
    ec2.terminate_instances(InstanceIds=[ids[2]])
    ec2.stop_instances(InstanceIds=[ids[1]])
    ssm = aws.client("ssm")
    infos = {i["InstanceId"]: i for i in ssm.describe_instance_information()["InstanceInformationList"]}
    assert set(infos) == {ids[0], ids[1]}
    assert infos[ids[0]]["PingStatus"] == "Online"
    assert infos[ids[0]]["PlatformType"] == "Linux"
    assert infos[ids[0]]["ResourceType"] == "EC2Instance"
    assert infos[ids[1]]["PingStatus"] == "ConnectionLost"
    online = ssm.describe_instance_information(
        Filters=[{"Key": "PingStatus", "Values": ["Online"]}])["InstanceInformationList"]
    assert [i["InstanceId"] for i in online] == [ids[0]]
    by_id = ssm.describe_instance_information(
        InstanceInformationFilterList=[{"key": "InstanceIds", "valueSet": [ids[0]]}])["InstanceInformationList"]
    assert [i["InstanceId"] for i in by_id] == [ids[0]]
    by_tag = ssm.describe_instance_information(
        Filters=[{"Key": "tag:infra:campaign", "Values": ["c9"]}])["InstanceInformationList"]
    assert {i["InstanceId"] for i in by_tag} == {ids[0], ids[1]}


def test_pagination(aws):
    aws.run_instances(7)
    ssm = aws.client("ssm")
    pages = list(ssm.get_paginator("describe_instance_information").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [len(p["InstanceInformationList"]) for p in pages] == [5, 2]


def test_other_region_sees_nothing(aws):
    aws.run_instances(1)
    assert aws.client("ssm", region="us-west-2").describe_instance_information()[
        "InstanceInformationList"] == []
