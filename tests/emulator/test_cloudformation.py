"""Additions 3 and 4: spot fleets with launch templates in CloudFormation,
and stack deletion that deletes; plus the injected CreateStack failure."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

AMI = "ami-12c6146b"


def network_resources() -> dict:
    return {
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.20.0.0/16"}},
        "Subnet": {"Type": "AWS::EC2::Subnet", "Properties": {
            "VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.20.1.0/24", "AvailabilityZone": "us-east-1b"}},
        "Igw": {"Type": "AWS::EC2::InternetGateway"},
        "IgwAttach": {"Type": "AWS::EC2::VPCGatewayAttachment", "Properties": {
            "VpcId": {"Ref": "Vpc"}, "InternetGatewayId": {"Ref": "Igw"}}},
        "RouteTable": {"Type": "AWS::EC2::RouteTable", "Properties": {"VpcId": {"Ref": "Vpc"}}},
        "DefaultRoute": {"Type": "AWS::EC2::Route", "DependsOn": "IgwAttach", "Properties": {
            "RouteTableId": {"Ref": "RouteTable"}, "DestinationCidrBlock": "0.0.0.0/0",
            "GatewayId": {"Ref": "Igw"}}},
        "SubnetRoutes": {"Type": "AWS::EC2::SubnetRouteTableAssociation", "Properties": {
            "SubnetId": {"Ref": "Subnet"}, "RouteTableId": {"Ref": "RouteTable"}}},
        "Sg": {"Type": "AWS::EC2::SecurityGroup", "Properties": {
            "GroupDescription": "cluster", "VpcId": {"Ref": "Vpc"}}},
        "SgSelf": {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
            "GroupId": {"Ref": "Sg"}, "IpProtocol": "-1", "SourceSecurityGroupId": {"Ref": "Sg"}}},
        "LaunchTemplate": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {
            "ImageId": AMI, "InstanceType": "c6i.xlarge",
            "SecurityGroupIds": [{"Ref": "Sg"}],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [
                {"Key": "infra:campaign", "Value": "camp-1"}, {"Key": "Name", "Value": "worker"}]}],
        }}},
    }


def spot_fleet_template(capacity: int = 3, **config) -> str:
    resources = network_resources()
    fleet_config = {
        "IamFleetRole": "arn:aws:iam::123456789012:role/fleet",
        "TargetCapacity": capacity,
        "AllocationStrategy": "priceCapacityOptimized",
        "Type": "maintain",
        "LaunchTemplateConfigs": [{
            "LaunchTemplateSpecification": {
                "LaunchTemplateId": {"Ref": "LaunchTemplate"},
                "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]}},
            "Overrides": [{"InstanceType": "c6i.xlarge", "SubnetId": {"Ref": "Subnet"}},
                          {"InstanceType": "c6i.2xlarge", "SubnetId": {"Ref": "Subnet"}}],
        }],
    }
    fleet_config.update(config)
    resources["Fleet"] = {"Type": "AWS::EC2::SpotFleet", "Properties": {"SpotFleetRequestConfigData": fleet_config}}
    return json.dumps({"Resources": resources, "Outputs": {"FleetId": {"Value": {"Ref": "Fleet"}}}})


def live_instances(ec2, **filters):
    flt = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    flt += [{"Name": k, "Values": [v]} for k, v in filters.items()]
    return [i for r in ec2.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]]


def test_spot_fleet_with_launch_template_configs_and_stack_deletion(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    default_vpcs = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    cfn.create_stack(StackName="camp", TemplateBody=spot_fleet_template(3))
    stack = cfn.describe_stacks(StackName="camp")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    fleet_id = stack["Outputs"][0]["OutputValue"]
    assert fleet_id.startswith("sfr-")

    instances = live_instances(ec2, **{"tag:infra:campaign": "camp-1"})
    assert len(instances) == 3
    for inst in instances:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["Name"] == "worker"
        assert tags["aws:ec2spot:fleet-request-id"] == fleet_id
        assert inst["InstanceLifecycle"] == "spot"
        assert inst["InstanceType"] == "c6i.xlarge"  # the cheaper override
        assert inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    sg_id = [g["GroupId"] for g in instances[0]["SecurityGroups"]]
    assert sg_id and sg_id[0].startswith("sg-")

    fleets = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    assert fleets[0]["SpotFleetRequestState"] == "active"
    assert fleets[0]["SpotFleetRequestConfig"]["TargetCapacity"] == 3
    active = ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    assert len(active) == 3
    resources = cfn.list_stack_resources(StackName="camp")["StackResourceSummaries"]
    assert {"Fleet": fleet_id}.items() <= {r["LogicalResourceId"]: r["PhysicalResourceId"]
                                           for r in resources}.items()

    stack_vpc = [v for v in ec2.describe_vpcs()["Vpcs"] if v["VpcId"] not in default_vpcs][0]["VpcId"]
    cfn.delete_stack(StackName="camp")
    cfn.get_waiter("stack_delete_complete").wait(StackName=stack["StackId"],
                                                 WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    assert live_instances(ec2) == []
    assert {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]} == default_vpcs
    assert not [t for t in ec2.describe_route_tables()["RouteTables"] if t["VpcId"] == stack_vpc]
    assert not [s for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] == stack_vpc]
    assert not [g for g in ec2.describe_internet_gateways()["InternetGateways"]
                if g["InternetGatewayId"] != "" and any(t["Key"] == "aws:cloudformation:stack-name"
                                                        for t in g.get("Tags", []))]
    assert not [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["VpcId"] == stack_vpc]
    fleet = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"][0]
    assert fleet["SpotFleetRequestState"].startswith("cancelled")
    summaries = cfn.list_stacks()["StackSummaries"]
    assert [s["StackStatus"] for s in summaries if s["StackName"] == "camp"] == ["DELETE_COMPLETE"]
    assert cfn.describe_stacks(StackName=stack["StackId"])["Stacks"][0]["StackStatus"] == "DELETE_COMPLETE"
    # the account still works (moto's 500 used to break DescribeStacks for good)
    cfn.describe_stacks()


def test_spot_fleet_update_target_capacity(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    cfn.create_stack(StackName="resize", TemplateBody=spot_fleet_template(2))
    assert len(live_instances(ec2)) == 2
    cfn.update_stack(StackName="resize", TemplateBody=spot_fleet_template(4))
    assert len(live_instances(ec2)) == 4
    cfn.delete_stack(StackName="resize")
    assert live_instances(ec2) == []


def test_spot_fleet_max_total_price_caps_launches(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    # c6i.xlarge in us-east-1b costs 0.0669 $/h in the catalog: 0.15 buys two
    cfn.create_stack(StackName="capped", TemplateBody=spot_fleet_template(5, SpotMaxTotalPrice="0.15"))
    assert len(live_instances(ec2)) == 2
    fleet = ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"][0]
    assert fleet["SpotFleetRequestConfig"]["SpotMaxTotalPrice"] == "0.15"


def ec2_fleet_template(capacity: int = 2) -> str:
    resources = network_resources()
    resources["Fleet"] = {"Type": "AWS::EC2::EC2Fleet", "Properties": {
        "Type": "maintain",
        "TargetCapacitySpecification": {"TotalTargetCapacity": capacity, "DefaultTargetCapacityType": "spot"},
        "SpotOptions": {"AllocationStrategy": "price-capacity-optimized"},
        "LaunchTemplateConfigs": [{
            "LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "LaunchTemplate"}, "Version": "$Latest"},
            "Overrides": [{"InstanceType": "c6i.xlarge", "SubnetId": {"Ref": "Subnet"}}]}],
    }}
    return json.dumps({"Resources": resources})


def test_ec2_fleet_in_cloudformation(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    cfn.create_stack(StackName="ec2fleet", TemplateBody=ec2_fleet_template(2))
    fleet_id = [r["PhysicalResourceId"] for r in cfn.list_stack_resources(StackName="ec2fleet")[
        "StackResourceSummaries"] if r["LogicalResourceId"] == "Fleet"][0]
    assert fleet_id.startswith("fleet-")
    instances = live_instances(ec2, **{"tag:infra:campaign": "camp-1"})
    assert len(instances) == 2
    assert all({"Key": "aws:ec2:fleet-id", "Value": fleet_id} in i["Tags"] for i in instances)
    cfn.delete_stack(StackName="ec2fleet")
    assert live_instances(ec2) == []


def test_stack_with_route_table_deletes_cleanly(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    before = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    cfn.create_stack(StackName="net", TemplateBody=json.dumps({"Resources": network_resources()}))
    assert len(ec2.describe_vpcs()["Vpcs"]) == len(before) + 1
    cfn.delete_stack(StackName="net")
    assert {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]} == before
    events = cfn.describe_stack_events(StackName=cfn.list_stacks()["StackSummaries"][0]["StackId"])
    assert events["StackEvents"][0]["ResourceStatus"] == "DELETE_COMPLETE"


def test_injected_create_stack_failure_rolls_back(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    aws.control("POST", "fail-create-stack", {"stack_name": "doomed", "reason": "Insufficient capacity."})
    stack_id = cfn.create_stack(StackName="doomed", TemplateBody=spot_fleet_template(2))["StackId"]
    with pytest.raises(Exception):
        cfn.get_waiter("stack_create_complete").wait(StackName="doomed",
                                                     WaiterConfig={"Delay": 1, "MaxAttempts": 2})
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "ROLLBACK_COMPLETE"
    assert "failed to create" in stack["StackStatusReason"]
    events = cfn.describe_stack_events(StackName="doomed")["StackEvents"]
    failed = [e for e in events if e["ResourceStatus"] == "CREATE_FAILED"]
    assert failed and failed[0]["ResourceStatusReason"] == "Insufficient capacity."
    assert live_instances(ec2) == []
    # only the next CreateStack of that name fails
    cfn.delete_stack(StackName="doomed")
    cfn.create_stack(StackName="doomed", TemplateBody=spot_fleet_template(1))
    assert cfn.describe_stacks(StackName="doomed")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"


def test_describe_stacks_unknown_name_is_validation_error(aws):
    with pytest.raises(ClientError) as err:
        aws.client("cloudformation").describe_stacks(StackName="nope")
    assert err.value.response["Error"]["Code"] == "ValidationError"


def test_security_group_egress_and_placement_group(aws):
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    resources = network_resources()
    resources["SgSelfOut"] = {"Type": "AWS::EC2::SecurityGroupEgress", "Properties": {
        "GroupId": {"Ref": "Sg"}, "IpProtocol": "-1", "DestinationSecurityGroupId": {"Ref": "Sg"}}}
    resources["Cluster"] = {"Type": "AWS::EC2::PlacementGroup", "Properties": {"Strategy": "cluster"}}
    cfn.create_stack(StackName="efa", TemplateBody=json.dumps({"Resources": resources}))
    listed = {r["LogicalResourceId"]: r["PhysicalResourceId"]
              for r in cfn.list_stack_resources(StackName="efa")["StackResourceSummaries"]}
    assert "" not in listed and listed["Cluster"]
    sg = ec2.describe_security_groups(GroupIds=[listed["Sg"]])["SecurityGroups"][0]
    assert any(p.get("UserIdGroupPairs") and p["UserIdGroupPairs"][0]["GroupId"] == sg["GroupId"]
               for p in sg["IpPermissionsEgress"])
    assert any(p.get("UserIdGroupPairs") and p["UserIdGroupPairs"][0]["GroupId"] == sg["GroupId"]
               for p in sg["IpPermissions"])
    cfn.delete_stack(StackName="efa")
    assert cfn.list_stacks()["StackSummaries"][0]["StackStatus"] == "DELETE_COMPLETE"


def test_resource_that_fails_to_create_rolls_back_instead_of_500(aws):
    cfn = aws.client("cloudformation")
    resources = network_resources()
    resources["Fleet"] = {"Type": "AWS::EC2::SpotFleet", "Properties": {"SpotFleetRequestConfigData": {
        "IamFleetRole": "arn:aws:iam::123456789012:role/fleet", "TargetCapacity": 1,
        "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {
            "LaunchTemplateId": "lt-0000000000000000f", "Version": "1"}}]}}}
    cfn.create_stack(StackName="broken", TemplateBody=json.dumps({"Resources": resources}))
    stack = cfn.describe_stacks(StackName="broken")["Stacks"][0]
    assert stack["StackStatus"] == "ROLLBACK_COMPLETE"
    failed = [e for e in cfn.describe_stack_events(StackName="broken")["StackEvents"]
              if e["ResourceStatus"] == "CREATE_FAILED"]
    assert failed[0]["LogicalResourceId"] == "Fleet"
    assert cfn.describe_stacks()["Stacks"]  # the account still answers
    ec2 = aws.client("ec2")
    assert len(ec2.describe_vpcs()["Vpcs"]) == 1  # the network was rolled back
