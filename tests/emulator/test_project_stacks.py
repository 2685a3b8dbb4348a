"""The kind of stacks `infra` renders (stacks/base.json.hbs and
stacks/compute.json.hbs, rendered by hand here): a base stack (VPC, public
subnets, NAT, private subnet, S3 endpoint, EFA security group, instance
role, retained results bucket, exports) and a compute stack (placement
group, launch template with EFA interfaces, EC2 fleets: spot with a price
cap, and on-demand) go up, run a command, resize, and come down clean."""

from __future__ import annotations

import json

from test_cloudformation import live_instances

TAGS = [{"Key": "infra:project", "Value": "demo"}, {"Key": "infra:phase", "Value": "p1"}]


def base_template() -> str:
    def subnet(az: str, cidr: str) -> dict:
        return {"Type": "AWS::EC2::Subnet", "Properties": {
            "VpcId": {"Ref": "Vpc"}, "AvailabilityZone": az, "CidrBlock": cidr,
            "MapPublicIpOnLaunch": False, "Tags": TAGS}}

    resources = {
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {
            "CidrBlock": "10.0.0.0/16", "EnableDnsHostnames": True, "EnableDnsSupport": True, "Tags": TAGS}},
        "InternetGateway": {"Type": "AWS::EC2::InternetGateway", "Properties": {"Tags": TAGS}},
        "InternetGatewayAttachment": {"Type": "AWS::EC2::VPCGatewayAttachment", "Properties": {
            "VpcId": {"Ref": "Vpc"}, "InternetGatewayId": {"Ref": "InternetGateway"}}},
        "PublicRouteTable": {"Type": "AWS::EC2::RouteTable", "Properties": {"VpcId": {"Ref": "Vpc"}, "Tags": TAGS}},
        "PublicRoute": {"Type": "AWS::EC2::Route", "DependsOn": "InternetGatewayAttachment", "Properties": {
            "RouteTableId": {"Ref": "PublicRouteTable"}, "DestinationCidrBlock": "0.0.0.0/0",
            "GatewayId": {"Ref": "InternetGateway"}}},
        "SubnetA": subnet("us-east-1a", "10.0.0.0/20"),
        "SubnetARouteTableAssociation": {"Type": "AWS::EC2::SubnetRouteTableAssociation", "Properties": {
            "SubnetId": {"Ref": "SubnetA"}, "RouteTableId": {"Ref": "PublicRouteTable"}}},
        "SubnetB": subnet("us-east-1b", "10.0.16.0/20"),
        "SubnetBRouteTableAssociation": {"Type": "AWS::EC2::SubnetRouteTableAssociation", "Properties": {
            "SubnetId": {"Ref": "SubnetB"}, "RouteTableId": {"Ref": "PublicRouteTable"}}},
        "NatAddress": {"Type": "AWS::EC2::EIP", "DependsOn": "InternetGatewayAttachment",
                       "Properties": {"Domain": "vpc", "Tags": TAGS}},
        "NatGateway": {"Type": "AWS::EC2::NatGateway", "Properties": {
            "AllocationId": {"Fn::GetAtt": ["NatAddress", "AllocationId"]}, "SubnetId": {"Ref": "SubnetA"},
            "Tags": TAGS}},
        "PrivateSubnet": subnet("us-east-1a", "10.0.128.0/20"),
        "PrivateRouteTable": {"Type": "AWS::EC2::RouteTable", "Properties": {"VpcId": {"Ref": "Vpc"}, "Tags": TAGS}},
        "PrivateRoute": {"Type": "AWS::EC2::Route", "Properties": {
            "RouteTableId": {"Ref": "PrivateRouteTable"}, "DestinationCidrBlock": "0.0.0.0/0",
            "NatGatewayId": {"Ref": "NatGateway"}}},
        "PrivateSubnetRouteTableAssociation": {"Type": "AWS::EC2::SubnetRouteTableAssociation", "Properties": {
            "SubnetId": {"Ref": "PrivateSubnet"}, "RouteTableId": {"Ref": "PrivateRouteTable"}}},
        "S3Endpoint": {"Type": "AWS::EC2::VPCEndpoint", "Properties": {
            "VpcId": {"Ref": "Vpc"}, "ServiceName": {"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"},
            "VpcEndpointType": "Gateway",
            "RouteTableIds": [{"Ref": "PublicRouteTable"}, {"Ref": "PrivateRouteTable"}]}},
        "SecurityGroup": {"Type": "AWS::EC2::SecurityGroup", "Properties": {
            "GroupDescription": "infra nodes", "VpcId": {"Ref": "Vpc"},
            "SecurityGroupEgress": [{"IpProtocol": "-1", "CidrIp": "0.0.0.0/0"}], "Tags": TAGS}},
        "SecurityGroupIngressSelf": {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
            "GroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]}, "IpProtocol": "-1",
            "SourceSecurityGroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]}}},
        "SecurityGroupEgressSelf": {"Type": "AWS::EC2::SecurityGroupEgress", "Properties": {
            "GroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]}, "IpProtocol": "-1",
            "DestinationSecurityGroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]}}},
        "InstanceRole": {"Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
            "ManagedPolicyArns": [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}],
            "Policies": [{"PolicyName": "results-bucket", "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": ["s3:GetObject"],
                "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::infra-demo-${AWS::AccountId}-${AWS::Region}/*"}}]}}],
            "Tags": TAGS}},
        "InstanceProfile": {"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "InstanceRole"}]}},
        "ResultsBucket": {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
                          "Properties": {"BucketName": {"Fn::Sub": "infra-demo-${AWS::AccountId}-${AWS::Region}"},
                                         "Tags": TAGS}},
        "ResultsBucketPolicy": {"Type": "AWS::S3::BucketPolicy", "DeletionPolicy": "Retain", "Properties": {
            "Bucket": {"Ref": "ResultsBucket"}, "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                "Resource": [{"Fn::GetAtt": ["ResultsBucket", "Arn"]}, {"Fn::Sub": "${ResultsBucket.Arn}/*"}],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}}},
    }

    def export(name: str, value: dict) -> dict:
        return {"Value": value, "Export": {"Name": f"infra-demo-{name}"}}

    outputs = {
        "VpcId": export("VpcId", {"Ref": "Vpc"}),
        "SubnetAId": export("SubnetAId", {"Ref": "SubnetA"}),
        "SubnetBId": export("SubnetBId", {"Ref": "SubnetB"}),
        "PrivateSubnetId": export("PrivateSubnetId", {"Ref": "PrivateSubnet"}),
        "SecurityGroupId": export("SecurityGroupId", {"Fn::GetAtt": ["SecurityGroup", "GroupId"]}),
        "InstanceProfileArn": export("InstanceProfileArn", {"Fn::GetAtt": ["InstanceProfile", "Arn"]}),
        "BucketName": export("BucketName", {"Fn::Sub": "infra-demo-${AWS::AccountId}-${AWS::Region}"}),
    }
    return json.dumps({"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources, "Outputs": outputs})


def group(name: str, instance_type: str, count: int, spot: bool, cap: str | None, efa: bool) -> dict:
    nics = [{"DeviceIndex": 0, "Groups": [{"Fn::ImportValue": "infra-demo-SecurityGroupId"}],
             "DeleteOnTermination": True}]
    if efa:
        nics[0].update({"NetworkCardIndex": 0, "InterfaceType": "efa",
                        "SubnetId": {"Fn::ImportValue": "infra-demo-PrivateSubnetId"}})
        nics.append({"DeviceIndex": 1, "NetworkCardIndex": 1, "InterfaceType": "efa",
                     "SubnetId": {"Fn::ImportValue": "infra-demo-PrivateSubnetId"},
                     "Groups": [{"Fn::ImportValue": "infra-demo-SecurityGroupId"}], "DeleteOnTermination": True})
    tags = TAGS + [{"Key": "infra:group", "Value": name}]
    resources = {
        f"LaunchTemplate{name}": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
            "LaunchTemplateName": f"infra-demo-p1-{name}",
            "TagSpecifications": [{"ResourceType": "launch-template", "Tags": tags}],
            "LaunchTemplateData": {
                "ImageId": "ami-12c6146b", "InstanceType": instance_type,
                "IamInstanceProfile": {"Arn": {"Fn::ImportValue": "infra-demo-InstanceProfileArn"}},
                "InstanceInitiatedShutdownBehavior": "terminate",
                "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                    "HttpPutResponseHopLimit": 2, "InstanceMetadataTags": "enabled"},
                "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
                    "VolumeSize": 100, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}],
                "NetworkInterfaces": nics,
                "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                      {"ResourceType": "volume", "Tags": tags}],
                "UserData": {"Fn::Base64": {"Fn::Sub": [
                    "#!/bin/bash\necho ${Bucket} ${ValidUntil}\n",
                    {"Bucket": {"Fn::ImportValue": "infra-demo-BucketName"}, "ValidUntil": {"Ref": "ValidUntil"}}]}},
            }}},
    }
    if efa:
        resources[f"Placement{name}"] = {"Type": "AWS::EC2::PlacementGroup",
                                         "Properties": {"Strategy": "cluster", "Tags": tags}}
        resources[f"LaunchTemplate{name}"]["Properties"]["LaunchTemplateData"]["Placement"] = {
            "GroupName": {"Ref": f"Placement{name}"}}
    capacity = {"TotalTargetCapacity": count}
    if spot:
        capacity.update({"SpotTargetCapacity": count, "DefaultTargetCapacityType": "spot"})
        options = {"SpotOptions": {"AllocationStrategy": "price-capacity-optimized",
                                   "InstanceInterruptionBehavior": "terminate", "SingleAvailabilityZone": True}}
        if cap:
            options["SpotOptions"]["MaxTotalPrice"] = cap
    else:
        capacity.update({"OnDemandTargetCapacity": count, "DefaultTargetCapacityType": "on-demand"})
        options = {"OnDemandOptions": {"AllocationStrategy": "lowest-price", "SingleAvailabilityZone": True}}
    overrides = ([{"InstanceType": instance_type}] if efa else
                 [{"SubnetId": {"Fn::ImportValue": f"infra-demo-Subnet{az}Id"}, "InstanceType": instance_type}
                  for az in ("A", "B")])
    resources[f"Fleet{name}"] = {"Type": "AWS::EC2::EC2Fleet", "Properties": {
        "Type": "maintain", "ValidUntil": {"Ref": "ValidUntil"}, "TerminateInstancesWithExpiration": True,
        "ReplaceUnhealthyInstances": True, "ExcessCapacityTerminationPolicy": "termination",
        "TargetCapacitySpecification": capacity, **options,
        "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {
            "LaunchTemplateId": {"Ref": f"LaunchTemplate{name}"},
            "Version": {"Fn::GetAtt": [f"LaunchTemplate{name}", "LatestVersionNumber"]}},
            "Overrides": overrides}],
        "TagSpecifications": [{"ResourceType": "fleet", "Tags": tags}]}}
    return resources


def compute_template(workers: int = 2, cap: str | None = "1.0") -> str:
    resources = {}
    resources.update(group("Workers", "c6i.xlarge", workers, True, cap, False))
    resources.update(group("Trainers", "p5.48xlarge", 1, False, None, True))
    return json.dumps({"AWSTemplateFormatVersion": "2010-09-09",
                       "Parameters": {"ValidUntil": {"Type": "String"}}, "Resources": resources})


def test_base_and_compute_stacks_up_run_resize_down(aws):
    cfn, ec2, ssm, s3 = (aws.client(s) for s in ("cloudformation", "ec2", "ssm", "s3"))
    vpcs_before = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    cfn.create_stack(StackName="infra-demo-base", TemplateBody=base_template(), Capabilities=["CAPABILITY_IAM"])
    assert cfn.describe_stacks(StackName="infra-demo-base")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    params = [{"ParameterKey": "ValidUntil", "ParameterValue": "2030-01-01T00:00:00Z"}]
    cfn.create_stack(StackName="infra-demo-p1", TemplateBody=compute_template(), Parameters=params)
    assert cfn.describe_stacks(StackName="infra-demo-p1")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"

    workers = live_instances(ec2, **{"tag:infra:group": "Workers"})
    trainers = live_instances(ec2, **{"tag:infra:group": "Trainers"})
    assert len(workers) == 2 and len(trainers) == 1
    assert all(w["InstanceLifecycle"] == "spot" for w in workers)
    assert "InstanceLifecycle" not in trainers[0]
    assert len({w["Placement"]["AvailabilityZone"] for w in workers}) == 1  # SingleAvailabilityZone
    private = cfn.describe_stacks(StackName="infra-demo-base")["Stacks"][0]["Outputs"]
    private_subnet = [o["OutputValue"] for o in private if o["OutputKey"] == "PrivateSubnetId"][0]
    assert trainers[0]["SubnetId"] == private_subnet
    fleets = ec2.describe_fleets()["Fleets"]
    assert {f["FleetState"] for f in fleets} == {"active"}

    cmd = ssm.send_command(DocumentName="AWS-RunShellScript",
                           Targets=[{"Key": "tag:infra:project", "Values": ["demo"]}],
                           Parameters={"commands": ["echo ok"]})["Command"]
    assert cmd["TargetCount"] == 3
    for inst in workers + trainers:
        assert aws.wait_invocation(cmd["CommandId"], inst["InstanceId"])["StandardOutputContent"] == "ok\n"

    cfn.update_stack(StackName="infra-demo-p1", TemplateBody=compute_template(workers=4), Parameters=params)
    assert len(live_instances(ec2, **{"tag:infra:group": "Workers"})) == 4
    # a spot price cap of 0.15 $/h buys two c6i.xlarge (about 0.065-0.075 $/h each)
    cfn.update_stack(StackName="infra-demo-p1", TemplateBody=compute_template(workers=4, cap="0.15"),
                     Parameters=params)
    assert len(live_instances(ec2, **{"tag:infra:group": "Workers"})) == 2

    cfn.delete_stack(StackName="infra-demo-p1")
    assert live_instances(ec2) == []
    cfn.delete_stack(StackName="infra-demo-base")
    statuses = {s["StackName"]: s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]}
    assert statuses == {"infra-demo-base": "DELETE_COMPLETE", "infra-demo-p1": "DELETE_COMPLETE"}
    assert {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]} == vpcs_before
    assert ec2.describe_nat_gateways(Filter=[{"Name": "state", "Values": ["available", "pending"]}])[
        "NatGateways"] == []
    assert ec2.describe_addresses()["Addresses"] == []
    assert [e for e in ec2.describe_vpc_endpoints()["VpcEndpoints"] if e["State"] != "deleted"] == []
    assert [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"] == []
    assert ec2.describe_internet_gateways()["InternetGateways"] == []
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [f"infra-demo-{aws.account_id}-us-east-1"]
    assert aws.client("iam").list_roles()["Roles"] == []
