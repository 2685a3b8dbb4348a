"""Addition 13 (AWS::EC2::Instance from a launch template) and addition 14
(the user data of infra's controller instances runs, with systemctl and
shutdown that do what they do)."""

from __future__ import annotations

import json
import os
import time

from harness import wait_until

BUCKET = "ud-bucket"


def sandbox(aws, iid):
    return os.path.join(aws.emu.control("GET", "health")["state_dir"], "instances", iid)


def template(user_data: str, role_tag: str = "controller", s3_key: str = "ok/*") -> str:
    return json.dumps({
        "Resources": {
            "Role": {"Type": "AWS::IAM::Role", "Properties": {
                "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
                "Policies": [{"PolicyName": "p", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/{s3_key}"}]}}]}},
            "Profile": {"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "Role"}]}},
            "Template": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {
                "ImageId": "ami-12c6146b", "InstanceType": "t3a.small",
                "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["Profile", "Arn"]}},
                "MetadataOptions": {"HttpTokens": "required"},
                "TagSpecifications": [{"ResourceType": "instance", "Tags": [
                    {"Key": "infra:role", "Value": role_tag}, {"Key": "from", "Value": "template"}]}],
                "UserData": {"Fn::Base64": user_data}}}},
            "Instance": {"Type": "AWS::EC2::Instance", "Properties": {
                "LaunchTemplate": {"LaunchTemplateId": {"Ref": "Template"},
                                   "Version": {"Fn::GetAtt": ["Template", "LatestVersionNumber"]}},
                "Tags": [{"Key": "Name", "Value": "ctl"}]}},
        },
        "Outputs": {"Id": {"Value": {"Ref": "Instance"}}},
    })


UNIT_SCRIPT = r"""#!/bin/bash
# first start: fail (systemd starts it again); then run until killed
n=$(cat starts 2>/dev/null || echo 0); echo $((n + 1)) > starts
echo "where=$INFRA_CONTROLLER_WHERE key=${AWS_ACCESS_KEY_ID:0:4} pwd=$(pwd)" > seen
[ "$n" -ge 1 ] || exit 3
exec sleep 4217.5
"""

USER_DATA = r"""#!/bin/bash
set -eo pipefail
mkdir -p opt/app etc/systemd/system
aws s3 cp --only-show-errors "s3://ud-bucket/ok/app.sh" opt/app/app.sh
chmod +x opt/app/app.sh
if aws s3 cp --only-show-errors "s3://ud-bucket/secret/x" opt/app/x 2>opt/app/denied.txt; then echo leaked; fi
token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$AWS_EC2_METADATA_SERVICE_ENDPOINT"latest/api/token)
iid=$(curl -sf -H "X-aws-ec2-metadata-token: $token" "$AWS_EC2_METADATA_SERVICE_ENDPOINT"latest/meta-data/instance-id)
cat >etc/systemd/system/app.service <<UNIT
[Unit]
Description=test app
[Service]
WorkingDirectory=/opt/app
Environment=INFRA_CONTROLLER_WHERE=aws:$iid
ExecStart=/opt/app/app.sh --flag 'a b'
Restart=on-failure
RestartSec=0.2
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now app.service
if systemctl reload-or-restart app.service 2>opt/app/unsupported.txt; then echo unsupported-passed; fi
echo user-data-done
"""


def sleeping(marker: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def put_objects(aws):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="ok/app.sh", Body=UNIT_SCRIPT.encode())
    s3.put_object(Bucket=BUCKET, Key="secret/x", Body=b"no")


def create(aws, name, body):
    cfn = aws.client("cloudformation")
    cfn.create_stack(StackName=name, TemplateBody=body, Capabilities=["CAPABILITY_IAM"])
    stack = wait_until(lambda: [s for s in cfn.describe_stacks(StackName=name)["Stacks"]
                                if s["StackStatus"] == "CREATE_COMPLETE"], timeout=20)
    assert stack, cfn.describe_stack_events(StackName=name)["StackEvents"][:3]
    return {o["OutputKey"]: o["OutputValue"] for o in stack[0]["Outputs"]}["Id"]


def test_a_controller_instance_runs_its_user_data_and_its_unit_under_restart_until_its_stack_goes(aws):
    put_objects(aws)
    iid = create(aws, "ctl", template(USER_DATA))
    root = sandbox(aws, iid)
    ec2 = aws.client("ec2")
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["infra:role"] == "controller" and tags["from"] == "template" and tags["Name"] == "ctl"
    assert inst["InstanceType"] == "t3a.small"
    assert inst["IamInstanceProfile"]["Arn"]
    # the unit failed once, was started again, and now runs
    assert wait_until(lambda: sleeping("4217.5"), timeout=30), open(
        os.path.join(root, "var/log/cloud-init-output.log")).read()
    with open(os.path.join(root, "opt/app/starts")) as fh:
        assert fh.read().strip() == "2"
    with open(os.path.join(root, "opt/app/seen")) as fh:
        assert fh.read().strip() == f"where=aws:{iid} key=ASIA pwd={root}/opt/app"
    def log() -> str:
        with open(os.path.join(root, "var/log/cloud-init-output.log")) as fh:
            return fh.read()

    wait_until(lambda: "user-data-done" in log(), timeout=20)
    log = log()
    assert "user-data-done" in log and "leaked" not in log and "unsupported-passed" not in log, log
    with open(os.path.join(root, "opt/app/denied.txt")) as fh:
        assert "403" in fh.read(), "S3 as the instance's role: denied"
    with open(os.path.join(root, "opt/app/unsupported.txt")) as fh:
        assert "systemctl: the emulator supports" in fh.read(), "unsupported arguments fail loudly"
    # deleting the stack terminates the instance and kills its processes
    aws.client("cloudformation").delete_stack(StackName="ctl")
    assert wait_until(lambda: not sleeping("4217.5"), timeout=20)
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"


def test_shutdown_in_a_controller_terminates_it_and_other_instances_run_no_user_data(aws):
    put_objects(aws)
    iid = create(aws, "plain", template("#!/bin/bash\ntouch ran\n", role_tag="node"))
    time.sleep(1)
    assert not os.path.exists(os.path.join(sandbox(aws, iid), "ran")), "only controllers boot"
    iid = create(aws, "down", template("#!/bin/bash\ntouch ran\nshutdown -h now\n"))
    ec2 = aws.client("ec2")
    assert wait_until(lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
                      ["State"]["Name"] == "terminated", timeout=20)
    assert os.path.exists(os.path.join(sandbox(aws, iid), "ran"))
