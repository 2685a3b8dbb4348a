"""Addition 17: the EFA devices of a launch template's ``efa`` interfaces, as
``fi_info`` and ``fi_pingpong`` on the instance see them, and their faults."""

from __future__ import annotations

import json
import threading

from test_cloudformation import live_instances, network_resources
from test_node_auth import run


def efa_fleet(aws, efa_cards, capacity=2, name="efa"):
    """An EC2 fleet whose launch template has ``efa_cards`` EFA interfaces
    (0: one plain interface). Returns the instance ids."""
    resources = network_resources()
    data = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    groups = data.pop("SecurityGroupIds")
    data["NetworkInterfaces"] = [
        {"NetworkCardIndex": i, "DeviceIndex": 0 if i == 0 else 1, "InterfaceType": "efa",
         "SubnetId": {"Ref": "Subnet"}, "Groups": groups}
        for i in range(efa_cards)
    ] or [{"DeviceIndex": 0, "SubnetId": {"Ref": "Subnet"}, "Groups": groups}]
    resources["Fleet"] = {"Type": "AWS::EC2::EC2Fleet", "Properties": {
        "Type": "maintain",
        "TargetCapacitySpecification": {"TotalTargetCapacity": capacity, "DefaultTargetCapacityType": "spot"},
        "LaunchTemplateConfigs": [{
            "LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "LaunchTemplate"}, "Version": "$Latest"},
            "Overrides": [{"InstanceType": "p4d.24xlarge"}]}],
    }}
    aws.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps({"Resources": resources}))
    return sorted(i["InstanceId"] for i in live_instances(aws.client("ec2")))


def address(aws, iid):
    i = aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return i["PrivateIpAddress"]


def test_fi_info_lists_one_device_per_efa_interface_and_none_without(aws):
    ids = efa_fleet(aws, 4, capacity=1)
    inv = run(aws, ids[0], ['export PATH="/opt/amazon/efa/bin:$PATH"', "fi_info -p efa -t FI_EP_RDM"])
    assert inv["Status"] == "Success", inv
    out = inv["StandardOutputContent"]
    assert out.count("provider: efa") == 4 and out.count("type: FI_EP_RDM") == 4, out
    assert "domain: rdmap16s27-rdm" in out and "protocol: FI_PROTO_EFA" in out, out
    both = run(aws, ids[0], ["fi_info -p efa"])["StandardOutputContent"]
    assert both.count("FI_EP_DGRAM") == 4 and both.count("FI_EP_RDM") == 4, both

    plain = efa_fleet(aws, 0, capacity=1, name="plain")
    plain = [i for i in plain if i not in ids]
    inv = run(aws, plain[0], ["fi_info -p efa"])
    assert inv["Status"] == "Failed" and inv["ResponseCode"] == 1, inv
    assert "fi_getinfo: -61 (No data available)" in inv["StandardOutputContent"], inv


def test_fi_pingpong_exchanges_between_two_instances_and_faults_break_it(aws):
    a, b = efa_fleet(aws, 1)
    server_addr = address(aws, a)
    # a client before the server listens is refused, like the real one
    early = run(aws, b, [f"fi_pingpong -p efa -e rdm {server_addr}"])
    assert early["Status"] == "Failed" and "Connection refused" in early["StandardErrorContent"], early

    def pingpong():
        result = {}
        server = threading.Thread(target=lambda: result.update(
            server=run(aws, a, ["timeout 20 fi_pingpong -p efa -e rdm -I 20 -S 8192"], timeout=30)))
        server.start()
        lines = ["for i in $(seq 1 40); do fi_pingpong -p efa -e rdm -I 20 -S 8192 "
                 f"{server_addr} && exit 0; sleep 0.25; done; exit 1"]
        result["client"] = run(aws, b, lines, timeout=30)
        server.join()
        return result["server"], result["client"]

    server, client = pingpong()
    assert client["Status"] == "Success" and server["Status"] == "Success", (server, client)
    row = client["StandardOutputContent"].strip().splitlines()[-1].split()
    assert row[0] == "8k" and row[1] == "20" and row[2] == "=20", client
    assert float(row[5]) > 0 and float(row[6]) > 0, client  # MB/sec, usec/xfer

    aws.control("POST", "efa-fault", {"instance_id": b, "fault": "unreachable"})
    server, client = pingpong()
    assert client["Status"] == "Failed" and "Unreachable remote" in client["StandardErrorContent"], client
    assert server["Status"] == "Failed", server

    aws.control("POST", "efa-fault", {"instance_id": b, "fault": "no-device"})
    inv = run(aws, b, ["fi_info -p efa"])
    assert inv["Status"] == "Failed" and "No data available" in inv["StandardOutputContent"], inv
    aws.control("POST", "efa-fault", {"instance_id": b, "fault": "none"})
    assert run(aws, b, ["fi_info -p efa"])["Status"] == "Success"
